"""QAT that cannot make things worse: score the fake-quant model on a split fine-tuning never
trains on, after calibration and after every epoch, and keep the best state. A tie keeps the
earlier state, so when fine-tuning does not beat calibration the calibrated state ships.

Scoring runs a copy of the prepared graph with its observers frozen and in eval form, so neither
the ranges nor batch norm learn from the scoring split. It scores fake quantization, not the
converted int8 model: converting a PT2E QAT graph folds conv-BN by re-exporting pattern graphs
(seconds per epoch), and fake quantization computes the same rounding in float."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from edgeship.data import Arrays
from edgeship.quantize.evaluate import logits, top1
from edgeship.quantize.flow import QuantFlow


@dataclass(frozen=True)
class Scored:
    epoch: int  # 0: the calibrated state, before any fine-tuning
    accuracy: float  # top-1 of the fake-quant model on the scoring split
    loss: float | None = None  # that epoch's mean training loss


@dataclass
class BestState:
    """Tracks `prepared` while it is fine-tuned in place; `restore` puts the best state back."""

    flow: QuantFlow
    prepared: nn.Module
    split: Arrays
    history: list[Scored] = field(default_factory=list)
    _best: dict[str, torch.Tensor] | None = None

    def score(self, epoch: int, loss: float | None = None) -> Scored:
        """Scores the current state as `epoch` and remembers it when it beats every earlier one."""
        probe = copy.deepcopy(self.prepared)
        self.flow.freeze_observers(probe)
        self.flow.set_eval(probe)
        scored = Scored(epoch, top1(logits(probe, self.split), self.split.labels), loss)
        if not self.history or scored.accuracy > self.best.accuracy:
            # A deep copy keeps the state dict's _metadata: without its version, torchao's
            # observers take a loaded state for version 1 and reset `eps` to float32's.
            self._best = copy.deepcopy(self.prepared.state_dict())
        self.history.append(scored)
        return scored

    @property
    def best(self) -> Scored:
        """The first of the highest-scoring states."""
        return max(self.history, key=lambda s: (s.accuracy, -s.epoch))

    def restore(self) -> Scored:
        """Loads the best state into `prepared` (in eval form) and returns its score."""
        if self.history[-1] is not self.best:
            self.prepared.load_state_dict(self._best)
        self.flow.set_eval(self.prepared)
        return self.best
