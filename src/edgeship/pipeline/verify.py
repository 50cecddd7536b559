"""Verify stage: each artifact answers the whole test split in its own runtime, in a fresh
process (the same runner a device uses); accuracy and parity come from those answers alone."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

from edgeship.cluster import TaskFailed
from edgeship.data import Arrays
from edgeship.devices.profile import LocalTransport
from edgeship.devices.transports import Local, RunnerCall, RunnerFailed
from edgeship.formats import ExportedArtifact, spec_for
from edgeship.pipeline.cache import digest, tensors_digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.stages import describe, naming_target
from edgeship.pipeline.values import Exported, Results, Source, Verified
from edgeship.metrics import TaskMetric
from edgeship.report.schema import Parity
from edgeship.targets import Target, get_target


class VerificationFailed(Exception):
    pass


def predict(artifact: ExportedArtifact, target: Target, inputs_npz: Path, workdir: Path,
            batch_size: int, timeout_seconds: float = 600.0, *, transport=None, threads: int | None = None,
            where: str = "outputs") -> np.ndarray:
    """The artifact's answers to `inputs_npz`, from the runner in a fresh process: here, or on
    `transport`'s device (the emulated ones); every CPU here unless `threads` says otherwise."""
    outputs = workdir / f"{target.name}-{where}.npz"
    args = ("--batch-size", str(batch_size), "--threads", str(threads or os.cpu_count() or 1),
            *spec_for(target.format).runner_args(target))
    (transport or Local(LocalTransport(kind="local"))).run(RunnerCall(
        "predict", artifact.path, artifact.files, inputs_npz, args, outputs, timeout_seconds))
    with np.load(outputs) as data:
        return data["output_0"]


def parity_of(scores: np.ndarray, reference: np.ndarray, reference_name: str, metric: TaskMetric) -> Parity:
    """How closely `scores` answer as `reference`: argmax agreement where the metric reads class
    scores (per position for tokens), the largest and the relative (RMS) differences."""
    difference = (scores.astype(np.float64) - reference).reshape(len(scores), -1)
    rms = float(np.sqrt((reference.astype(np.float64) ** 2).mean()))
    agreement = float((scores.argmax(-1) == reference.argmax(-1)).mean()) \
        if metric.labels in ("classes", "tokens") else None
    return Parity(reference=reference_name, top1_agreement=agreement,
                  max_abs_error=float(np.abs(difference).max()),
                  relative_error=float(np.sqrt((difference ** 2).mean())) / rms if rms > 0 else None)


def verify(artifact: ExportedArtifact, target: Target, inputs_npz: Path, labels: np.ndarray,
           reference: np.ndarray, reference_name: str, workdir: Path,
           batch_size: int, metric: TaskMetric,
           answered: np.ndarray | TaskFailed | None = None) -> tuple[float, Parity]:
    """`answered`: the artifact's answers when a Ray task already ran it."""
    try:
        if isinstance(answered, TaskFailed):
            raise answered
        scores = predict(artifact, target, inputs_npz, workdir, batch_size) if answered is None else \
            np.array(answered)  # a copy: what Ray gives back is read-only
    except (RunnerFailed, TaskFailed) as e:
        raise VerificationFailed(f"its runtime failed on the test split: {e}") from None
    if scores.shape != reference.shape:
        raise VerificationFailed(f"outputs of shape {scores.shape}; the reference gives {reference.shape}")
    bad = ~np.isfinite(scores)
    if bad.any():
        rows = int(bad.any(axis=tuple(range(1, scores.ndim))).sum())
        raise VerificationFailed(f"NaN or Inf in the outputs of {rows} of {len(scores)} test samples")
    return metric.score(scores, labels), parity_of(scores, reference, reference_name, metric)


def answers(files: dict[str, bytes], path: str, name: str, inputs: bytes, batch_size: int) -> np.ndarray:
    """A Ray task: the answers of the artifact in `files` (names and bytes; `path` the one the
    runtime loads) to the inputs, on the worker's node, with the one thread the task holds."""
    with tempfile.TemporaryDirectory(prefix="edgeship-verify-") as folder:
        work = Path(folder)
        for file_name, data in {**files, "inputs.npz": inputs}.items():
            (work / file_name).write_bytes(data)
        artifact = ExportedArtifact(work / path, tuple(work / f for f in files), {})
        return predict(artifact, get_target(name), work / "inputs.npz", work, batch_size, threads=1)


# An fp32 twin computes what the float model computes: only float rounding (another kernel's
# summation order) separates their answers. Beyond that, the export changed the model: tracing
# keeps only the branch of an `if` on tensor values that its example took (seen: top-1 agreement
# 0.68, max abs error 12.9, on a model whose other branch negates the logits).
TWIN_MIN_AGREEMENT = 0.99  # near-ties may flip: 5 of 497 samples
TWIN_MAX_ERROR = 1e-2  # of the float model's largest |output| (or of 1, when that is smaller)


def check_twin(parity: Parity, reference: np.ndarray) -> None:
    """VerificationFailed, with the figures, when an fp32 artifact does not answer as the float
    model does."""
    limit = TWIN_MAX_ERROR * max(1.0, float(np.abs(reference).max()))
    agreement = parity.top1_agreement
    if (agreement is not None and agreement < TWIN_MIN_AGREEMENT) or parity.max_abs_error > limit:
        agreed = "" if agreement is None else \
            f"top-1 agreement {agreement:.4f} (at least {TWIN_MIN_AGREEMENT} expected of an fp32 export), "
        raise VerificationFailed(
            f"does not answer as the float model it was exported from: {agreed}max abs error "
            f"{parity.max_abs_error:.4g} (at most {limit:.3g}); an `if` on tensor values in "
            f"forward() is kept by tracing for the example's branch only")


