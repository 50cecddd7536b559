"""Emulated-device stage: each verified artifact answers the first test samples on every emulated
device of the run (qemu-user running the ARM kernels: qnnpack, XNNPACK's and ONNX Runtime's NEON
paths) and here (x86), and the two sets of answers are compared value by value: top-1 agreement,
the largest difference, how many values differ and how many of those by one output quantization
step. A runner that crashes under emulation fails that artifact's check on that device, with the
signal and its last lines; the other checks go on."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgeship.data import Arrays
from edgeship.devices.emulation.environment import SETUP_COMMAND, ready_environment, setup
from edgeship.devices.transports import RunnerFailed, transport_for
from edgeship.pipeline.benchmark import skip_reason
from edgeship.pipeline.cache import digest, tensors_digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.plan import Device, Plan
from edgeship.pipeline.values import Exported, Source
from edgeship.pipeline.verify import predict
from edgeship.report.schema import EmulatedCheck
from edgeship.report.writers import emulated_figures
from edgeship.targets import get_target

SAMPLES = 128  # emulation runs 25-200x slower: enough samples to see a kernel differ, no more
TIMEOUT_SECONDS = 1800.0


def prepare_environment(plan: Plan, build: bool, say) -> None:
    """Before any work: the environment the plan's emulated devices run in. Built (about 0.6 GB
    downloaded, once per machine) only with the user's consent, `build`; else, when missing,
    UserError with the command that builds it."""
    if not any(d.profile.emulated for d in plan.devices):
        return
    if build:
        setup(say=say)
    else:
        ready_environment(f"{SETUP_COMMAND} (or run with --setup-devices)")


def grid_step(values: np.ndarray) -> float | None:
    """The spacing of the grid dequantized int8 outputs sit on: the smallest gap between two
    distinct values (None when fewer than two).

    >>> grid_step(np.array([0.5, 1.0, 1.25, 1.0]))
    0.25
    """
    distinct = np.unique(values.astype(np.float64).ravel())
    gaps = np.diff(distinct)
    return float(gaps.min()) if gaps.size else None


def compare(arm: np.ndarray, x86: np.ndarray, reference: np.ndarray, int8: bool, classes: bool) -> dict:
    difference = np.abs(arm.astype(np.float64) - x86)
    step = grid_step(x86) if int8 else None
    differing = difference > 0
    return dict(outputs=int(arm.size), max_abs_error=float(difference.max()),
                differing_outputs=int(differing.sum()), step=step,
                one_step_outputs=int((differing & (difference <= 1.5 * step)).sum()) if step else None,
                top1_agreement=float((arm.argmax(-1) == x86.argmax(-1)).mean()) if classes else None,
                reference_top1_agreement=float((arm.argmax(-1) == reference.argmax(-1)).mean()) if classes else None,
                reference_max_abs_error=float(np.abs(arm.astype(np.float64) - reference).max()))


def check_one(ctx: RunContext, device: Device, made: Exported, name: str, source: Source, inputs: Path,
              tmp: Path, batch_size: int, x86_answers: dict[str, np.ndarray]) -> EmulatedCheck:
    """`x86_answers`: the artifacts' answers here, by target, filled on first need (one run per
    artifact, however many emulated devices)."""
    base = dict(device=device.profile.name, cpu=device.profile.transport.cpu)
    reason = skip_reason(device.profile, get_target(name))
    if reason:
        return EmulatedCheck(**base, status="skipped", error=reason)
    started, transport, target = time.monotonic(), transport_for(device.profile), get_target(name)
    try:  # one thread on both sides: the same summation order, so a difference is the kernels'
        if name not in x86_answers:
            x86_answers[name] = predict(made.artifact, target, inputs, tmp, batch_size, TIMEOUT_SECONDS,
                                        threads=1, where="x86")
        x86 = x86_answers[name]
        arm = predict(made.artifact, target, inputs, tmp, batch_size, TIMEOUT_SECONDS, threads=1,
                      transport=transport, where=device.profile.name)
    except RunnerFailed as e:
        return EmulatedCheck(**base, status=e.status, error=str(e), seconds=time.monotonic() - started)
    finally:
        transport.close()
    figures = compare(arm, x86, source.reference[:len(arm)], target.is_int8,
                      ctx.metric.labels in ("classes", "tokens"))
    return EmulatedCheck(**base, status="ok", samples=len(arm), seconds=time.monotonic() - started, **figures)


def check_emulated(ctx: RunContext, tmp: Path, test: Arrays, batch_size: int, sources: dict[str, Source],
                   verified: dict[str, Exported]) -> dict[str, list[EmulatedCheck]]:
    devices = [d for d in ctx.plan.devices if d.profile.emulated]
    if not devices or not verified:
        return {}
    inputs = tmp / "emulated-inputs.npz"
    np.savez(inputs, **{k: v[:SAMPLES] for k, v in test.npz_dict().items()})
    test_key = tensors_digest([a[:SAMPLES] for a in test.inputs])
    out: dict[str, list[EmulatedCheck]] = {name: [] for name in verified}
    x86_answers: dict[str, np.ndarray] = {}
    with ctx.log.stage("emulated") as notes, \
            ctx.progress.task("answer on the emulated devices", total=len(devices) * len(verified)) as advance:
        for device in devices:
            for name, made in verified.items():
                key = digest("emulated", ctx.env_key, made.sha256, device.profile.model_dump_json(), test_key)
                found = ctx.cache.load_json("emulated", key)
                check = EmulatedCheck(**found) if found else \
                    check_one(ctx, device, made, name, sources[name], inputs, tmp, batch_size, x86_answers)
                if not found and check.status in ("ok", "skipped"):
                    ctx.cache.store_json("emulated", key, check.model_dump())
                out[name].append(check)
                notes.append(f"{name} on {device.profile.name}: {emulated_figures(check)}")
                advance()
    return out
