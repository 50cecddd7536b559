"""What the ssh and adb transports run in a device's POSIX shell: where files go, the runner's
command line, and how to stop it. Pure functions, so they are tested without a device.

Files are stored by content: `<workdir>/<sha256[:16]>/<name>`. A file already there is never copied
again, by this process or the next. An artifact's files (an .onnx and its external data) share one
folder, keyed by the hash of all of them, because the runtime finds the data beside the model.
"""

from __future__ import annotations

import hashlib
import shlex
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from edgeship.devices.runner_call import RunnerCall, RunnerFailed
from edgeship.fileio import sha256_file

# A device-side deadline this much later than the host's, for when the host is gone and cannot
# kill the runner itself.
DEVICE_DEADLINE_SLACK_SECONDS = 30

_hashes: dict[tuple[str, int, int, int], str] = {}


def _stored_hash(path: Path) -> str:
    """fileio.sha256_file, remembered per (path, inode, size, mtime) so that a large artifact sent
    to several devices is read once."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        _hashes[key] = sha256_file(path)
    return _hashes[key]


def q(path: str) -> str:
    """Quote a word for the device's sh; a leading ~/ stays the login folder."""
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


class Upload(NamedTuple):
    """A file on the host, and where it is stored on the device (under its content hash)."""

    local: Path
    remote: str


@dataclass(frozen=True)
class RemoteCall:
    """A RunnerCall's files as they are named on the device."""

    uploads: tuple[Upload, ...]
    runner: str
    artifact: str
    inputs: str


def _bundle(files: list[Path], workdir: str) -> list[Upload]:
    names = [f.name for f in files]
    if len(set(names)) != len(names):
        raise ValueError(f"two files of one artifact share a name: {sorted(names)}")
    if len(files) == 1:
        key = _stored_hash(files[0])
    else:
        manifest = "".join(f"{f.name}\0{_stored_hash(f)}\n" for f in sorted(files, key=lambda f: f.name))
        key = hashlib.sha256(manifest.encode()).hexdigest()
    return [Upload(f, f"{workdir}/{key[:16]}/{f.name}") for f in files]


def remote_call(call: RunnerCall, runner: Path, workdir: str) -> RemoteCall:
    artifact_files = list(dict.fromkeys([call.artifact, *call.files]))
    artifact = _bundle(artifact_files, workdir)
    runner_upload = _bundle([runner], workdir)[0]
    inputs_upload = _bundle([call.inputs], workdir)[0]
    return RemoteCall(uploads=(*artifact, runner_upload, inputs_upload), runner=runner_upload.remote,
                      artifact=artifact[0].remote, inputs=inputs_upload.remote)


def missing_command(paths: list[str]) -> str:
    """Prints the index of each path that is not on the device, one a line."""
    return "; ".join(f"[ -e {q(p)} ] || echo {i}" for i, p in enumerate(paths)) or "true"


def parse_missing(stdout: str) -> list[int]:
    return [int(line) for line in stdout.split() if line.isdigit()]


def store_command(remote: str) -> str:
    """Writes stdin to `remote`; a copy cut short leaves only a .part file, never a partial
    file that a later run would take as present."""
    folder, part = remote.rsplit("/", 1)[0], f"{q(remote)}.part.$$"
    return f"mkdir -p {q(folder)} && cat > {part} && mv -f {part} {q(remote)}"


def new_run_dir(workdir: str) -> str:
    return f"{workdir}/runs/{uuid.uuid4().hex[:12]}"


def runner_command(python: str, files: RemoteCall, call: RunnerCall, run_dir: str) -> str:
    """The runner under a shell that records its pid (to kill it on the host's timeout) and its
    exit status (a device shell reports a signal as 128+n), and a device-side deadline for when
    the host is gone."""
    argv = [python, files.runner, call.mode, files.artifact, "--inputs", files.inputs]
    if call.outputs is not None:
        argv += ["--outputs", f"{run_dir}/outputs.npz"]
    runner = " ".join(q(a) for a in [*argv, *call.args])
    deadline = int(call.timeout_seconds) + DEVICE_DEADLINE_SLACK_SECONDS
    d = q(run_dir)
    return (f"mkdir -p {d} && "
            f"if command -v timeout >/dev/null 2>&1; then t='timeout -s KILL {deadline}'; else t=; fi; "
            f"sh -c 'echo $$ > \"$0\"/pid; exec \"$@\"' {d} $t {runner}; "
            f"rc=$?; echo $rc > {d}/exit; exit $rc")


def kill_command(run_dir: str) -> str:
    """Kills the runner: its process group when `timeout` leads one, else the process."""
    d = q(run_dir)
    return (f"p=$(cat {d}/pid 2>/dev/null); "
            f"if [ -n \"$p\" ]; then kill -9 -\"$p\" 2>/dev/null || kill -9 \"$p\" 2>/dev/null; fi; "
            f"rm -rf {d}")


def finish_command(run_dir: str) -> str:
    """Prints the runner's exit status and removes its run folder."""
    d = q(run_dir)
    return f"cat {d}/exit 2>/dev/null; rm -rf {d}"


def check_command(python: str, snippet: str) -> str:
    return f"{q(python)} -c {shlex.quote(snippet)}"


def runner_failure(error: RunnerFailed, exit_status: str, where: str) -> RunnerFailed:
    """The client only saw an exit code; the device's shell saw 128+n when a signal killed the
    runner (the OOM killer's SIGKILL, a crash's SIGSEGV)."""
    code = exit_status.strip()
    if code.isdigit() and int(code) > 128:
        number = int(code) - 128
        name = signal.Signals(number).name if number in signal.valid_signals() else f"signal {number}"
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return RunnerFailed("crashed", f"runner on {where} killed by {name}{hint}; {error}")
    return RunnerFailed(error.status, f"on {where}: {error}")