# An int8 artifact against the quantized PyTorch model it was converted from: the same int8
# arithmetic, in another kernel library (XNNPACK, or fbgemm/qnnpack through TorchScript), so only
# rounding separates them (measured on six models here: agreement 0.996 to 1.0). Below this, the
# export broke the model (seen: qnnpack's quantized relu read channels-last input as NCHW).
INT8_MIN_AGREEMENT = 0.9
# Outputs that are not class scores (regression): the RMS of the difference against the RMS of
# the reference's outputs; the same arithmetic differs by a rounding step here and there, a broken
# export by the size of the outputs themselves.
INT8_MAX_RELATIVE_ERROR = 0.1


def check_int8(parity: Parity) -> None:
    """VerificationFailed, with the figures, when an int8 artifact does not answer as the
    quantized PyTorch model it came from."""
    if parity.top1_agreement is None:
        if parity.relative_error is not None and parity.relative_error > INT8_MAX_RELATIVE_ERROR:
            raise VerificationFailed(
                f"does not answer as the {parity.reference} it was exported from: relative (RMS) "
                f"error {parity.relative_error:.4f} (at most {INT8_MAX_RELATIVE_ERROR} expected of "
                f"the same int8 arithmetic in another kernel library), max abs error "
                f"{parity.max_abs_error:.4g}")
        return
    if parity.top1_agreement < INT8_MIN_AGREEMENT:
        raise VerificationFailed(
            f"does not answer as the {parity.reference} it was exported from: top-1 agreement "
            f"{parity.top1_agreement:.4f} (at least {INT8_MIN_AGREEMENT} expected of the same int8 "
            f"arithmetic in another kernel library), max abs error {parity.max_abs_error:.4g}")


def check_parity(target: Target, source: Source, parity: Parity) -> None:
    """An fp32 twin must answer as the float model; an int8 artifact as its quantized PyTorch
    model, where that is its reference (ONNX Runtime quantizes at export, from the float model:
    its answers are held to the accuracy budgets instead)."""
    if not target.is_int8:
        check_twin(parity, source.reference)
    elif source.int8_reference:
        check_int8(parity)


def verify_all(ctx: RunContext, tmp: Path, test: Arrays, batch_size: int, sources: dict[str, Source],
               exported: dict[str, Exported]) -> Results[str, Verified]:
    inputs = tmp / "test-inputs.npz"
    np.savez(inputs, **test.npz_dict())
    test_key = tensors_digest(list(test.inputs) + [test.labels])
    keys = {name: digest("verify", ctx.env_key, made.sha256, sources[name].key, test_key)
            for name, made in exported.items()}
    out: Results[str, Verified] = Results()
    reused = 0
    with ctx.log.stage("verify") as notes, \
            ctx.progress.task("verify in each runtime", total=len(exported)) as advance:
        verdicts = {name: ctx.cache.load_json("verify", key) for name, key in keys.items()}  # read once
        before, sent = ctx.tasks.task_seconds if ctx.tasks else 0.0, \
            _sent_to_cluster(ctx, exported, [n for n in exported if verdicts[n] is None], inputs, batch_size, notes)
        for name, made in exported.items():
            found = verdicts[name]
            with naming_target(name):
                try:
                    verified = Verified(found["accuracy"], Parity(**found["parity"])) if found else \
                        _verify(ctx, keys[name], made, name, sources[name], inputs, test.labels, tmp, batch_size,
                                ctx.tasks.result(sent[name]) if sent.get(name) is not None else None)
                    check_parity(get_target(name), sources[name], verified.parity)  # cached ones too
                    out.ok[name] = verified
                    notes.append(f"{name} {ctx.metric.format(out.ok[name].accuracy)}")
                except VerificationFailed as e:
                    out.failed[name] = f"verify: {e}"
            reused += found is not None
            advance()
        notes.cached = reused > 0 and reused == len(exported)
        if sent:
            notes.append(f"{ctx.tasks.task_seconds - before:.1f} task-seconds on the cluster")
    return out


def _sent_to_cluster(ctx: RunContext, exported: dict[str, Exported], missing: list[str], inputs: Path,
                     batch_size: int, notes: list[str]) -> dict:
    """With a cluster, each artifact the stage cache has no verdict for answers the test split in a
    Ray task (its files and the inputs travel with it), all at once; the verdicts are reached here,
    as for a local run's answers."""
    if ctx.tasks is None or not missing:
        return {}
    shared = ctx.tasks.put(inputs.read_bytes())
    sent = ctx.tasks.submit_each(answers, {
        n: ({f.name: f.read_bytes() for f in exported[n].artifact.files}, exported[n].artifact.path.name, n,
            shared, batch_size) for n in missing}, describe)
    notes.append(f"{len(sent)} runs as Ray tasks")
    return sent


def _verify(ctx: RunContext, key: str, made: Exported, name: str, source: Source, inputs: Path,
            labels: np.ndarray, tmp: Path, batch_size: int, answered: np.ndarray | TaskFailed | None) -> Verified:
    result = Verified(*verify(made.artifact, get_target(name), inputs, labels, source.reference,
                              source.reference_name, tmp, batch_size, ctx.metric, answered))
    ctx.cache.store_json("verify", key, {"accuracy": result.accuracy, "parity": result.parity.model_dump()})
    return result
