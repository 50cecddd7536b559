"""The `qemu` transport: the standalone runner in the emulated aarch64 environment
(devices/emulation), as a fresh process here per call, like `local`. What it measures is the
emulator's speed, never the device's: every bench result comes back marked not valid, with the
reason, so no latency budget and no recommendation ever reads it; its answers (predict) are the
ARM kernels' own."""

from __future__ import annotations

from edgeship.devices.emulation.environment import ready_environment
from edgeship.devices.facts import CHECK_SNIPPET, with_missing
from edgeship.devices.profile import QemuTransport
from edgeship.devices.runner_call import RUNNER, RunnerCall, parse_result, run_process

NOT_A_BENCHMARK = "emulated by qemu: a latency of the emulator, not of an aarch64 device"


class Qemu:
    def __init__(self, config: QemuTransport) -> None:
        self.config = config
        self.environment = None  # found on first use: a profile is listed before it is set up

    def _env(self):
        if self.environment is None:
            self.environment = ready_environment()
        return self.environment

    def run(self, call: RunnerCall) -> dict:
        env = self._env()
        args = [str(RUNNER), call.mode, str(call.artifact), "--inputs", str(call.inputs)]
        if call.outputs is not None:
            args += ["--outputs", str(call.outputs)]
        timeout = call.timeout_seconds * self.config.slowdown
        result = parse_result(run_process(env.argv(self.config.cpu, *args, *call.args), timeout, env=env.env()))
        if call.mode == "bench":
            result["valid"] = False
            result["invalid_reasons"] = [NOT_A_BENCHMARK, *result.get("invalid_reasons", [])]
        result["emulated_cpu"] = self.config.cpu
        return result

    def check(self) -> dict:
        env = self._env()
        facts = parse_result(run_process(env.argv(self.config.cpu, "-c", CHECK_SNIPPET), 600.0, env=env.env()))
        facts["emulated_cpu"] = self.config.cpu
        facts["environment"] = str(env.folder)
        return with_missing(facts)

    def close(self) -> None:
        pass
