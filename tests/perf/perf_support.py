"""Helpers of the performance suite: the model, the measurement settings, the local device."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeship.devices.profile import BenchmarkSettings, DeviceProfile, LocalTransport
from edgeship.formats import ExportedArtifact
from edgeship.targets import Target

# A conv net whose one inference takes about 1 ms on one x86 core: long enough that timer and
# loop overhead are small beside it, short enough for thousands of samples in seconds.
INPUT_SHAPE = (1, 3, 96, 96)

# Every harness measurement in this suite: many samples, so medians are stable to ~1%.
SETTINGS = BenchmarkSettings(threads=1, warmup_iterations=50, min_iterations=200, min_seconds=2.0,
                             timeout_seconds=180.0)

LOCAL = DeviceProfile(name="local", arch="x86_64", int8_engines=["fbgemm", "onnxruntime"],
                      runtimes=["torchscript", "onnx"], transport=LocalTransport(kind="local"))


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10)).eval()


@dataclass(frozen=True)
class Built:
    target: Target
    artifact: ExportedArtifact
    inputs: Path  # .npz with input_0: one example, the one every measurement runs on

    @property
    def example(self) -> np.ndarray:
        with np.load(self.inputs) as data:
            return data["input_0"]
