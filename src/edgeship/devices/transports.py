"""Transports run the runner on a device and bring back its one JSON object.

The host never trusts a number it did not get from the runner on the device."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeship.benchmarks import runner as runner_module
from edgeship.devices.profile import DeviceProfile, LocalTransport
from edgeship.errors import DeviceError
from edgeship.targets import TARGETS, Format

RUNNER = Path(runner_module.__file__)


@dataclass(frozen=True)
class RunnerCall:
    mode: str  # "bench" or "predict"
    artifact: Path
    files: tuple[Path, ...]  # everything the artifact needs on the device
    inputs: Path  # .npz of input_0, ...
    args: tuple[str, ...] = ()
    outputs: Path | None = None  # predict: where the host wants output_0, ...
    timeout_seconds: float = 120.0


class RunnerFailed(DeviceError):
    """The runner did not give a result: `status` is timeout, crashed or error."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def run_process(argv: list[str], timeout_seconds: float, cwd: Path | None = None) -> str:
    """Run, kill the whole process group on timeout, say how it ended; returns stdout."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=cwd)
    try:
        out, err = proc.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RunnerFailed("timeout", f"killed after the {timeout_seconds:g} s timeout") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        raise RunnerFailed("crashed", f"runner killed by {name}{hint}: {_tail(err)}")
    if proc.returncode != 0:
        raise RunnerFailed("error", f"runner exited with code {proc.returncode}: {_tail(err)}")
    return out


def parse_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RunnerFailed("error", f"runner printed no JSON result: {_tail(stdout)}")
    return json.loads(lines[-1])


# Run with `python -c` on a device by `check()`: what it has for the runner. Standalone, like the
# runner; modules are imported, not just looked up, because a wheel built for another CPU or
# Python is found but does not load.
CHECK_SNIPPET = """
import importlib, json, os, platform, sys
from importlib import metadata
packages, errors = {}, {}
for name, module in (("numpy", "numpy"), ("psutil", "psutil"), ("torch", "torch"),
                     ("onnxruntime", "onnxruntime"), ("executorch", "executorch.runtime")):
    try:
        importlib.import_module(module)
    except Exception as e:
        packages[name], errors[name] = None, f"{type(e).__name__}: {e}".splitlines()[0][:200]
        continue
    try:
        packages[name] = metadata.version(name)
    except Exception:
        packages[name] = "unknown"
engines = []
if packages["torch"]:
    import torch
    engines = list(torch.backends.quantized.supported_engines)
cpu = None
try:
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.split(":")[0].strip() in ("model name", "Hardware"):
                cpu = line.split(":", 1)[1].strip()
                break
except OSError:
    pass
try:
    memory_mb = round(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e6)
except (ValueError, OSError):
    memory_mb = None
print(json.dumps({"python": platform.python_version(), "executable": sys.executable,
                  "machine": platform.machine(), "system": platform.system(),
                  "release": platform.release(), "cpu": cpu or platform.processor() or None,
                  "cpu_count": os.cpu_count(), "memory_mb": memory_mb, "packages": packages,
                  "import_errors": errors, "torch_quantized_engines": engines}))
"""

# What the runner imports for each format; numpy for all, as it reads the inputs .npz.
FORMAT_NEEDS = {Format.TORCHSCRIPT: ("numpy", "torch"), Format.ONNX: ("numpy", "onnxruntime"),
                Format.EXECUTORCH: ("numpy", "torch", "executorch")}


def with_missing(facts: dict) -> dict:
    """Adds, for each format and each target, what the device lacks to run it ([] = runnable)."""
    have = {name for name, version in facts["packages"].items() if version}
    formats = {fmt.value: [p for p in needs if p not in have] for fmt, needs in FORMAT_NEEDS.items()}
    targets = {}
    for target in TARGETS.values():
        missing = list(formats[target.format.value])
        # TorchScript int8 weights are packed for one engine; the torch build must have it.
        if target.format is Format.TORCHSCRIPT and target.is_int8 and "torch" in have \
                and target.engine not in facts["torch_quantized_engines"]:
            missing.append(f"torch quantized engine {target.engine}")
        targets[target.name] = missing
    return {**facts, "formats": formats, "targets": targets}


class Local:
    """This host: a fresh process per call, so each artifact is measured alone."""

    def __init__(self, config: LocalTransport) -> None:
        self.python = config.python or sys.executable

    def run(self, call: RunnerCall) -> dict:
        argv = [self.python, str(RUNNER), call.mode, str(call.artifact), "--inputs", str(call.inputs)]
        if call.outputs is not None:
            argv += ["--outputs", str(call.outputs)]
        return parse_result(run_process(argv + list(call.args), call.timeout_seconds))

    def check(self) -> dict:
        return with_missing(parse_result(run_process([self.python, "-c", CHECK_SNIPPET], 120.0)))

    def close(self) -> None:
        pass


class DeviceTransport(Protocol):
    def run(self, call: RunnerCall) -> dict: ...
    def check(self) -> dict: ...
    def close(self) -> None: ...


def transport_for(profile: DeviceProfile) -> DeviceTransport:
    # Imported here: the ssh and adb modules build on this one.
    from edgeship.devices.adb import Adb
    from edgeship.devices.ssh import Ssh

    kinds: dict[str, Callable[..., DeviceTransport]] = {"local": Local, "ssh": Ssh, "adb": Adb}
    return kinds[profile.transport.kind](profile.transport)
