"""The device runner on its own: a fresh process, a real TorchScript artifact, one JSON line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from edgeship.benchmarks.stats import latency_summary
from edgeship.devices.transports import RUNNER
from edgeship.environment import environment
from support import bench_args


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runner")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    x = torch.randn(10, 16)
    path = folder / "mlp.pt"
    torch.jit.trace(model, x[:1]).save(str(path))
    inputs = folder / "inputs.npz"
    np.savez(inputs, input_0=x.numpy())
    with torch.no_grad():
        expected = model(x).numpy()
    return path, inputs, expected


def _runner(*args: str) -> dict:
    proc = subprocess.run([sys.executable, str(RUNNER), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_predict_pads_the_last_batch_and_matches_pytorch(artifact, tmp_path):
    path, inputs, expected = artifact
    out = tmp_path / "out.npz"
    result = _runner("predict", str(path), "--inputs", str(inputs), "--outputs", str(out), "--batch-size", "3")
    assert result["samples"] == 10 and result["runtime"]["name"] == "torch"
    with np.load(out) as data:
        np.testing.assert_allclose(data["output_0"], expected, rtol=1e-5, atol=1e-6)


def test_bench_runs_until_count_and_time(artifact):
    path, inputs, _ = artifact
    result = _runner("bench", str(path), "--inputs", str(inputs),
                     *bench_args(min_iterations=30, min_seconds=0.2, warmup_iterations=3))
    assert result["valid"] is True and result["invalid_reasons"] == []
    assert result["iterations"] == len(result["samples_ms"]) >= 30
    assert result["seconds"] >= 0.2
    assert len(result["warmup_ms"]) == 3
    assert result["peak_rss_mb"] >= result["rss_before_load_mb"] > 0
    assert result["threads"] == 1 and result["cpu_affinity"]
    # the machine as the runner saw it: here the host, so the host's own facts
    host = environment()["host"]
    machine = result["system"]
    assert machine["cpu"] == host["cpu"] and machine["int8_isa"] == host["int8_isa"]
    assert machine["arch"] == host["arch"] and machine["cpus"] == result["cpu_affinity"]
    for state in (machine["before"], machine["after"]):  # each part empty where not readable
        assert set(state) == {"governor", "mhz", "celsius"}
        assert all(-40 < c < 150 for c in state["celsius"].values())


def test_bench_that_runs_out_of_time_is_not_valid(artifact):
    path, inputs, _ = artifact
    result = _runner("bench", str(path), "--inputs", str(inputs),
                     *bench_args(min_iterations=100000000, min_seconds=0, timeout_seconds=0.4,
                                 warmup_iterations=0))
    assert result["valid"] is False
    assert result["invalid_reasons"][0].endswith("< min_iterations 100000000")


def test_unknown_artifact_type_is_refused(tmp_path, artifact):
    _, inputs, _ = artifact
    (tmp_path / "model.tflite").write_bytes(b"")
    proc = subprocess.run([sys.executable, str(RUNNER), "bench", str(tmp_path / "model.tflite"),
                           "--inputs", str(inputs), *bench_args()], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "runner: error: model.tflite: unknown artifact type '.tflite'; " \
                                  "known: .pt, .onnx, .pte"


def test_latency_summary_matches_numpy():
    samples = [5.0, 1.0, 2.0, 4.0, 3.0]
    s = latency_summary(samples)
    assert s == {"min": 1.0, "p50": 3.0, "p90": pytest.approx(4.6), "p99": pytest.approx(4.96),
                 "mean": 3.0, "stdev": pytest.approx(np.std(samples, ddof=1))}
    assert latency_summary([2.0])["stdev"] == 0.0
    with pytest.raises(ValueError):
        latency_summary([])


def test_bench_without_the_hosts_settings_is_refused(artifact):
    path, inputs, _ = artifact
    proc = subprocess.run([sys.executable, str(RUNNER), "bench", str(path), "--inputs", str(inputs),
                           "--warmup", "1"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "bench needs --min-iterations, --min-seconds, --max-seconds" in proc.stderr


def test_an_executorch_profile_counts_the_measured_runs_alone(tmp_path):
    """Writing an ETDump empties ExecuTorch's buffer: the profile's dump holds the measured runs
    only, so the warm-up is not taken away from it. As many warm-up runs as measured ones once
    made every call count 0 and the delegate's time the difference of two sums."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval()
    x = torch.randn(1, 1, 8, 8)
    program = to_edge_transform_and_lower(torch.export.export(model, (x,)), partitioner=[XnnpackPartitioner()])
    path = tmp_path / "conv.pte"
    path.write_bytes(program.to_executorch().buffer)
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, input_0=x.numpy())
    result = _runner("profile", str(path), "--inputs", str(inputs),
                     *bench_args(min_iterations=8, min_seconds=0.0, warmup_iterations=8))
    assert result["runs"] == 8
    (call,) = [op for op in result["ops"] if op["name"] == "DELEGATE_CALL"]
    assert call["calls"] == 1.0 and call["ms"] > 0, result["ops"]
    assert result["ms_per_run"] == pytest.approx(call["ms"])
