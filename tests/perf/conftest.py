"""Fixtures of edgeship's own performance suite (`make bench`): small real artifacts made by
edgeship's exporters, the inputs they are timed on, and a summary of the figures at the end."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeship.formats import spec_for
from edgeship.targets import get_target
from perf_support import INPUT_SHAPE, Built, conv_net

_FIGURES: list[str] = []


def pytest_configure(config):
    # `make bench` writes runs/bench.json; pytest-benchmark opens the path without making its folder.
    path = config.getoption("benchmark_json", None)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)


@pytest.fixture(scope="session")
def perf_inputs(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("perf-inputs") / "inputs.npz"
    example = np.random.default_rng(0).standard_normal(INPUT_SHAPE).astype(np.float32)
    np.savez(path, input_0=example)
    return path


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory, perf_inputs) -> dict[str, Built]:
    """{"torchscript": torchscript-fp32 .pt, "onnx": onnx-fp32 .onnx} of the same conv net, each
    written by the exporter the pipeline uses."""
    module = conv_net()
    with np.load(perf_inputs) as data:
        examples = (torch.from_numpy(data["input_0"]),)
    built = {}
    for kind, name in (("torchscript", "torchscript-fp32"), ("onnx", "onnx-fp32")):
        target = get_target(name)
        folder = tmp_path_factory.mktemp(name)
        built[kind] = Built(target, spec_for(target.format).export(module, examples, target, folder),
                            perf_inputs)
    return built


@pytest.fixture
def figure(benchmark, request):
    """figure(text, **values): stores the values in the benchmark's extra_info (so in
    --benchmark-json), prints the text, and prints it again in the summary at the end."""

    def record(text: str, **values) -> None:
        benchmark.extra_info.update(values)
        line = f"{request.node.name}: {text}"
        _FIGURES.append(line)
        print(line)

    return record


def pytest_terminal_summary(terminalreporter):
    if _FIGURES:
        terminalreporter.section("edgeship harness figures")
        for line in _FIGURES:
            terminalreporter.write_line(line)
