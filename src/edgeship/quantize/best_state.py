"""QAT that cannot make things worse: score the fake-quant model on a split fine-tuning never
trains on, after calibration and after every epoch, and keep the best state. A tie keeps the
earlier state, so when fine-tuning does not beat calibration the calibrated state ships.

Scoring runs a copy of the prepared graph with its observers frozen and in eval form (Scorer), so
neither the ranges nor batch norm learn from the scoring split. It scores fake quantization, not the
converted int8 model: converting a PT2E QAT graph folds conv-BN by re-exporting pattern graphs
(seconds per epoch), and fake quantization computes the same rounding in float."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays
from edgeship.metrics import TaskLoss, TaskMetric, builtin, cross_entropy
from edgeship.quantize.evaluate import logits
from edgeship.quantize.flow import QuantFlow


class Scorer:
    """Scores states of one prepared graph on a split: (the task metric, the mean task loss). It loads each
    state into an eval-form copy made once, with observers frozen, so scoring neither moves the
    ranges nor batch norm, and costs no graph copy or train/eval switch per score."""

    def __init__(self, flow: QuantFlow, prepared: nn.Module, split: Arrays,
                 metric: TaskMetric | None = None, loss: TaskLoss | None = None):
        self.flow, self.split = flow, split
        self.metric, self.loss = metric or builtin("top1"), loss or TaskLoss("cross_entropy", cross_entropy)
        self.copy = copy.deepcopy(prepared)
        flow.set_eval(self.copy)
        self.labels = torch.from_numpy(split.labels)

    def __call__(self, prepared: nn.Module) -> tuple[float, float]:
        outputs = self._outputs(prepared)
        with torch.no_grad():
            loss = float(self.loss(torch.from_numpy(outputs), self.labels, self.split.tensors()))
        return self.metric.score(outputs, self.split.labels), loss

    def per_sample(self, prepared: nn.Module) -> tuple[float, np.ndarray]:
        """The task metric and each sample's task loss alone (what a paired test compares)."""
        outputs = self._outputs(prepared)
        return self.metric.score(outputs, self.split.labels), self.loss.per_sample(outputs, self.split.labels)

    def _outputs(self, prepared: nn.Module) -> np.ndarray:
        self.copy.load_state_dict(prepared.state_dict())
        self.flow.freeze_observers(self.copy)  # the observers' on/off flags are state: set again
        return logits(self.copy, self.split)


@dataclass(frozen=True)
class Scored:
    epoch: int  # 0: the calibrated state, before any fine-tuning
    accuracy: float  # the task metric of the fake-quant model on the scoring split
    loss: float | None = None  # that epoch's mean training loss


@dataclass
class BestState:
    """Tracks `prepared` while it is fine-tuned in place; `restore` puts the best state back."""

    flow: QuantFlow
    prepared: nn.Module
    split: Arrays
    scorer: Scorer | None = None  # one made for `split` when not given
    history: list[Scored] = field(default_factory=list)
    _best: dict[str, torch.Tensor] | None = None

    def __post_init__(self):
        self.scorer = self.scorer or Scorer(self.flow, self.prepared, self.split)

    def score(self, epoch: int, loss: float | None = None, accuracy: float | None = None) -> Scored:
        """Scores the current state as `epoch` and remembers it when it beats every earlier one.
        `accuracy`: the scorer's figure for this very state, when the caller has it already."""
        scored = Scored(epoch, self.scorer(self.prepared)[0] if accuracy is None else accuracy, loss)
        if not self.history or self.scorer.metric.is_better(scored.accuracy, self.best.accuracy):
            # A deep copy keeps the state dict's _metadata: without its version, torchao's
            # observers take a loaded state for version 1 and reset `eps` to float32's.
            self._best = copy.deepcopy(self.prepared.state_dict())
        self.history.append(scored)
        return scored

    @property
    def best(self) -> Scored:
        """The first of the highest-scoring states."""
        return max(self.history, key=lambda s: (self.scorer.metric.sort_key(s.accuracy), -s.epoch))

    def restore(self, *, moved: bool = False) -> Scored:
        """Loads the best state into `prepared` (in eval form) and returns its score. `moved`:
        `prepared` changed after its last score (training stopped mid-epoch)."""
        if moved or self.history[-1] is not self.best:
            self.prepared.load_state_dict(self._best)
        self.flow.set_eval(self.prepared)
        return self.best
