"""Short video clips built from scikit-learn's digits: one real 8x8 digit moving across frames.

Each clip is (C=1, T=frames, H=size, W=size): the digit is pasted into a slightly larger blank
canvas and shifted by `step` pixels per frame in one of four directions (right, left, down, up),
starting where the whole path stays inside the canvas. The label is the digit (default) or the
direction of motion (`label="direction"`: 0 right, 1 left, 2 down, 3 up).

The train / calibration / test split is the digits split (same seed, same images); each image's
direction and start come from a generator seeded by `seed`, so the same arguments give the same
clips.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.data import Splits
from edgeship.examples import digits

DIRECTIONS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx) per frame: right, left, down, up
DIGIT = 8  # side of a digits image


def _clips(images: torch.Tensor, frames: int, size: int, step: int,
           generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Clips (N, 1, T, H, W) and the direction index of each."""
    room = size - DIGIT
    travel = step * (frames - 1)
    if room < travel:
        raise ValueError(f"a canvas of {size} px leaves {room} px to move in; {frames} frames at "
                         f"{step} px per frame need {travel}: use size >= {DIGIT + travel}")
    n = len(images)
    direction = torch.randint(len(DIRECTIONS), (n,), generator=generator)
    # Start anywhere the path stays inside: along the motion within room - travel, across anywhere.
    along = torch.randint(room - travel + 1, (n,), generator=generator)
    across = torch.randint(room + 1, (n,), generator=generator)
    clips = torch.zeros(n, 1, frames, size, size)
    for i in range(n):
        dy, dx = DIRECTIONS[int(direction[i])]
        # Moving backwards (left, up) starts at the far end of the path.
        start_along = int(along[i]) + (travel if dx + dy < 0 else 0)
        y0, x0 = (int(across[i]), start_along) if dy == 0 else (start_along, int(across[i]))
        for t in range(frames):
            y, x = y0 + dy * step * t, x0 + dx * step * t
            clips[i, 0, t, y:y + DIGIT, x:x + DIGIT] = images[i, 0]
    return clips, direction


def splits(frames: int = 4, size: int = 12, seed: int = 0, step: int = 1,
           label: Literal["digit", "direction"] = "digit", calibration: int = 200, test: int = 497,
           limit: int | None = None) -> Splits:
    """Clips of the digits split (`digits.splits(seed, ...)`): the same images in the same parts.
    `limit` keeps only the first clips of each part (for quick tests)."""
    if label not in ("digit", "direction"):
        raise ValueError(f"label {label!r}; expected 'digit' or 'direction'")
    parts = digits.splits(seed=seed, calibration=calibration, test=test, limit=limit)
    generator = torch.Generator().manual_seed(seed)
    made = {}
    for name in ("train", "calibration", "test"):
        images, digit_labels = getattr(parts, name).tensors
        clips, direction = _clips(images, frames, size, step, generator)
        made[name] = TensorDataset(clips, digit_labels if label == "digit" else direction)
    return Splits(**made)


class ClipCNN(nn.Module):
    """Conv3d-BN-ReLU blocks, a spatial max pool, global average pool and a linear head.

    `factorized=True` makes each block (2+1)D: a (1,3,3) spatial convolution then a (3,1,1)
    temporal one, each with its batch norm and ReLU."""

    def __init__(self, width: int = 8, classes: int = 10, factorized: bool = False) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            if not factorized:
                return [nn.Conv3d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm3d(cout), nn.ReLU()]
            return [nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
                    nn.BatchNorm3d(cout), nn.ReLU(),
                    nn.Conv3d(cout, cout, (3, 1, 1), padding=(1, 0, 0), bias=False),
                    nn.BatchNorm3d(cout), nn.ReLU()]

        self.features = nn.Sequential(
            *block(1, width), *block(width, 2 * width), nn.MaxPool3d((1, 2, 2)),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool3d(1),
        )
        self.classifier = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def clip_cnn(width: int = 8, classes: int = 10, factorized: bool = False) -> ClipCNN:
    """An untrained clip classifier (train it in the recipe's load stage)."""
    return ClipCNN(width=width, classes=classes, factorized=factorized)
