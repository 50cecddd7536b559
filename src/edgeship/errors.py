"""Errors sorted by whose fault they are; each carries the exit code the CLI returns."""


class EdgeshipError(Exception):
    """Base of the errors edgeship reports as one line instead of a traceback."""

    exit_code = 1


class UserError(EdgeshipError):
    """Bad input: recipe, model, data, device profile or command line. Exit code 2."""

    exit_code = 2


class DeviceError(EdgeshipError):
    """A device or runtime failure the user must look at. Exit code 3."""

    exit_code = 3


class Interrupted(BaseException):
    """Ctrl-C (SIGINT). Exit code 130, the shell's 128 + SIGINT: never 1, "a budget failed". A
    BaseException, as KeyboardInterrupt is: no `except Exception` on its way up (a user's factory
    failing, a target failing) takes it for something else."""

    exit_code = 130


# Notes (BaseException.add_note) on an unexpected exception, saying where it happened: the CLI's
# crash line names them.
STAGE_NOTE = "stage: "
TARGET_NOTE = "target: "
RUN_FOLDER_NOTE = "run folder: "


def noted(e: BaseException, prefix: str) -> str | None:
    """The value of the first note `prefix` names on `e`, or None."""
    return next((n.removeprefix(prefix) for n in getattr(e, "__notes__", ()) if n.startswith(prefix)),
                None)


class ExitCode:
    PASSED = 0
    BUDGET_FAILED = 1
    BAD_INPUT = 2
    DEVICE_FAILURE = 3
    INTERRUPTED = 130

    @staticmethod
    def beside_verdict(code: int) -> str:
        """What to add after "exit code N" beside the gate's verdict: a gate that passed on what
        was measured still exits 3 when a target or device failed, which must not read as a pass."""
        return " (a target or device failed: its line says why)" if code == ExitCode.DEVICE_FAILURE else ""
