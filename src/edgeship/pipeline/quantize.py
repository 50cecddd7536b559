"""Calibrate, QAT fine-tune and convert stages, for any quantization flow."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeship.data import as_inputs
from edgeship.pipeline.flows import QuantFlow
from edgeship.pipeline.training import train
from edgeship.progress import Progress
from edgeship.recipe import QATSection


def calibrate(flow: QuantFlow, model: nn.Module, examples: tuple, dataset: Dataset, *, batches: int,
              batch_size: int, qat: bool, progress: Progress) -> nn.Module:
    """Insert observers (or fake-quant for QAT) and let them see `batches` calibration batches.

    With QAT the observed ranges are the starting point that fine-tuning then adjusts."""
    prepared = flow.prepare(model, examples, qat=qat)
    flow.set_eval(prepared)  # batch-norm statistics stay as trained; only observers move
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    seen = itertools.islice(loader, batches)
    with torch.no_grad(), progress.task(f"calibrate {flow.flow.value}", total=min(batches, len(loader))) as advance:
        for inputs, _ in seen:
            prepared(*as_inputs(inputs))
            advance()
    return prepared


def finetune(flow: QuantFlow, prepared: nn.Module, dataset: Dataset, *, qat: QATSection,
             batch_size: int, seed: int, progress: Progress) -> float:
    """Fake-quant training at a small learning rate; returns the last epoch's mean loss."""
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=qat.lr, momentum=qat.momentum)
    loss = train(prepared, dataset, optimizer=optimizer, epochs=qat.epochs, batch_size=batch_size,
                 seed=seed, progress=progress, label=f"QAT {flow.flow.value}",
                 set_train_mode=flow.set_train)
    flow.set_eval(prepared)
    return loss
