"""Calibration: observers (or, for QAT, fake-quant modules) see calibration batches and set the
int8 ranges, for any quantization flow."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeship.data import as_inputs
from edgeship.progress import Progress
from edgeship.quantize.flow import QuantFlow


def calibrate(flow: QuantFlow, model: nn.Module, examples: tuple, dataset: Dataset, *, batches: int,
              batch_size: int, qat: bool, progress: Progress | None = None,
              captured: nn.Module | None = None) -> nn.Module:
    """Insert observers (or fake-quant for QAT) and let them see `batches` calibration batches.
    `captured`: the flow's capture of `model`, when the caller already has it.

    With QAT the observed ranges are the starting point that fine-tuning then adjusts."""
    if captured is None:
        captured = flow.capture(model, examples, qat=qat)
    prepared = flow.prepare_captured(captured, examples, qat=qat)
    flow.set_eval(prepared)  # batch-norm statistics stay as trained; only observers move
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    progress = progress or Progress(enabled=False)
    with torch.no_grad(), progress.task(f"calibrate {flow.flow.value}",
                                        total=min(batches, len(loader))) as advance:
        for inputs, _ in itertools.islice(loader, batches):
            prepared(*as_inputs(inputs))
            advance()
    return prepared


def calibrated_state(flow: QuantFlow, inputs: tuple[nn.Module, tuple, Dataset], batches: int, batch_size: int,
                     qat: bool, progress: Progress) -> dict:
    """A Ray task: the flow's calibrated state, from the float model, its example inputs and the
    calibration split (`inputs`); the driver loads it into its own capture (a prepared graph does
    not pickle). On Ray's one thread it is the serial run's state bit for bit on the demo."""
    model, examples, dataset = inputs
    return calibrate(flow, model, examples, dataset, batches=batches, batch_size=batch_size, qat=qat,
                     progress=progress).state_dict()
