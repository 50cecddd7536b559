"""Video clips and 3-D convolution: the dataset, the op-support tables, and the facts behind them
checked in the real runtimes on tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from edgeship.data import stack
from edgeship.devices.transports import RunnerFailed
from edgeship.examples import digits, video
from edgeship.formats import export_atomically, spec_for
from edgeship.quantize.evaluate import logits
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.formats import unsupported_layers
from edgeship.quantize.float_layers import required_float_layers
from edgeship.quantize.calibrate import calibrate
from edgeship.pipeline.verify import predict
from edgeship.targets import Flow, get_target


@pytest.fixture(scope="module")
def clips():
    return video.splits(limit=32)


class TinyClip(nn.Module):
    """Conv3d, a 3-D max pool, global average and a head: every 3-D op of the clip classifier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.pool(self.conv(x))).mean((2, 3, 4)))


class TinyImage(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.head = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.pool(self.conv(x))).mean((2, 3)))


def test_clips_are_the_digits_split_moving_one_pixel_a_frame(clips):
    x, y = clips.test[0]
    assert x.shape == (1, 4, 12, 12)
    images = digits.splits(limit=32)
    for name in ("train", "calibration", "test"):
        assert torch.equal(getattr(clips, name).tensors[1], getattr(images, name).tensors[1])
    # Every frame holds the whole digit, shifted by one pixel from the previous frame.
    image = images.test.tensors[0][0, 0]
    for t in range(4):
        frame = x[0, t]
        assert frame.sum() == pytest.approx(image.sum())
    shifts = [(dy, dx) for dy, dx in video.DIRECTIONS
              if torch.equal(torch.roll(x[0, 0], (dy, dx), (0, 1)), x[0, 1])]
    assert len(shifts) == 1


def test_clips_are_deterministic_and_can_be_labelled_by_direction(clips):
    again = video.splits(limit=32)
    assert torch.equal(clips.train.tensors[0], again.train.tensors[0])
    other_seed = video.splits(limit=32, seed=1)
    assert not torch.equal(clips.train.tensors[0], other_seed.train.tensors[0])
    by_direction = video.splits(limit=32, label="direction")
    assert torch.equal(by_direction.train.tensors[0], clips.train.tensors[0])
    assert set(by_direction.train.tensors[1].tolist()) <= {0, 1, 2, 3}
    with pytest.raises(ValueError, match="size >= 11"):
        video.splits(limit=4, size=10)


@pytest.mark.parametrize("factorized", [False, True])
def test_clip_cnn_classifies_clips(clips, factorized):
    model = video.clip_cnn(width=4, factorized=factorized).eval()
    kinds = {type(m) for m in model.modules()}
    assert nn.Conv3d in kinds and nn.BatchNorm3d in kinds and nn.MaxPool3d in kinds
    assert model(clips.test.tensors[0][:3]).shape == (3, 10)


def test_qnnpack_needs_3d_layers_float_and_nothing_else():
    required = required_float_layers(TinyClip(), Flow.FX_QNNPACK)
    assert sorted(required) == ["conv", "pool"]
    assert "conv2d_unpack" in required["conv"] and "max_pool3d" in required["pool"]
    assert required_float_layers(TinyImage(), Flow.FX_QNNPACK) == {}
    # fbgemm quantizes Conv3d; the PT2E graph quantizes it for ONNX Runtime (QLinearConv).
    assert required_float_layers(TinyClip(), Flow.FX_FBGEMM) == {}
    assert required_float_layers(TinyClip(), Flow.PT2E_XNNPACK) == {}


def test_executorch_cannot_run_3d_layers_in_any_precision():
    for name in ("executorch-xnnpack", "executorch-fp32"):
        unsupported = unsupported_layers(TinyClip(), get_target(name))
        assert sorted(unsupported) == ["conv", "pool"]
        assert "aten.convolution with 5-D input" in unsupported["conv"]
        assert "max_pool3d_with_indices" in unsupported["pool"]
    assert unsupported_layers(TinyImage(), get_target("executorch-xnnpack")) == {}
    assert unsupported_layers(TinyClip(), get_target("onnx-int8")) == {}


def _convert(model, flow, float_layers, clips):
    examples = (clips.test.tensors[0][:1],)
    qf = flow_for(flow, QuantSettings(float_layers=frozenset(float_layers)))
    prepared = calibrate(qf, model, examples, clips.calibration, batches=1, batch_size=32, qat=False)
    return qf.convert(prepared), examples


def _all_int8_export_fails(model, target, clips, tmp_path, match: str):
    """Every layer int8: the target's export refuses it with `match`. Returns the exporter."""
    exporter = spec_for(target.format).export
    int8, examples = _convert(model, target.flow, (), clips)
    with pytest.raises(RuntimeError, match=match):
        export_atomically(exporter, int8, examples, target, tmp_path / "int8")
    return exporter


def test_qnnpack_artifact_builds_mixed_precision_with_the_required_float_layers(clips, tmp_path):
    model, target = TinyClip().eval(), get_target("torchscript-qnnpack")
    exporter = _all_int8_export_fails(model, target, clips, tmp_path, "quantized_max_pool3d|conv2d_unpack")

    required = required_float_layers(model, target.flow)
    mixed, examples = _convert(model, target.flow, required, clips)
    assert type(mixed.conv) is nn.Conv3d and type(mixed.head).__module__.startswith("torch.ao")
    made = export_atomically(exporter, mixed, examples, target, tmp_path / "mixed")
    test = stack(clips.test)
    np.savez(tmp_path / "inputs.npz", **test.npz_dict())
    answers = predict(made, target, tmp_path / "inputs.npz", tmp_path, batch_size=1)
    expected = logits(model, test)
    assert np.abs(answers - expected).max() < 0.05
    assert (answers.argmax(1) == expected.argmax(1)).mean() >= 0.9


def test_executorch_fails_on_conv3d_int8_at_export_and_float_at_load(clips, tmp_path):
    model, target = TinyClip().eval(), get_target("executorch-xnnpack")
    exporter = _all_int8_export_fails(model, target, clips, tmp_path, "dequantize_per_channel")
    # Conv3d and the pool left float: the .pte builds, but the runtime has no kernel for them.
    mixed, examples = _convert(model, target.flow, unsupported_layers(model, target), clips)
    made = export_atomically(exporter, mixed, examples, target, tmp_path / "mixed")
    assert made.details["delegation"]["non_delegated_ops"]["aten_convolution_default"] == 1
    np.savez(tmp_path / "inputs.npz", input_0=examples[0].numpy())
    with pytest.raises(RunnerFailed, match="0x:14"):  # OperatorMissing
        predict(made, target, tmp_path / "inputs.npz", tmp_path, batch_size=1)
