"""Quantization-aware fine-tuning: fake-quant training of a calibrated graph at a small learning
rate, on the recipe's schedule (batch norm and observers frozen after a number of epochs,
optionally only some layers trained, optionally distilled from the float model)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from edgeship.errors import UserError
from edgeship.progress import Progress
from edgeship.quantize.float_layers import within
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.qat_settings import choices, resolved
from edgeship.quantize.training import LossFn, Shard, anchored, cross_entropy, distillation_loss, train
from edgeship.recipe import QATSection


def _trainable_parameters(prepared: nn.Module, prefixes: list[str] | None) -> list[nn.Parameter]:
    named = list(prepared.named_parameters())
    if prefixes is None:
        return [p for _, p in named]
    chosen = [p for name, p in named if within(name, prefixes)]
    if not chosen:
        names = sorted({name.rsplit(".", 1)[0] for name, _ in named})
        raise UserError(f"quantization.qat.trainable {prefixes}: no parameters under these names; "
                        f"modules with parameters: {', '.join(names)}")
    for _, p in named:
        p.requires_grad_(any(p is c for c in chosen))
    return chosen


def _optimizer(qat: QATSection, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    if qat.optimizer == "sgd":
        return torch.optim.SGD(params, lr=qat.lr, momentum=qat.momentum)
    return torch.optim.Adam(params, lr=qat.lr)


def _loss(qat: QATSection, teacher: nn.Module | None, params: list[nn.Parameter], task: LossFn) -> LossFn:
    loss = task
    if qat.distillation is not None:
        teacher.eval()
        loss = distillation_loss(teacher, qat.distillation.weight, qat.distillation.temperature,
                                 qat.distillation.loss, task)
    return anchored(loss, params, qat.anchor) if qat.anchor > 0 else loss


def _freezer(flow: QuantFlow, prepared: nn.Module, qat: QATSection):
    """Called at the start of each epoch: freezes batch norm and observers when the recipe says."""
    def on_epoch_start(epoch: int) -> None:
        if qat.freeze_bn_after_epochs is not None and epoch == qat.freeze_bn_after_epochs:
            flow.freeze_bn(prepared)
        if qat.freeze_observers_after_epochs is not None and epoch == qat.freeze_observers_after_epochs:
            flow.freeze_observers(prepared)
    return on_epoch_start


def finetune(flow: QuantFlow, prepared: nn.Module, dataset: Dataset, *, qat: QATSection,
             batch_size: int, seed: int, teacher: nn.Module | None = None,
             progress: Progress | None = None, shard: Shard | None = None,
             device: torch.device | None = None,
             on_epoch_end: Callable[[int, float], object] = lambda epoch, loss: None,
             end_in_eval: bool = True, task_loss: LossFn = cross_entropy) -> float:
    """Fake-quant training at a small learning rate, on the recipe's schedule; returns the last
    epoch's mean loss. With `shard`, this process is one rank of a distributed run (see
    distributed.py) and trains `prepared` through DistributedDataParallel. `on_epoch_end` sees
    each epoch's end (best_state.BestState.score keeps the best state). Knobs `qat` leaves out
    take qat_settings' defaults (the pipeline resolves them first, with its probe)."""
    qat = resolved(qat, choices(qat))
    torch.manual_seed(seed)
    params = _trainable_parameters(prepared, qat.trainable)
    trained = prepared
    if shard is not None:
        from torch.nn.parallel import DistributedDataParallel

        # Buffers (batch-norm statistics, observed ranges, fake-quant scales) follow rank 0 at
        # every step, so all ranks end with the same state.
        trained = DistributedDataParallel(prepared, device_ids=[device] if device else None)
    loss = train(trained, dataset, optimizer=_optimizer(qat, params), epochs=qat.epochs,
                 batch_size=batch_size, seed=seed, progress=progress or Progress(enabled=False),
                 label=f"QAT {flow.flow.value}", set_train_mode=lambda m: flow.set_train(prepared),
                 loss_fn=_loss(qat, teacher, params, task_loss), on_epoch_start=_freezer(flow, prepared, qat),
                 on_epoch_end=on_epoch_end, shard=shard, device=device)
    if end_in_eval:
        flow.set_eval(prepared)
    return loss
