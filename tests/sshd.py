"""A real OpenSSH server on 127.0.0.1 for the ssh transport's tests.

Its own host key, authorized key, config and pid file in a temporary folder; no system file is
read or changed (but /run/sshd, the privilege separation folder sshd insists on, is made if
missing). Without sshd the tests skip, unless EDGESHIP_REQUIRE_SSHD=1 (CI) makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


@dataclass(frozen=True)
class SshServer:
    port: int
    user: str
    identity_file: Path
    known_hosts: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing(reason: str):
    if os.environ.get("EDGESHIP_REQUIRE_SSHD") == "1":
        pytest.fail(f"{reason} (EDGESHIP_REQUIRE_SSHD=1: the ssh tests must run here)")
    pytest.skip(reason)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"sshd not listening on port {port} after {seconds} s: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> SshServer:
    if not os.path.exists(SSHD) or not shutil.which("ssh") or not shutil.which("ssh-keygen"):
        _missing(f"OpenSSH server/client not installed ({SSHD}, ssh, ssh-keygen); "
                 f"apt-get install openssh-server openssh-client")
    home = tmp_path_factory.mktemp("sshd")
    host_key, client_key = home / "host_ed25519", home / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = home / "authorized_keys"
    authorized.write_text((home / "client_ed25519.pub").read_text())
    port = free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {host_key}",
        f"PidFile {home / 'sshd.pid'}", f"AuthorizedKeysFile {authorized}",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "UsePAM no", "StrictModes no", "PermitRootLogin prohibit-password",
        "MaxSessions 50", "MaxStartups 50", "LogLevel ERROR", ""]))
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = home / "sshd.log"
    # Absolute path and -D: sshd re-executes itself and stays in the foreground, as our child.
    with log.open("w") as log_file:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        _wait_listening(port, proc, log)
        yield SshServer(port=port, user=_user(), identity_file=client_key,
                        known_hosts=home / "known_hosts")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
