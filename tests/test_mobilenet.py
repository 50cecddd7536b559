"""The MobileNetV2-style example: its blocks, its data, and a reduced run of its recipe through the
real CLI (two int8 targets, a few hundred images, short training)."""

from __future__ import annotations

import tomllib
from importlib import resources

import pytest
import torch
from torch import nn

from edgeship.examples import digits
from edgeship.examples.mobilenet import InvertedResidual, MobileNetV2, mobilenet_v2, splits
from support import QUICK_BENCHMARK, run_cli, write_recipe


def _depthwise(model: nn.Module) -> list[nn.Conv2d]:
    return [m for m in model.modules()
            if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels]


def test_blocks_are_inverted_residuals_with_relu6():
    model = MobileNetV2(width=0.5).eval()
    blocks = [m for m in model.modules() if isinstance(m, InvertedResidual)]
    assert len(blocks) == 8
    assert [b.use_residual for b in blocks] == [False, False, True, False, True, True, False, True]
    assert len(_depthwise(model)) == len(blocks)  # one 3x3 depthwise conv per block
    assert all(m.kernel_size == (3, 3) for m in _depthwise(model))
    assert not any(isinstance(m, nn.ReLU) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in model.modules()) == 1 + 7 + 8 + 1  # stem, expand, dw, head
    projection = blocks[2].conv[-2:]  # linear bottleneck: 1x1 conv and BN, no activation
    assert isinstance(projection[0], nn.Conv2d) and projection[0].kernel_size == (1, 1)
    assert isinstance(projection[1], nn.BatchNorm2d)


def test_residual_adds_the_input():
    block = InvertedResidual(8, 8, stride=1, expansion=6).eval()
    with torch.no_grad():
        for p in block.conv.parameters():
            p.zero_()  # the conv branch now outputs BN's zero bias: only the skip remains
        x = torch.randn(2, 8, 4, 4)
        assert torch.equal(block(x), x)
    assert not InvertedResidual(8, 16, stride=1, expansion=6).use_residual
    assert not InvertedResidual(8, 8, stride=2, expansion=6).use_residual


@pytest.mark.parametrize("size", [16, 32])
def test_shapes_and_width(size):
    model = mobilenet_v2(width=0.5).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 1, size, size)).shape == (3, 10)
    narrow = sum(p.numel() for p in mobilenet_v2(width=0.5, last_channels=256).parameters())
    wide = sum(p.numel() for p in mobilenet_v2(width=1.0, last_channels=256).parameters())
    assert wide > 2.5 * narrow
    with pytest.raises(ValueError, match="width must be positive"):
        MobileNetV2(width=0)


def test_splits_are_the_digits_splits_upsampled():
    small, big = digits.splits(limit=20), splits(size=16, limit=20)
    for name in ("train", "calibration", "test"):
        (x8, y8), (x16, y16) = getattr(small, name).tensors, getattr(big, name).tensors
        assert x16.shape == (20, 1, 16, 16) and torch.equal(y8, y16)
        assert torch.equal(x16, nn.functional.interpolate(x8, size=(16, 16), mode="bilinear"))
        assert 0 <= x16.min() and x16.max() <= 1


def test_reduced_recipe_runs_end_to_end(tmp_path, monkeypatch):
    """The shipped recipe, cut down: calibration alone (QAT
    and its conv-BN folding are the slow part; the full recipe and the demo test run QAT), the two
    int8 targets whose flows differ (FX for TorchScript, PT2E for ExecuTorch), no fp32 twins."""
    recipe = tomllib.loads(
        (resources.files("edgeship.examples") / "recipes" / "mobilenet_v2.toml").read_text())
    recipe["targets"] = ["torchscript-fbgemm", "executorch-xnnpack"]
    recipe["fp32_twins"] = False
    recipe["quantization"]["qat"] = {"enabled": False}
    recipe["benchmark"] = dict(QUICK_BENCHMARK)
    recipe["budgets"] = [{"max_accuracy_drop": 1.5}]
    # Two intra-op threads on a shared 2-core machine spend their time at barriers (training
    # measured 5x slower): this test checks structure and accuracy, not speed.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-3000:] + result.stdout[-3000:]
    report = result.report()
    float_accuracy = report["float"]["accuracy"]
    assert float_accuracy >= 0.95
    artifacts = {a["target"]: a for a in report["artifacts"]}
    assert sorted(artifacts) == ["executorch-xnnpack", "torchscript-fbgemm"]
    for a in artifacts.values():
        assert a["status"] == "ok" and a["precision"] == "int8"
        # calibration alone: the full run measured drops of 0.8 points at most
        assert (float_accuracy - a["accuracy"]) * 100 <= 1.5, (a["target"], a["accuracy"])
        assert a["parity"]["top1_agreement"] >= 0.97

    # Every convolution, depthwise ones included, and the classifier run inside XNNPACK.
    convs = sum(isinstance(m, nn.Conv2d) for m in mobilenet_v2(width=0.5, last_channels=256).modules())
    delegation = artifacts["executorch-xnnpack"]["details"]["delegation"]
    delegated = delegation["delegated_ops"]
    assert sum(n for op, n in delegated.items() if "convolution" in op) == convs == 25
    assert delegated.get("aten_add_tensor") == 4  # the residual adds, quantized
    assert delegated.get("aten_hardtanh_default") == 17  # ReLU6
    assert sum(n for op, n in delegated.items() if "linear" in op or "addmm" in op) == 1
    assert not [op for op in delegation["non_delegated_ops"]
                if any(k in op for k in ("convolution", "linear", "addmm", "hardtanh", "add"))]
    quantization = artifacts["torchscript-fbgemm"]["details"]["quantization"]
    assert quantization["qat"] is False and quantization["per_channel"] is True
