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


class ExitCode:
    PASSED = 0
    BUDGET_FAILED = 1
    BAD_INPUT = 2
    DEVICE_FAILURE = 3
