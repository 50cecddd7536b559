"""One call of the runner as every transport makes it: what to run, how a process that runs it is
started, stopped on timeout and read back, and how a call that gave no result is told apart.

The host never trusts a number it did not get from the runner on the device."""

from __future__ import annotations

import json
import logging
import os
import shlex
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgeship.benchmarks import runner as runner_module
from edgeship.errors import DeviceError
from edgeship.processes import dies_with_parent
from edgeship.report.schema import BenchmarkStatus

log = logging.getLogger(__name__)

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
    """The runner did not give a result: `status` is timeout, crashed, error or unreachable
    (report.schema's BenchmarkStatus)."""

    def __init__(self, status: BenchmarkStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


def tail(text: str, lines: int = 5) -> str:
    """The last lines of a process's output, on one line."""
    return " | ".join(line for line in text.strip().splitlines()[-lines:] if line.strip())


def run_process(argv: list[str], timeout_seconds: float, cwd: Path | None = None,
                env: dict[str, str] | None = None) -> str:
    """Run, kill the whole process group on timeout, say how it ended; returns stdout. The
    process dies with this one (dies_with_parent). `edgeship -vv` logs each command line."""
    log.debug("running: %s", shlex.join(a if len(a) <= 200 else f"<{len(a)}-character script>" for a in argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=cwd, env=env, preexec_fn=dies_with_parent())
    try:
        out, err = proc.communicate(timeout=timeout_seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise RunnerFailed("timeout", f"killed after the {timeout_seconds:g} s timeout") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        raise RunnerFailed("crashed", f"runner killed by {name}{hint}: {tail(err)}")
    if proc.returncode != 0:
        raise RunnerFailed("error", f"runner exited with code {proc.returncode}: {tail(err)}")
    return out


def parse_result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RunnerFailed("error", f"runner printed no JSON result: {tail(stdout)}")
    return json.loads(lines[-1])
