"""A real two-node Ray cluster on 127.0.0.1 for the Ray tests: a head and a second node, each
started with `ray start --block` in its own session, one CPU and its own custom resource each, so
Ray places workers on two nodes as on two machines. Stopping each `ray start --block` process
stops what it started; nothing else of Ray on this machine is touched.

The cluster uses Ray's token authentication (its default for a new cluster since Ray 2.5x once a
token exists) with a token of this test session, in the environment every Ray process and every
edgeship run of the session inherits: a token some earlier cluster left in ~/.ray/auth_token is
neither needed nor read.

Without Ray (`pip install 'edgeship[ray]'`) the tests skip, unless EDGESHIP_REQUIRE_RAY=1 (CI)
makes that a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sshd import free_port

RAY = Path(sys.executable).parent / "ray"
AUTHENTICATION = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": uuid.uuid4().hex}
# Ray's object store wants a fraction of memory by default; two nodes on a 2-core CI machine
# need far less.
STORE_BYTES = str(200 * 1024 * 1024)


def _missing(reason: str):
    if os.environ.get("EDGESHIP_REQUIRE_RAY") == "1":
        pytest.fail(f"{reason} (EDGESHIP_REQUIRE_RAY=1: the Ray tests must run here)")
    pytest.skip(reason)


def _start(args: list[str], log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen([str(RAY), "start", *args, "--num-cpus=1", "--disable-usage-stats",
                                 f"--object-store-memory={STORE_BYTES}", "--block"],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _alive_nodes(address: str) -> tuple[int, str]:
    """The nodes `ray status` lists as active, and its last error line when it fails."""
    status = subprocess.run([str(RAY), "status", f"--address={address}"], capture_output=True,
                            text=True, timeout=60)
    if status.returncode:
        return 0, (status.stderr.strip().splitlines() or [""])[-1]
    active = status.stdout.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return sum(1 for line in active.splitlines() if line.strip().startswith("1 node_")), ""


def _wait_for_nodes(address: str, count: int, procs: list[subprocess.Popen], folder: Path,
                    seconds: float = 120) -> None:
    deadline, said = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                logs = "\n".join(p.read_text()[-1500:] for p in folder.glob("*.log"))
                raise RuntimeError(f"ray start exited with {proc.returncode}:\n{logs}")
        alive, said = _alive_nodes(address)
        if alive >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} has not {count} nodes after {seconds} s; "
                       f"ray status said: {said}")


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):  # the second node first, then the head
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


class LocalCluster:
    """A head and a second node on 127.0.0.1; the second node can be stopped (a machine lost)
    and started again."""

    def __init__(self) -> None:
        if not RAY.exists():
            _missing(f"Ray is not installed ({RAY}); pip install 'edgeship[ray]'")
        os.environ.update(AUTHENTICATION)
        # Ray's unix sockets live under its temp dir: a short path keeps them under the 107-byte limit.
        self.folder = Path(tempfile.mkdtemp(prefix="edgeship-ray-", dir="/tmp"))
        port = free_port()
        self.address = f"127.0.0.1:{port}"
        self.head = _start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                            f"--temp-dir={self.folder}", "--include-dashboard=false",
                            '--resources={"head": 1}'], self.folder / "head.log")
        self.second: subprocess.Popen | None = None
        try:
            _wait_for_nodes(self.address, 1, [self.head], self.folder)
            self.start_second_node()
        except BaseException:
            self.stop()
            raise

    def start_second_node(self) -> None:
        self.second = _start([f"--address={self.address}", "--node-ip-address=127.0.0.1",
                              '--resources={"second": 1}'], self.folder / "second.log")
        _wait_for_nodes(self.address, 2, [self.head, self.second], self.folder)

    def lose_second_node(self) -> None:
        """The second node's processes killed at once, as when its machine goes away."""
        assert self.second is not None
        os.killpg(self.second.pid, signal.SIGKILL)
        for pid in _processes_of_session(self.second.pid):
            os.kill(pid, signal.SIGKILL)
        self.second.wait()
        self.second = None

    def stop(self) -> None:
        _stop([p for p in (self.head, self.second) if p is not None])
        shutil.rmtree(self.folder, ignore_errors=True)


def _processes_of_session(sid: int) -> list[int]:
    """Ray's processes that left the session's process group (raylet's workers) are still in it."""
    found = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    return [int(pid) for pid, s in (line.split() for line in found if line.strip()) if int(s) == sid]


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """The cluster's address (HOST:PORT), as a recipe's cluster.address takes it."""
    cluster = LocalCluster()
    try:
        yield cluster.address
    finally:
        cluster.stop()
