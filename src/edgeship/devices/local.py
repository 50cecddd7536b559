"""The local transport: the runner in a fresh process on this host."""

from __future__ import annotations

import sys

from edgeship.devices.facts import CHECK_SNIPPET, with_missing
from edgeship.devices.profile import LocalTransport
from edgeship.devices.runner_call import RUNNER, RunnerCall, parse_result, run_process


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
