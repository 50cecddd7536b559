"""The two training loops: float training in the load stage, and QAT fine-tuning."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeship.data import as_inputs
from edgeship.progress import Progress


def train(module: nn.Module, dataset: Dataset, *, optimizer: torch.optim.Optimizer, epochs: int,
          batch_size: int, seed: int, progress: Progress, label: str,
          set_train_mode: Callable[[nn.Module], None] = lambda m: m.train()) -> float:
    """Cross-entropy training; returns the last epoch's mean loss."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    set_train_mode(module)
    mean_loss = float("nan")
    with progress.task(label, total=epochs * len(loader)) as advance:
        for _ in range(epochs):
            total, count = 0.0, 0
            for inputs, labels in loader:
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(module(*as_inputs(inputs)), labels)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(labels), count + len(labels)
                advance()
            mean_loss = total / count
    return mean_loss
