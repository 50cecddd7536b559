"""edgeship's int8 artifacts against each runtime's own documented flow on the same weights (issue
10), measured side by side in one run (`make bench`): every artifact loaded in this one process by
edgeship's runner loaders, one thread, timed in interleaved rounds by one loop.

a. latency: a MobileNetV2-style net at 224x224 (width 1.0, 1,000 classes, 1-channel input;
   untrained weights, calibrated on random images): edgeship / peer p50 for each int8 target,
   and onnx-int8 / its onnx-fp32 twin. The issue's targets: <= 1.05 and < 1.
b. accuracy: the same architecture (width 0.5) trained on scikit-learn's digits at 16x16, every
   artifact on the 497 test images; calibration only on both sides, default settings.

The figures depend on the CPU (x86 without VNNI saturates u8 x s8 int8 kernels): its int8 ISA
flags are printed with them. The assertions are loose; the figures are the evidence.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytest
import torch

from edgeship.benchmarks.runner import load
from edgeship.data import stack
from edgeship.environment import environment
from edgeship.examples.mobilenet import mobilenet_v2, splits
from edgeship.progress import Progress
from edgeship.quantize.training import train
from peers import INT8, PEER_OF, answers, edgeship_artifact, peer_artifact

ROUNDS, CALLS = 7, 30


@pytest.fixture(scope="module")
def isa() -> str:
    host = environment()["host"]
    return f"{host['cpu']}, int8 ISA flags: {' '.join(host['int8_isa']) or 'none'}"


def _build(model, calibration: np.ndarray, folder) -> dict[str, tuple[str, str | None]]:
    """{label: (path, torch engine)} for edgeship's int8 artifacts, their peers and onnx-fp32."""
    float_onnx = edgeship_artifact("onnx-fp32", model, calibration, folder / "edgeship")
    built = {"onnx-fp32": (str(float_onnx), None)}
    for name in INT8:
        engine = "fbgemm" if name == "torchscript-fbgemm" else None
        built[name] = (str(edgeship_artifact(name, model, calibration, folder / "edgeship")), engine)
        built[PEER_OF[name]] = (str(peer_artifact(name, model, calibration, float_onnx, folder)), engine)
    return built


def _p50s(models: dict, example: np.ndarray) -> dict[str, float]:
    """Median ms per call of each model, over ROUNDS interleaved rounds of CALLS calls."""
    samples: dict[str, list[float]] = {label: [] for label in models}
    feeds = {label: m.to_native([example]) for label, m in models.items()}
    for label, m in models.items():  # warm up
        for _ in range(5):
            m(feeds[label])
    for _ in range(ROUNDS):
        for label, m in models.items():
            for _ in range(CALLS):
                t0 = time.perf_counter_ns()
                m(feeds[label])
                samples[label].append((time.perf_counter_ns() - t0) / 1e6)
    return {label: statistics.median(s) for label, s in samples.items()}


def test_latency_against_the_runtimes_own_flows(benchmark, figure, isa, tmp_path):
    torch.manual_seed(0)
    model = mobilenet_v2(width=1.0, classes=1000, last_channels=1280).eval()
    calibration = np.random.default_rng(0).standard_normal((64, 1, 224, 224)).astype(np.float32)
    built = _build(model, calibration, tmp_path)
    models = {label: load(path, engine, 1) for label, (path, engine) in built.items()}
    example = calibration[:1]
    p50 = _p50s(models, example)
    feed = models["onnx-int8"].to_native([example])
    benchmark.pedantic(models["onnx-int8"], args=(feed,), rounds=CALLS, iterations=1, warmup_rounds=5)
    ratios = {name: p50[name] / p50[PEER_OF[name]] for name in INT8}
    twin = p50["onnx-int8"] / p50["onnx-fp32"]
    lines = [f"{n} {p50[n]:.3f} ms vs {PEER_OF[n]} {p50[PEER_OF[n]]:.3f} ms: {ratios[n]:.3f}x"
             for n in INT8]
    figure(f"MobileNetV2 224x224, 1 thread, p50 of {ROUNDS}x{CALLS} interleaved calls: "
           f"{'; '.join(lines)}; onnx-int8 / onnx-fp32 {twin:.3f} ({p50['onnx-fp32']:.3f} ms) · {isa}",
           p50_ms=p50, ratio_to_peer=ratios, onnx_int8_to_fp32=twin, isa=isa)
    for name, ratio in ratios.items():
        assert ratio < 1.25, (name, ratio)


def test_accuracy_against_the_runtimes_own_flows(benchmark, figure, isa, tmp_path):
    data = splits(size=16)
    torch.manual_seed(0)
    model = mobilenet_v2(width=0.5, last_channels=256)
    train(model, data.train, optimizer=torch.optim.Adam(model.parameters(), lr=0.01), epochs=12,
          batch_size=64, seed=0, progress=Progress(enabled=False), label="float", schedule="cosine")
    model.eval()
    calibration, test = stack(data.calibration).inputs[0], stack(data.test)
    built = _build(model, calibration, tmp_path)
    with torch.no_grad():
        float_top1 = float((model(torch.from_numpy(test.inputs[0])).argmax(1).numpy() == test.labels).mean())
    top1 = {}
    for label, (path, engine) in built.items():
        top1[label] = float((answers(path, engine, test.inputs[0]).argmax(1) == test.labels).mean())
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)  # figures only; --benchmark-only needs it
    lines = [f"{n} {top1[n]:.4f} vs {PEER_OF[n]} {top1[PEER_OF[n]]:.4f}" for n in INT8]
    figure(f"MobileNetV2 digits 16x16, top-1 on {len(test)} images (1 image = {100 / len(test):.2f} "
           f"points), float {float_top1:.4f}: {'; '.join(lines)} · {isa}",
           top1=top1, float_top1=float_top1, isa=isa)
    for name in INT8:
        assert top1[name] >= top1[PEER_OF[name]] - 2 / len(test), (name, top1)
        assert (float_top1 - top1[name]) * 100 <= 1.0, (name, top1[name], float_top1)
