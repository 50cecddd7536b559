"""Child processes that do not outlive edgeship: a runner, an ssh or adb client, torchrun."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable


def _prctl() -> Callable[..., int] | None:
    """Linux's prctl, looked up once in the parent: the child between fork and exec should do
    as little as it can."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()
PR_SET_PDEATHSIG = 1


def dies_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the child SIGKILLed when the thread that starts it ends (the
    pipeline killed with SIGKILL included); None where Linux's prctl is not there.

    The child keeps its own session (start_new_session), so a timeout still kills its whole
    group; a runner or ssh/adb client must not go on alone when nobody waits for its answer."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:  # the parent died before prctl: nobody to tell the child
            os.kill(os.getpid(), signal.SIGKILL)
    return preexec
