"""The process around the commands: one `error:` line and exit 2/3 for what edgeship raises, a
crash's traceback in a log file (exit 3, never 1: 1 is "a budget failed"), Ctrl-C as a clean
stop that keeps what was whole."""

from __future__ import annotations

import os
import platform
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

from edgeship.cli.common import app
from edgeship.errors import (RUN_FOLDER_NOTE, STAGE_NOTE, TARGET_NOTE, EdgeshipError, ExitCode,
                             Interrupted, noted)
from edgeship.fileio import write_atomic
from edgeship.quiet import quiet_torch_cpp_for_good
from edgeship.version import __version__

CRASH_LOG = "edgeship-crash.log"
# Set (to anything but "" or "0") to have a crash's traceback on stderr as well as in its log.
DEBUG_ENV = "EDGESHIP_DEBUG"

def crash_log_path(e: BaseException) -> Path:
    """In the run folder when the crash happened in a run whose folder edgeship has claimed (its
    marker is there: a folder of the user's own gets no file from us); else a new file in the
    temporary directory ($TMPDIR), named by the time and the process."""
    from edgeship.pipeline.runfolder import MARKER

    folder = noted(e, RUN_FOLDER_NOTE)
    if folder is not None and (Path(folder) / MARKER).is_file():
        return Path(folder) / CRASH_LOG
    return _temporary_log_path()


def _temporary_log_path() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"edgeship-crash-{stamp}-{os.getpid()}.log"


def write_crash_log(e: BaseException) -> Path | None:
    """The full traceback (with the stage, target and run folder notes) and what ran; None when
    no place would take it."""
    text = "".join([f"edgeship {__version__} · Python {platform.python_version()} · "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n",
                    f"command: {' '.join(sys.argv)}\n\n", *traceback.format_exception(e)])
    path = crash_log_path(e)
    for place in dict.fromkeys([path, _temporary_log_path()]):  # a run folder gone read-only
        try:
            write_atomic(place, text)
            return place
        except OSError:
            continue
    return None


def crash_line(e: BaseException, log: Path | None) -> str:
    """One line: where (stage, target), what, and where the traceback is."""
    where = [f"{k} {v}" for k, v in (("stage", noted(e, STAGE_NOTE)), ("target", noted(e, TARGET_NOTE)))
             if v is not None]
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    told = f"the traceback is in {log}" if log else "the traceback is above (no place to log it)"
    return (f"error: edgeship crashed{' in ' + ', '.join(where) if where else ''} ({what}); {told}. "
            f"Exit code {ExitCode.DEVICE_FAILURE}")


def report_crash(e: BaseException) -> int:
    """A bug of edgeship's, or of a library under it: one line on stderr, the traceback in a log
    file (and on stderr too with EDGESHIP_DEBUG=1), and exit 3, never 1 ("a budget failed")."""
    log = write_crash_log(e)
    if log is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(e)
    sys.stderr.write(crash_line(e, log) + "\n")
    return ExitCode.DEVICE_FAILURE


def _interrupted(signum: int, frame: object) -> None:
    # Not KeyboardInterrupt: click turns that into "Aborted!" and exit code 1, "a budget failed"
    raise Interrupted("interrupted (Ctrl-C); what was whole is kept: the same command resumes")


class OutputGone(Exception):
    """stdout or stderr lost its reader. Not an OSError: click turns a broken pipe (EPIPE) into
    exit code 1, "a budget failed"."""


class _PipeGuard:
    """A stream whose broken pipe raises OutputGone."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            raise OutputGone() from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            raise OutputGone() from None

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def main() -> None:
    quiet_torch_cpp_for_good()
    previous = signal.signal(signal.SIGINT, _interrupted)
    streams = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _PipeGuard(sys.stdout), _PipeGuard(sys.stderr)
    try:
        _run_app()
    except OutputGone:  # also while saying why the command stopped
        _output_gone(streams)
    finally:
        sys.stdout, sys.stderr = streams
        signal.signal(signal.SIGINT, previous)  # main() called in-process (tests) leaves it as found


def _run_app() -> None:
    try:
        app()  # click's own usage errors exit 2; typer.Exit carries the run's exit code
    except OutputGone:
        raise
    except (EdgeshipError, Interrupted) as e:
        for line in str(e).splitlines():  # plain text: no markup, no wrapping, one line each
            sys.stderr.write(f"error: {line}\n")
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - every crash: one line, a log, exit 3
        sys.exit(report_crash(e))


def _output_gone(streams) -> None:
    """The reader of stdout or stderr went away (`edgeship run … | head`): nothing more can be
    said. Exit as Unix tools killed by SIGPIPE do, 141, with the streams pointed at /dev/null so
    that the interpreter's last flush cannot fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams:
        os.dup2(devnull, stream.fileno())
    sys.exit(128 + signal.SIGPIPE)
