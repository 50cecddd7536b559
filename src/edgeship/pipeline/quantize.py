"""Calibrate, QAT fine-tune and convert stages, for any quantization flow."""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from edgeship.data import as_inputs
from edgeship.errors import UserError
from edgeship.pipeline.flows import QuantFlow
from edgeship.pipeline.training import Shard, cross_entropy, distillation_loss, train
from edgeship.progress import Progress
from edgeship.recipe import QATSection


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


def _trainable_parameters(prepared: nn.Module, prefixes: list[str] | None) -> list[nn.Parameter]:
    named = list(prepared.named_parameters())
    if prefixes is None:
        return [p for _, p in named]
    chosen = [p for name, p in named if any(name == pre or name.startswith(pre + ".") for pre in prefixes)]
    if not chosen:
        names = sorted({name.rsplit(".", 1)[0] for name, _ in named})
        raise UserError(f"quantization.qat.trainable {prefixes}: no parameters under these names; "
                        f"modules with parameters: {', '.join(names)}")
    for _, p in named:
        p.requires_grad_(any(p is c for c in chosen))
    return chosen


def finetune(flow: QuantFlow, prepared: nn.Module, dataset: Dataset, *, qat: QATSection,
             batch_size: int, seed: int, teacher: nn.Module | None = None,
             progress: Progress | None = None, shard: Shard | None = None,
             device: torch.device | None = None) -> float:
    """Fake-quant training at a small learning rate, on the recipe's schedule; returns the last
    epoch's mean loss. With `shard`, this process is one rank of a distributed run (see
    distributed_qat.py) and trains `prepared` through DistributedDataParallel."""
    torch.manual_seed(seed)
    params = _trainable_parameters(prepared, qat.trainable)
    trained = prepared
    if shard is not None:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (batch-norm statistics, observed ranges, fake-quant scales) follow rank 0 at
        # every step, so all ranks end with the same state.
        trained = DistributedDataParallel(prepared, device_ids=[device] if device else None)
    optimizer = (torch.optim.SGD(params, lr=qat.lr, momentum=qat.momentum) if qat.optimizer == "sgd"
                 else torch.optim.Adam(params, lr=qat.lr))
    loss_fn = cross_entropy
    if qat.distillation is not None:
        teacher.eval()
        loss_fn = distillation_loss(teacher, qat.distillation.weight, qat.distillation.temperature)

    def on_epoch_start(epoch: int) -> None:
        if qat.freeze_bn_after_epochs is not None and epoch == qat.freeze_bn_after_epochs:
            flow.freeze_bn(prepared)
        if qat.freeze_observers_after_epochs is not None and epoch == qat.freeze_observers_after_epochs:
            flow.freeze_observers(prepared)

    loss = train(trained, dataset, optimizer=optimizer, epochs=qat.epochs, batch_size=batch_size,
                 seed=seed, progress=progress or Progress(enabled=False),
                 label=f"QAT {flow.flow.value}", set_train_mode=lambda m: flow.set_train(prepared),
                 loss_fn=loss_fn, on_epoch_start=on_epoch_start, shard=shard, device=device)
    flow.set_eval(prepared)
    return loss
