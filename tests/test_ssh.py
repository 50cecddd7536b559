"""The ssh transport against a real OpenSSH server on 127.0.0.1 (fixture in sshd.py), with real
artifacts run by the real runner in the venv's Python on the "device"."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeship.devices.profile import SshTransport
from edgeship.devices.ssh import Ssh
from edgeship.devices.transports import RunnerCall, RunnerFailed
from sshd import SshServer, free_port, sshd  # noqa: F401  (sshd is a fixture)
from support import bench_args

BENCH_ARGS = bench_args(warmup_iterations=5, min_iterations=200, min_seconds=0.3, timeout_seconds=10)


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict:
    """A TorchScript and an ONNX fp32 Linear(8, 4), their inputs, and the outputs PyTorch gives."""
    folder = tmp_path_factory.mktemp("artifacts")
    torch.manual_seed(0)
    module = torch.nn.Linear(8, 4).eval()
    example = torch.randn(1, 8)
    torch.jit.save(torch.jit.trace(module, example), folder / "linear.pt")
    torch.onnx.export(module, (example,), folder / "linear.onnx", dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    onnx_files = tuple(sorted(folder.glob("linear.onnx*")))
    inputs = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    np.savez(folder / "inputs.npz", input_0=inputs)
    with torch.no_grad():
        expected = module(torch.from_numpy(inputs)).numpy()
    one = folder / "one.npz"
    np.savez(one, input_0=inputs[:1])
    return {"pt": folder / "linear.pt", "onnx": folder / "linear.onnx", "onnx_files": onnx_files,
            "inputs": folder / "inputs.npz", "one": one, "expected": expected}


def ssh_config(server: SshServer, workdir: Path, **changes) -> SshTransport:
    fields = dict(kind="ssh", host="127.0.0.1", port=server.port, identity_file=server.identity_file,
                  python=sys.executable, workdir=str(workdir), connect_timeout_seconds=5,
                  options=[f"UserKnownHostsFile={server.known_hosts}"])
    return SshTransport(**(fields | changes))


@pytest.fixture
def ssh(sshd, tmp_path):  # noqa: F811
    transport = Ssh(ssh_config(sshd, tmp_path / "device"))
    yield transport
    transport.close()


def bench_call(model_files, kind: str = "pt", args=BENCH_ARGS, timeout: float = 60.0) -> RunnerCall:
    files = model_files["onnx_files"] if kind == "onnx" else (model_files[kind],)
    return RunnerCall("bench", model_files[kind], files, model_files["one"], args,
                      timeout_seconds=timeout)


def test_bench_through_ssh_measures_on_the_device(ssh, model_files):
    result = ssh.run(bench_call(model_files))
    assert result["mode"] == "bench" and result["valid"] is True, result["invalid_reasons"]
    assert result["iterations"] >= 200 and len(result["samples_ms"]) == result["iterations"]
    assert all(s > 0 for s in result["samples_ms"])
    assert result["peak_rss_mb"] > 0 and result["runtime"]["name"] == "torch"


@pytest.mark.parametrize("kind", ["pt", "onnx"])
def test_predict_through_ssh_brings_back_the_outputs(ssh, model_files, tmp_path, kind):
    outputs = tmp_path / f"{kind}-outputs.npz"
    files = model_files["onnx_files"] if kind == "onnx" else (model_files[kind],)
    call = RunnerCall("predict", model_files[kind], files, model_files["inputs"],
                      ("--batch-size", "2"), outputs=outputs, timeout_seconds=60.0)
    result = ssh.run(call)
    assert result["mode"] == "predict" and result["samples"] == 5
    with np.load(outputs) as data:
        got = data["output_0"]
    assert got.shape == (5, 4)
    assert np.allclose(got, model_files["expected"], atol=1e-5)


def test_files_are_copied_once_per_content(sshd, model_files, tmp_path):  # noqa: F811
    config = ssh_config(sshd, tmp_path / "device")
    args = bench_args(warmup_iterations=0, min_iterations=1, min_seconds=0)
    first = Ssh(config)
    try:
        first.run(bench_call(model_files, args=args))
        copied = list(first.copied)
        # the artifact, the runner and the inputs, each under its content hash
        assert len(copied) == 3 and all(Path(p).parent.parent == tmp_path / "device" for p in copied)
        inode = {p: Path(p).stat().st_ino for p in copied}
        first.run(bench_call(model_files, args=args))
        assert first.copied == copied
    finally:
        first.close()
    second = Ssh(config)  # a new connection finds the files on the device and copies nothing
    try:
        second.run(bench_call(model_files, args=args))
        assert second.copied == []
    finally:
        second.close()
    assert {p: Path(p).stat().st_ino for p in copied} == inode
    assert not list((tmp_path / "device" / "runs").iterdir())  # run folders are cleaned up


def test_unreachable_host_fails_within_the_connect_timeout(sshd, tmp_path):  # noqa: F811
    closed = free_port()
    transport = Ssh(ssh_config(sshd, tmp_path / "device", port=closed, connect_timeout_seconds=3))
    start = time.monotonic()
    with pytest.raises(RunnerFailed) as failed:
        transport.run(RunnerCall("bench", tmp_path / "x.pt", (), tmp_path / "in.npz"))
    assert failed.value.status == "unreachable" and failed.value.exit_code == 3
    assert f"127.0.0.1:{closed}" in str(failed.value)
    assert time.monotonic() - start < 3
    transport.close()


def _device_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "pgrep" not in line]


def test_timeout_kills_the_runner_on_the_device(ssh, model_files, tmp_path):
    marker = str(tmp_path / "device")  # in the runner's command line, and nowhere else
    call = bench_call(model_files, args=bench_args(min_iterations=10000000, min_seconds=60,
                                                   timeout_seconds=240), timeout=4.0)
    seen_running: list[str] = []

    def watch() -> None:
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline and not seen_running:
            seen_running.extend(p for p in _device_processes(marker) if "runner.py" in p)
            time.sleep(0.1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    start = time.monotonic()
    with pytest.raises(RunnerFailed) as failed:
        ssh.run(call)
    watcher.join()
    assert failed.value.status == "timeout"
    assert time.monotonic() - start < 10
    assert seen_running, "the runner never ran on the device"
    time.sleep(0.2)
    assert _device_processes(marker) == []


def test_runner_killed_on_the_device_is_marked_crashed_with_the_signal(ssh, model_files, tmp_path):
    marker = str(tmp_path / "device")
    call = bench_call(model_files, args=bench_args(min_iterations=10000000, min_seconds=60,
                                                   timeout_seconds=240), timeout=30.0)

    def kill_like_the_oom_killer() -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            pids = [p.split()[0] for p in _device_processes(marker)  # the runner, not its shells
                    if p.split()[1] == sys.executable]
            if pids:
                time.sleep(0.5)  # let it load and start timing
                subprocess.run(["kill", "-9", *pids])
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_like_the_oom_killer)
    killer.start()
    with pytest.raises(RunnerFailed) as failed:
        ssh.run(call)
    killer.join()
    assert failed.value.status == "crashed"
    assert "killed by SIGKILL (out of memory?)" in str(failed.value)
    assert "127.0.0.1:" in str(failed.value)
    print(f"\n{failed.value}")


def test_check_reports_the_device_runtimes(ssh):
    facts = ssh.check()
    assert facts["packages"]["torch"] == torch.__version__.split("+")[0] or \
        facts["packages"]["torch"] == torch.__version__
    import onnxruntime

    assert facts["packages"]["onnxruntime"] == onnxruntime.__version__
    assert facts["python"] == ".".join(map(str, sys.version_info[:3]))
    assert facts["cpu_count"] >= 1 and facts["memory_mb"] > 0
    assert facts["formats"] == {"torchscript": [], "onnx": [], "executorch": []}


def test_check_names_what_a_bare_python_lacks(sshd, tmp_path):  # noqa: F811
    bare = Path("/usr/bin/python3")
    if not bare.exists():
        pytest.skip("no system python3 without the runtimes")
    transport = Ssh(ssh_config(sshd, tmp_path / "device", python=str(bare)))
    try:
        facts = transport.check()
    finally:
        transport.close()
    if facts["packages"]["torch"]:
        pytest.skip("the system python3 has torch")
    assert "torch" in facts["formats"]["torchscript"]
    assert "torch" in facts["targets"]["executorch-xnnpack"]
