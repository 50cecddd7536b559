"""The training loop shared by float training, post-pruning fine-tuning and QAT."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeship.data import as_inputs
from edgeship.progress import Progress

# (model outputs, labels, model inputs) -> loss
LossFn = Callable[[torch.Tensor, torch.Tensor, tuple], torch.Tensor]


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, labels)


def distillation_loss(teacher: nn.Module, weight: float, temperature: float) -> LossFn:
    """Hinton et al.'s loss: (1 - w) CE(labels) + w T^2 KL(teacher_T || student_T)."""

    def loss(outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = teacher(*inputs)
        soft = nn.functional.kl_div(nn.functional.log_softmax(outputs / temperature, dim=1),
                                    nn.functional.softmax(teacher_logits / temperature, dim=1),
                                    reduction="batchmean") * temperature ** 2
        return (1 - weight) * nn.functional.cross_entropy(outputs, labels) + weight * soft

    return loss


def train(module: nn.Module, dataset: Dataset, *, optimizer: torch.optim.Optimizer, epochs: int,
          batch_size: int, seed: int, progress: Progress, label: str,
          set_train_mode: Callable[[nn.Module], None] = lambda m: m.train(),
          loss_fn: LossFn = cross_entropy,
          on_epoch_start: Callable[[int], None] = lambda epoch: None) -> float:
    """Returns the last epoch's mean loss."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    set_train_mode(module)
    mean_loss = float("nan")
    with progress.task(label, total=epochs * len(loader)) as advance:
        for epoch in range(epochs):
            on_epoch_start(epoch)
            total, count = 0.0, 0
            for inputs, labels in loader:
                inputs = as_inputs(inputs)
                optimizer.zero_grad()
                loss = loss_fn(module(*inputs), labels, inputs)
                loss.backward()
                optimizer.step()
                total, count = total + loss.item() * len(labels), count + len(labels)
                advance()
            mean_loss = total / count
    return mean_loss
