"""Models of the kinds issue 11 names, none of them edgeship's examples, each on a task made from
scikit-learn's digits images (real data, nothing downloaded): a CNN, a (2+1)D video net on clips
of a digit sliding across the frame, an nn.TransformerEncoder and an nn.LSTM reading the image's
rows as a sequence, and a two-input net (the image and its transpose)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from edgeship.data import Splits
from edgeship.examples import digits


class _Inputs(Dataset):
    """((inputs...), label) samples for a model with several forward() arguments."""

    def __init__(self, inputs: tuple[torch.Tensor, ...], labels: torch.Tensor) -> None:
        self.inputs, self.labels = inputs, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return tuple(x[i] for x in self.inputs), self.labels[i]


def _mapped(splits: Splits, inputs) -> Splits:
    def one(ds: Dataset) -> Dataset:
        images, labels = ds.tensors
        made = inputs(images)
        return _Inputs(made, labels) if isinstance(made, tuple) else TensorDataset(made, labels)
    return Splits(train=one(splits.train), calibration=one(splits.calibration), test=one(splits.test))


class Cnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 24, 3, padding=1), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 24, 3, padding=1, groups=24), nn.BatchNorm2d(24), nn.ReLU(),
            nn.Conv2d(24, 48, 1), nn.BatchNorm2d(48), nn.ReLU(), nn.AdaptiveAvgPool2d(2))
        self.head = nn.Linear(48 * 4, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def cnn() -> Cnn:
    return Cnn()


class WideCnn(nn.Module):
    """The same digits at a size where weights, not the container, make the file: 0.37 M
    parameters (1.5 MB in fp32), three 3x3 convolutions of 64, 128 and 256 channels."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(128, 256, 3, padding=1), nn.BatchNorm2d(256), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.head = nn.Linear(256, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def wide_cnn() -> WideCnn:
    return WideCnn()


def image_splits() -> Splits:
    return digits.splits()


class Video2Plus1D(nn.Module):
    """(2+1)D: a spatial 1x3x3 Conv3d then a temporal 3x1x1 Conv3d, each with BatchNorm3d."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            nn.Conv3d(1, 16, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 16, (3, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(16), nn.ReLU(),
            nn.Conv3d(16, 32, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(32), nn.ReLU(),
            nn.AvgPool3d((4, 4, 4)))  # the dynamo ONNX exporter has no AdaptiveAvgPool3d
        self.head = nn.Linear(32 * 4, 10)

    def forward(self, x):
        return self.head(torch.flatten(self.blocks(x), 1))


def video() -> Video2Plus1D:
    return Video2Plus1D()


def clip_splits() -> Splits:
    """Four frames of the digit, shifted one pixel right per frame: [1, 4, 8, 8] per clip."""
    return _mapped(digits.splits(), lambda x: torch.stack([torch.roll(x, k, dims=-1) for k in range(4)], 2))


class Transformer(nn.Module):
    """The image's 8 rows as 8 tokens through nn.TransformerEncoder."""

    def __init__(self, dim: int = 64, hidden: int = 128) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.zeros(1, 8, dim))
        layer = nn.TransformerEncoderLayer(dim, 4, hidden, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x) + self.position).mean(1))


def transformer() -> Transformer:
    return Transformer()


def wide_transformer() -> Transformer:
    """The same at width 256 (1.1 M weights): where a file's fixed cost no longer dominates its size."""
    return Transformer(dim=256, hidden=512)


class Lstm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 64, batch_first=True)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        return self.head(self.lstm(x)[0][:, -1])


def lstm() -> Lstm:
    return Lstm()


def row_splits() -> Splits:
    """The image's rows as a sequence: [8 steps, 8 features]."""
    return _mapped(digits.splits(), lambda x: x[:, 0])


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32 * 16, 10)

    def forward(self, image, transposed):
        pooled = [nn.functional.avg_pool2d(f, 2) for f in (self.a(image), self.b(transposed))]
        return self.head(torch.flatten(torch.cat(pooled, 1), 1))


def two_inputs() -> TwoInputs:
    return TwoInputs()


def pair_splits() -> Splits:
    return _mapped(digits.splits(), lambda x: (x, x.transpose(-1, -2).contiguous()))
