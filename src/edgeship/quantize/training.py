"""The training loop shared by float training, post-pruning fine-tuning and QAT."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from edgeship.data import as_inputs
from edgeship.metrics import cross_entropy
from edgeship.quantize.evaluate import scored
from edgeship.progress import Progress

# (model outputs, labels, model inputs) -> loss
LossFn = Callable[[torch.Tensor, torch.Tensor, tuple], torch.Tensor]


def distillation_loss(teacher: nn.Module, weight: float, temperature: float, kind: str = "kl",
                      task: LossFn = cross_entropy) -> LossFn:
    """(1 - w) task(labels) + w D(student, teacher): D is Hinton et al.'s T^2 KL(teacher_T ||
    student_T) over the last axis (classes, or a language model's vocabulary at each position)
    for `kl`, the mean squared error between the outputs for `mse`."""

    def loss(outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple) -> torch.Tensor:
        with torch.no_grad():
            teacher_outputs = scored(teacher(*inputs))
        if kind == "mse":
            soft = nn.functional.mse_loss(outputs, teacher_outputs)
        else:
            classes = outputs.shape[-1]
            soft = nn.functional.kl_div(
                nn.functional.log_softmax(outputs.reshape(-1, classes) / temperature, dim=1),
                nn.functional.softmax(teacher_outputs.reshape(-1, classes) / temperature, dim=1),
                reduction="batchmean") * temperature ** 2
        return (1 - weight) * task(outputs, labels, inputs) + weight * soft

    return loss


def anchored(loss_fn: LossFn, params: list[nn.Parameter], weight: float) -> LossFn:
    """L2-SP (Li et al., 2018): the loss plus weight / 2 x the squared distance of `params`
    from where they start, so a short fine-tune stays near the model it starts from."""
    start = [p.detach().clone() for p in params]

    def loss(outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple) -> torch.Tensor:
        drift = sum(((p - p0) ** 2).sum() for p, p0 in zip(params, start))
        return loss_fn(outputs, labels, inputs) + weight / 2 * drift

    return loss


class TrainingDiverged(RuntimeError):
    """The loss stopped being a finite number: every later step would train on garbage."""


@dataclass(frozen=True)
class Shard:
    """This process's place in a distributed run: it trains on every `world`-th sample."""

    rank: int
    world: int


def _loader(dataset: Dataset, batch_size: int, seed: int,
            shard: Shard | None) -> tuple[DataLoader, DistributedSampler | None]:
    if shard is None:
        return DataLoader(dataset, batch_size=batch_size, shuffle=True,
                          generator=torch.Generator().manual_seed(seed)), None
    sampler = DistributedSampler(dataset, num_replicas=shard.world, rank=shard.rank, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size // shard.world, sampler=sampler), sampler


def _diverged(label: str, loss: torch.Tensor, epoch: int, step: int) -> TrainingDiverged:
    # Under fake quantization this is usually a value that rounds to zero and is then divided by
    # (or its log taken); otherwise a learning rate too high.
    return TrainingDiverged(
        f"{label}: the loss is {loss.item()} at epoch {epoch + 1}, step {step}: the forward pass "
        f"gives NaN/Inf (a division by a value that can round to zero under fake quantization?) or "
        f"the learning rate is too high")


@dataclass
class _Loop:
    """One training run's fixed parts; `epoch` runs one pass over the loader."""

    module: nn.Module
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    label: str
    device: torch.device | None
    scheduler: torch.optim.lr_scheduler.LRScheduler | None

    def epoch(self, epoch: int, advance: Callable[[], None]) -> torch.Tensor:
        """Returns (sum of loss x samples, samples) over this process's batches."""
        sums = torch.zeros(2, dtype=torch.float64)
        for step, (inputs, labels) in enumerate(self.loader, start=1):
            inputs = as_inputs(inputs)
            if self.device:
                inputs, labels = tuple(x.to(self.device) for x in inputs), labels.to(self.device)
            self.optimizer.zero_grad()
            loss = self.loss_fn(scored(self.module(*inputs)), labels, inputs)
            if not torch.isfinite(loss):
                raise _diverged(self.label, loss, epoch, step)
            loss.backward()
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            sums += torch.tensor([loss.item() * len(labels), len(labels)], dtype=torch.float64)
            advance()
        return sums


def train(module: nn.Module, dataset: Dataset, *, optimizer: torch.optim.Optimizer, epochs: int,
          batch_size: int, seed: int, progress: Progress, label: str,
          set_train_mode: Callable[[nn.Module], None] = lambda m: m.train(),
          loss_fn: LossFn = cross_entropy,
          on_epoch_start: Callable[[int], None] = lambda epoch: None,
          on_epoch_end: Callable[[int, float], object] = lambda epoch, loss: None,
          shard: Shard | None = None, device: torch.device | None = None,
          schedule: str = "constant") -> float:
    """Returns the last epoch's mean loss (over all shards when `shard` is given).
    `on_epoch_end(epoch, mean_loss)` is called after each epoch, counting from 1.

    With a shard, `module` is a DistributedDataParallel wrapper and each process takes
    batch_size / world samples a step, so a step sees as many samples as one process would."""
    loader, sampler = _loader(dataset, batch_size, seed, shard)
    scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
                 if schedule == "cosine" else None)
    loop = _Loop(module, loader, optimizer, loss_fn, label, device, scheduler)
    set_train_mode(module)
    mean_loss = float("nan")
    with progress.task(label, total=epochs * len(loader)) as advance:
        for epoch in range(epochs):
            if sampler is not None:
                sampler.set_epoch(epoch)
            on_epoch_start(epoch)
            sums = loop.epoch(epoch, advance)
            if shard is not None:
                summed = sums.to(device) if device else sums  # nccl reduces device tensors only
                torch.distributed.all_reduce(summed)
                sums = summed.cpu()
            mean_loss = float(sums[0] / sums[1])
            on_epoch_end(epoch + 1, mean_loss)
    return mean_loss
