"""A MobileNetV2-style network, the edge workhorse, sized for the digits images upsampled.

The same building blocks as Sandler et al.'s MobileNetV2 (and torchvision's): a stem convolution,
inverted residual blocks (1x1 expansion, 3x3 depthwise, 1x1 linear projection, with a residual
add where the block keeps stride and channels), ReLU6, a width multiplier, a 1x1 head
convolution, global average pooling and a linear classifier. Only the depth is cut, and the stem
keeps stride 1: the inputs are 16x16, not 224x224.

Written so that every edgeship flow quantizes it as it is: the residual add is a plain `+` (FX
graph mode quantizes it to a quantized add; PT2E's XNNPACK quantizer annotates it), ReLU6 is
`nn.ReLU6` (FX shares the input's quantization parameters; torch.export writes it as hardtanh),
and there is no data-dependent control flow.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.data import Splits
from edgeship.examples import digits

# (expansion t, output channels c, repeats n, stride of the first repeat s), as in the paper's
# table 2; cut to three stages after the first block for 16x16 inputs.
STAGES: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 2, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Channels rounded to a multiple of `divisor`, never more than 10% below `value` (the
    reference implementation's rule, which keeps SIMD lanes full)."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU6(nn.Module):
    """Convolution, batch norm, ReLU6; `groups=channels` makes it depthwise."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))  # qnnpack's layout bug: see flows.py


class InvertedResidual(nn.Module):
    """1x1 expand (conv-BN-ReLU6), 3x3 depthwise (conv-BN-ReLU6), 1x1 linear projection (conv-BN:
    no activation, the bottleneck stays linear), plus the input where stride is 1 and the channels
    match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # `use_residual` is fixed at construction: FX and torch.export see a static graph.
        if self.use_residual:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(nn.Module):
    """Stem conv, inverted residual stages, 1x1 head conv, global average pool, linear.

    >>> model = MobileNetV2(width=0.5).eval()
    >>> model(torch.zeros(2, 1, 16, 16)).shape
    torch.Size([2, 10])
    """

    def __init__(self, width: float = 0.5, classes: int = 10, in_channels: int = 1,
                 stages: tuple[tuple[int, int, int, int], ...] = STAGES,
                 last_channels: int = 1280) -> None:
        super().__init__()
        if width <= 0:
            raise ValueError(f"width must be positive, got {width}")
        cin = make_divisible(32 * width)
        layers: list[nn.Module] = [ConvBNReLU6(in_channels, cin, kernel=3, stride=1)]
        for expansion, channels, repeats, stride in stages:
            cout = make_divisible(channels * width)
            for i in range(repeats):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, expansion))
                cin = cout
        self.last_channels = make_divisible(last_channels * max(1.0, width))
        layers.append(ConvBNReLU6(cin, self.last_channels, kernel=1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.last_channels, classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenet_v2(width: float = 0.5, classes: int = 10, last_channels: int = 1280) -> MobileNetV2:
    """The recipe's model factory: an untrained MobileNetV2-style net for 1-channel images."""
    return MobileNetV2(width=width, classes=classes, last_channels=last_channels)


def _upsampled(dataset: TensorDataset, size: int) -> TensorDataset:
    images, labels = dataset.tensors
    images = nn.functional.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    return TensorDataset(images.contiguous(), labels)


def splits(size: int = 16, seed: int = 0, calibration: int = 200, test: int = 497,
           limit: int | None = None) -> Splits:
    """The digits splits (same images in each split as `edgeship.examples.digits.splits` with the
    same arguments), each 8x8 image upsampled bilinearly to `size` x `size`."""
    if size < 1:
        raise ValueError(f"size must be at least 1, got {size}")
    base = digits.splits(seed=seed, calibration=calibration, test=test, limit=limit)
    return Splits(train=_upsampled(base.train, size), calibration=_upsampled(base.calibration, size),
                  test=_upsampled(base.test, size))
