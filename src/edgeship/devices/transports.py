"""Transports run the runner on a device and bring back its one JSON object: `local` (a fresh
process here), `ssh`, `adb` and `qemu` (an emulated aarch64 device here). `transport_for` picks a profile's; a new transport is a module
with a class that has `run`, `check` and `close`, and a line in TRANSPORTS.

The host never trusts a number it did not get from the runner on the device."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from edgeship.devices.adb import Adb
from edgeship.devices.local import Local
from edgeship.devices.profile import DeviceProfile
from edgeship.devices.qemu import Qemu
from edgeship.devices.runner_call import RUNNER, RunnerCall, RunnerFailed
from edgeship.devices.ssh import Ssh

__all__ = ["RUNNER", "DeviceTransport", "Local", "RunnerCall", "RunnerFailed", "TRANSPORTS",
           "transport_for"]


class DeviceTransport(Protocol):
    def run(self, call: RunnerCall) -> dict: ...
    def check(self) -> dict: ...
    def close(self) -> None: ...


# By the profile's transport.kind (devices.profile.TRANSPORT_KINDS, which validates it).
TRANSPORTS: dict[str, Callable[..., DeviceTransport]] = {"local": Local, "ssh": Ssh, "adb": Adb, "qemu": Qemu}


def transport_for(profile: DeviceProfile) -> DeviceTransport:
    return TRANSPORTS[profile.transport.kind](profile.transport)
