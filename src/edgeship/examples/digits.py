"""scikit-learn's digits: 1,797 real 8x8 handwritten digits, shipped with the package (no download).

The split is deterministic: the same seed gives the same train, calibration and test images.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.data import Splits


def _images() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # N,1,8,8 in [0,1]
    return images, torch.tensor(digits.target, dtype=torch.int64)


def splits(seed: int = 0, calibration: int = 200, test: int = 497, limit: int | None = None) -> Splits:
    """Train on the rest; `limit` keeps only the first images of each split (for quick tests)."""
    images, labels = _images()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    parts = {
        "test": order[:test],
        "calibration": order[test:test + calibration],
        "train": order[test + calibration:],
    }
    if limit is not None:
        parts = {k: v[:limit] for k, v in parts.items()}
    return Splits(**{k: TensorDataset(images[idx], labels[idx]) for k, idx in parts.items()})


class DigitsCNN(nn.Module):
    """Three conv-BN-ReLU blocks and a linear head: the shape of a small edge classifier."""

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def cnn(width: int = 32) -> DigitsCNN:
    return DigitsCNN(width=width)


class PlainCNN(nn.Module):
    """Conv-ReLU blocks without batch norm: a channel's scale survives to the next layer."""

    def __init__(self, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)
        x = torch.relu(self.conv3(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def outlier_cnn(scale: float = 300.0, epochs: int = 15, seed: int = 0) -> PlainCNN:
    """A trained PlainCNN with one outlier channel: conv1's channel 0 scaled up by `scale` and
    conv2's matching input scaled down. The float function is unchanged (ReLU is positively
    homogeneous), but one per-tensor activation range now spans `scale` times the others: the
    outlier-channel problem known from transformer quantization, in miniature. Post-training
    quantization loses accuracy here; keeping conv1 and conv2 in float recovers it."""
    torch.manual_seed(seed)
    model = PlainCNN()
    data = splits(seed=seed).train
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for x, y in loader:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    with torch.no_grad():
        model.conv1.weight[0] *= scale
        model.conv1.bias[0] *= scale
        model.conv2.weight[:, 0] /= scale
    return model.eval()
