"""The adb transport: an Android device over USB or adb-over-TCP.

`adb push` what the device lacks (stored by content hash, see remote.py), `adb shell` the runner
under the call's timeout, `adb pull` predict's outputs. Every adb command has a timeout: a missing
adb, a device not attached or not authorized is one clear error, never a hang. The argument lists
are built by the pure functions below, tested without a device.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from edgeship.devices import remote
from edgeship.devices.facts import CHECK_SNIPPET, with_missing
from edgeship.processes import dies_with_parent
from edgeship.devices.profile import AdbTransport
from edgeship.devices.runner_call import (RUNNER, RunnerCall, RunnerFailed, parse_result,
                                          run_process, tail)

PLATFORM_TOOLS = "https://developer.android.com/tools/releases/platform-tools"

log = logging.getLogger(__name__)


def adb_argv(adb: str, serial: str | None, *args: str) -> list[str]:
    return [adb, *(["-s", serial] if serial else []), *args]


def shell_argv(adb: str, serial: str | None, command: str) -> list[str]:
    # One argument: adb hands it as is to the device's sh -c, so remote.py's quoting holds.
    return adb_argv(adb, serial, "shell", command)


def push_argv(adb: str, serial: str | None, local: Path, device_path: str) -> list[str]:
    return adb_argv(adb, serial, "push", str(local), device_path)


def pull_argv(adb: str, serial: str | None, device_path: str, local: Path) -> list[str]:
    return adb_argv(adb, serial, "pull", device_path, str(local))


def parse_devices(text: str) -> dict[str, str]:
    """`adb devices` output to {serial: state}; state is device, unauthorized, offline, ..."""
    listed = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            listed[parts[0]] = parts[1]
    return listed


def choose_serial(wanted: str | None, listed: dict[str, str]) -> str:
    """The device to use, or a RunnerFailed that says what `adb devices` shows instead."""
    shown = ", ".join(f"{s} ({state})" for s, state in listed.items()) or "no devices"
    if wanted is None:
        ready = [s for s, state in listed.items() if state == "device"]
        if len(ready) == 1:
            return ready[0]
        if not ready:
            raise RunnerFailed("unreachable", f"no Android device ready over adb (adb devices: "
                                              f"{shown}); plug one in and allow USB debugging")
        raise RunnerFailed("unreachable", f"several Android devices attached ({shown}); set "
                                          f"transport.serial in the profile")
    if wanted not in listed:
        raise RunnerFailed("unreachable", f"Android device {wanted!r} is not attached "
                                          f"(adb devices: {shown})")
    if listed[wanted] != "device":
        hint = ": accept the USB debugging prompt on the device" \
            if listed[wanted] == "unauthorized" else ""
        raise RunnerFailed("unreachable", f"Android device {wanted!r} is {listed[wanted]}{hint}")
    return wanted


def find_adb(adb: str) -> str:
    found = shutil.which(adb)
    if found is None:
        raise RunnerFailed("unreachable", f"adb not found on PATH ({adb!r}): install Android "
                                          f"platform-tools ({PLATFORM_TOOLS}) or set transport.adb "
                                          f"in the profile to its path")
    return found


class Adb:
    """An Android device reached with the adb client, as configured in the profile."""

    def __init__(self, config: AdbTransport) -> None:
        self.config = config
        self.serial: str | None = None  # fixed at the first call, so a device plugged in later
        self._adb = ""                  # cannot receive the rest of the run
        self._present: set[str] = set()
        self.copied: list[str] = []

    def _call(self, argv: list[str], what: str, timeout_seconds: float | None = None) -> str:
        limit = timeout_seconds or self.config.command_timeout_seconds
        log.debug("adb %s: %s", what, shlex.join(argv))
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                  timeout=limit, start_new_session=True, preexec_fn=dies_with_parent())
        except subprocess.TimeoutExpired:
            raise RunnerFailed("unreachable", f"adb {what} gave no answer within {limit:g} s "
                                              f"(device {self.serial or 'any'})") from None
        if proc.returncode != 0:
            raise RunnerFailed("error", f"adb {what} failed with exit code {proc.returncode}: "
                                        f"{tail(proc.stderr or proc.stdout)}")
        return proc.stdout

    def _shell(self, command: str, what: str, timeout_seconds: float | None = None) -> str:
        return self._call(shell_argv(self._adb, self.serial, command), what, timeout_seconds)

    def _connect(self) -> None:
        if self.serial is None:
            self._adb = find_adb(self.config.adb)
            listing = self._call(adb_argv(self._adb, None, "devices"), "devices")
            self.serial = choose_serial(self.config.serial, parse_devices(listing))

    def _python(self) -> str:
        if self.config.python is None:
            raise RunnerFailed("error", "transport.python is not set: give the path of a Python on "
                                        "the device that the adb shell user can run, with the "
                                        "runtimes installed")
        return self.config.python

    def _upload(self, uploads: tuple[remote.Upload, ...]) -> None:
        unknown = [u for u in uploads if u.remote not in self._present]
        if not unknown:
            return
        listing = self._shell(remote.missing_command([u.remote for u in unknown]), "shell (list)")
        missing = [unknown[i] for i in remote.parse_missing(listing)]
        if missing:
            folders = " ".join(remote.q(u.remote.rsplit("/", 1)[0]) for u in missing)
            self._shell(f"mkdir -p {folders}", "shell (mkdir)")
        for upload in missing:
            # to a .part name first: a push cut short must not look like a stored file
            part = f"{upload.remote}.part"
            self._call(push_argv(self._adb, self.serial, upload.local, part), "push")
            self._shell(f"mv -f {remote.q(part)} {remote.q(upload.remote)}", "shell (mv)")
            self.copied.append(upload.remote)
        self._present.update(u.remote for u in unknown)

    def run(self, call: RunnerCall) -> dict:
        self._connect()
        python = self._python()
        files = remote.remote_call(call, RUNNER, self.config.workdir)
        self._upload(files.uploads)
        run_dir = remote.new_run_dir(self.config.workdir)
        command = remote.runner_command(python, files, call, run_dir)
        where = f"Android device {self.serial}"
        try:
            stdout = run_process(shell_argv(self._adb, self.serial, command), call.timeout_seconds)
        except RunnerFailed as e:
            if e.status == "timeout":  # the adb client is dead; the runner on the device is not
                self._shell(remote.kill_command(run_dir), "shell (kill)")
                raise
            exit_status = self._shell(remote.finish_command(run_dir), "shell (cleanup)")
            raise remote.runner_failure(e, exit_status, where) from None
        try:
            if call.outputs is not None:
                part = call.outputs.with_name(call.outputs.name + ".part")
                self._call(pull_argv(self._adb, self.serial, f"{run_dir}/outputs.npz", part), "pull")
                os.replace(part, call.outputs)
        finally:
            self._shell(remote.finish_command(run_dir), "shell (cleanup)")
        return parse_result(stdout)

    def check(self) -> dict:
        self._connect()
        command = remote.check_command(self._python(), CHECK_SNIPPET)
        return with_missing(parse_result(self._shell(command, "shell (check)", 120.0)))

    def close(self) -> None:
        pass  # no connection of ours to end: the adb server keeps its own
