"""The ssh transport: the OpenSSH client, one control connection reused for every call.

Per call: copy what the device lacks (files are stored by content hash, see remote.py), run the
runner there under the call's timeout, bring back its JSON (and for predict its outputs file).
On the host's timeout the device-side runner is killed too, through a second ssh command.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from edgeship.devices import remote
from edgeship.devices.facts import CHECK_SNIPPET, with_missing
from edgeship.processes import dies_with_parent
from edgeship.devices.profile import SshTransport
from edgeship.devices.runner_call import (RUNNER, RunnerCall, RunnerFailed, parse_result,
                                          run_process, tail)

# How long a control connection outlives its last use, in seconds.
CONTROL_PERSIST_SECONDS = 60
# Limit for the small commands around a run (listing, cleanup, kill), in seconds.
HOUSEKEEPING_SECONDS = 30.0

log = logging.getLogger(__name__)


def ssh_argv(config: SshTransport, control_dir: Path, command: str | None) -> list[str]:
    """The ssh command line; `command` None asks the control master to exit."""
    argv = ["ssh"]
    for option in config.options:  # first: ssh keeps the first value it is given for an option
        argv += ["-o", option]
    argv += ["-o", "BatchMode=yes",
             "-o", f"ConnectTimeout={config.connect_timeout_seconds}",
             "-o", "StrictHostKeyChecking=accept-new",
             "-o", "ControlMaster=auto",
             "-o", f"ControlPath={control_dir}/%C",
             "-o", f"ControlPersist={CONTROL_PERSIST_SECONDS}",
             # a device that drops off mid-run fails in ~15 s, not at the run's timeout
             "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3",
             "-p", str(config.port)]
    if config.user:
        argv += ["-l", config.user]
    if config.identity_file:
        argv += ["-i", str(config.identity_file), "-o", "IdentitiesOnly=yes"]
    if command is None:
        return argv + ["-O", "exit", "--", config.host]
    return argv + ["--", config.host, command]


class Ssh:
    """A device reached with the OpenSSH client (`ssh`) as configured in the profile."""

    def __init__(self, config: SshTransport) -> None:
        self.config = config
        login = f"{config.user}@" if config.user else ""
        self.where = f"{login}{config.host}:{config.port}"
        self._control_dir: Path | None = None  # made on connect, removed by close()
        self._connected = False
        self._present: set[str] = set()  # device paths known to hold their content
        self.copied: list[str] = []  # device paths this instance copied, in order

    def _argv(self, command: str | None) -> list[str]:
        if self._control_dir is None:
            # Socket paths are limited to ~104 bytes: a short private folder, not the run folder.
            self._control_dir = Path(tempfile.mkdtemp(prefix="edgeship-ssh-"))
        return ssh_argv(self.config, self._control_dir, command)

    def _call(self, command: str, timeout_seconds: float, stdin: Path | None = None,
              stdout: Path | None = None) -> str:
        """A housekeeping command; ssh's own failure (exit 255) means the device is unreachable."""
        with open(stdin or os.devnull, "rb") as fin, \
                (open(stdout, "wb") if stdout else tempfile.TemporaryFile()) as fout:
            try:
                log.debug("ssh %s: %s", self.where, command)
                proc = subprocess.run(self._argv(command), stdin=fin, stdout=fout,
                                      stderr=subprocess.PIPE, timeout=timeout_seconds,
                                      start_new_session=True, preexec_fn=dies_with_parent())
            except subprocess.TimeoutExpired:
                raise RunnerFailed("unreachable", f"ssh {self.where}: no answer within "
                                                  f"{timeout_seconds:g} s") from None
            if stdout is None:
                fout.seek(0)
                out = fout.read().decode(errors="replace")
        err = proc.stderr.decode(errors="replace").strip()
        if proc.returncode == 255:
            raise RunnerFailed("unreachable", f"cannot reach {self.where} over ssh: "
                                              f"{tail(err)}")
        if proc.returncode != 0:
            raise RunnerFailed("error", f"ssh {self.where}: command failed with exit code "
                                        f"{proc.returncode}: {tail(err)}")
        return "" if stdout else out

    def _connect(self) -> None:
        # A bare first command opens the control master, so an unreachable device fails here,
        # within the connect timeout, and the master's process title names no file.
        if not self._connected:
            self._call("exit 0", self.config.connect_timeout_seconds + 5.0)
            self._connected = True

    def _upload(self, uploads: tuple[remote.Upload, ...], timeout_seconds: float) -> None:
        unknown = [u for u in uploads if u.remote not in self._present]
        if unknown:
            listing = self._call(remote.missing_command([u.remote for u in unknown]),
                                 HOUSEKEEPING_SECONDS)
            missing = {unknown[i].remote for i in remote.parse_missing(listing)}
            for upload in unknown:
                if upload.remote in missing:
                    self._call(remote.store_command(upload.remote), timeout_seconds,
                               stdin=upload.local)
                    self.copied.append(upload.remote)
                self._present.add(upload.remote)

    def _kill(self, run_dir: str) -> None:
        try:
            self._call(remote.kill_command(run_dir), HOUSEKEEPING_SECONDS)
        except RunnerFailed:
            pass  # the device is gone; run() reports the timeout, and kills again itself

    def run(self, call: RunnerCall) -> dict:
        self._connect()
        files = remote.remote_call(call, RUNNER, self.config.workdir)
        self._upload(files.uploads, call.timeout_seconds)
        run_dir = remote.new_run_dir(self.config.workdir)
        command = remote.runner_command(self.config.python, files, call, run_dir)
        # The control master holds the client's stdout (ssh passes it over) until the remote
        # command ends, so killing the client alone would leave run_process waiting on the pipe:
        # a watchdog kills the device-side runner just after run_process's own timeout.
        watchdog = threading.Timer(call.timeout_seconds + 1.0, self._kill, (run_dir,))
        watchdog.start()
        try:
            stdout = run_process(self._argv(command), call.timeout_seconds)
        except RunnerFailed as e:
            watchdog.cancel()
            if e.status == "timeout":
                watchdog.join()
                self._call(remote.kill_command(run_dir), HOUSEKEEPING_SECONDS)  # if it could not
                raise
            exit_status = self._call(remote.finish_command(run_dir), HOUSEKEEPING_SECONDS)
            raise remote.runner_failure(e, exit_status, self.where) from None
        watchdog.cancel()
        try:
            if call.outputs is not None:
                part = call.outputs.with_name(call.outputs.name + ".part")
                self._call(f"cat {remote.q(run_dir + '/outputs.npz')}", call.timeout_seconds,
                           stdout=part)
                os.replace(part, call.outputs)
        finally:
            self._call(remote.finish_command(run_dir), HOUSEKEEPING_SECONDS)
        return parse_result(stdout)

    def check(self) -> dict:
        self._connect()
        command = remote.check_command(self.config.python, CHECK_SNIPPET)
        return with_missing(parse_result(self._call(command, 120.0)))

    def close(self) -> None:
        """Ends the control master (else it lingers CONTROL_PERSIST_SECONDS)."""
        if self._connected:
            subprocess.run(self._argv(None), capture_output=True, timeout=HOUSEKEEPING_SECONDS,
                           preexec_fn=dies_with_parent())
            self._connected = False
        if self._control_dir is not None:
            shutil.rmtree(self._control_dir, ignore_errors=True)
            self._control_dir = None
