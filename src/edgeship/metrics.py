"""The recipe's task metric (`data.metric`) and the training loss that matches it (`data.loss`).

Every accuracy figure edgeship reports is the metric's value: the float model's, each artifact's
(scored on its own runtime's answers), QAT's scores, sensitivity and fallback. Every drop is how
much worse the metric got, in its drop unit: percentage points for top1, the metric's own units
for the others (a drop is positive when the artifact is worse, whichever way the metric points).

    top1        outputs [batch, classes], labels a class index per sample; higher is better
    mse         outputs any shape, labels floats of the output's shape; lower is better
    perplexity  outputs [batch, positions, vocabulary] logits, labels a token index per position
                (the next token: shifting is the data's business); exp(mean cross-entropy), lower
    a function  'package.module:function' or 'file.py:function', called on each batch's outputs
                and labels (torch tensors), returning a number; the split's figure is the mean
                over batches weighted by their sizes; `data.higher_is_better` says its direction

>>> m = builtin("top1")
>>> m.worsening(0.99, 0.98), m.is_better(0.98, 0.99)
(1.0000000000000009, False)
>>> builtin("mse").worsening(0.10, 0.25)
0.15
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeship.errors import UserError
from edgeship.factories import resolve_callable
from edgeship.recipe import LOSSES, MATCHING_LOSS, METRICS, DataSection
from edgeship.report.schema import TOP1, MetricInfo

# What one sample's label is, by metric: a class index, a class index per position, or floats
LABEL_KINDS = ("classes", "tokens", "values")


@dataclass(frozen=True)
class TaskMetric:
    info: MetricInfo  # name, direction and drop unit: what the report carries
    labels: str  # one of LABEL_KINDS
    # (outputs, labels) of one batch -> (sum over the batch's units, units): summed over batches
    batch_sums: Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]
    finish: Callable[[float], float] = lambda mean: mean  # perplexity: exp of the mean
    source: str = ""  # a metric function's source, for cache keys; "" for the built-ins

    @property
    def name(self) -> str:
        return self.info.name

    def score(self, outputs: np.ndarray, labels: np.ndarray, batch_size: int = 256) -> float:
        """The metric of a whole split's outputs against its labels."""
        total = units = 0.0
        with torch.no_grad():
            for start in range(0, len(labels), batch_size):
                s, n = self.batch_sums(torch.from_numpy(np.asarray(outputs[start:start + batch_size])),
                                       torch.from_numpy(np.asarray(labels[start:start + batch_size])))
                total, units = total + s, units + n
        return self.finish(total / units)

    def worsening(self, reference: float, value: float) -> float:
        return self.info.worsening(reference, value)

    def is_better(self, a: float, b: float) -> bool:
        return self.info.is_better(a, b)

    def sort_key(self, value: float) -> float:
        """Larger is better, whichever way the metric points."""
        return value if self.info.higher_is_better else -value

    def format(self, value: float | None) -> str:
        return self.info.format(value)

    def said(self, value: float) -> str:
        """`top1 0.9940`, `perplexity 12.31`: a figure as progress notes write it."""
        return f"{self.name} {self.format(value)}"


def _top1(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    return float((outputs.argmax(-1) == labels).sum()), float(len(labels))


def _squared_error(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    error = (outputs.double() - labels.reshape(outputs.shape).double()) ** 2
    return float(error.sum()), float(error.numel())


def _token_cross_entropy(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    loss = nn.functional.cross_entropy(outputs.double().reshape(-1, outputs.shape[-1]), labels.reshape(-1),
                                       reduction="sum")
    return float(loss), float(labels.numel())


BUILTIN = {
    "top1": TaskMetric(TOP1, "classes", _top1),
    "mse": TaskMetric(MetricInfo(name="mse", higher_is_better=False, drop_scale=1), "values", _squared_error),
    "perplexity": TaskMetric(MetricInfo(name="perplexity", higher_is_better=False, drop_scale=1), "tokens",
                             _token_cross_entropy, finish=lambda mean: float(np.exp(mean))),
}
assert set(BUILTIN) == set(METRICS) and set(MATCHING_LOSS.values()) <= set(LOSSES)



def builtin(name: str) -> TaskMetric:
    return BUILTIN[name]


class MetricFailed(UserError):
    """The user's metric or loss function failed or gave no number: one line, exit code 2."""


def _number(fn: Callable, outputs: torch.Tensor, labels: torch.Tensor, key: str, spec: str) -> float:
    try:
        value = fn(outputs, labels)
    except Exception as e:  # noqa: BLE001 - the user's function failed on a batch
        first = (str(e).splitlines() or [""])[0]
        raise MetricFailed(f"{key} {spec!r} fails on a batch of {len(labels)} outputs "
                           f"{list(outputs.shape)} and labels {list(labels.shape)}: "
                           f"{type(e).__name__}: {first}") from None
    try:
        number = float(value.item() if isinstance(value, torch.Tensor) else value)
    except (TypeError, ValueError, RuntimeError):
        raise MetricFailed(f"{key} {spec!r} returned {type(value).__name__}, not a number") from None
    if not np.isfinite(number):
        raise MetricFailed(f"{key} {spec!r} returned {number} for a batch of {len(labels)}; it must "
                           f"return a finite number")
    return number


def _user_batch(fn: Callable, spec: str) -> Callable[[torch.Tensor, torch.Tensor], tuple[float, float]]:
    def batch_sums(outputs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
        return _number(fn, outputs, labels, "data.metric", spec) * len(labels), float(len(labels))
    return batch_sums


def _source(fn: Callable, spec: str) -> str:
    """What a user's function computes, for cache keys: its source (an edit to it changes every
    figure it made), or its name when it was built at run time."""
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return f"{spec} {getattr(fn, '__qualname__', '')}"


def metric_of(data: DataSection, base_dir: Path) -> TaskMetric:
    """The metric a recipe's `data.metric` names (its validation checked the combination)."""
    spec = data.metric
    if spec in BUILTIN:
        return BUILTIN[spec]
    fn = resolve_callable(spec, "data.metric", base_dir)
    higher_is_better = data.higher_is_better
    info = MetricInfo(name=spec, higher_is_better=bool(higher_is_better), drop_scale=1)
    return TaskMetric(info, "values", _user_batch(fn, spec), source=_source(fn, spec))


# --- training losses: (outputs, labels, model inputs) -> a scalar tensor, as training.LossFn


def cross_entropy(outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple = ()) -> torch.Tensor:
    """Classes on the last axis: [batch, classes] against [batch], or [batch, positions, vocabulary]
    against [batch, positions] (a language model's next-token loss)."""
    return nn.functional.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1))


def mse(outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple = ()) -> torch.Tensor:
    return nn.functional.mse_loss(outputs, labels.reshape(outputs.shape).to(outputs.dtype))


BUILTIN_LOSSES = {"cross_entropy": cross_entropy, "mse": mse}


@dataclass(frozen=True)
class TaskLoss:
    name: str
    fn: Callable[..., torch.Tensor]  # (outputs, labels) -> scalar tensor
    source: str = ""  # a loss function's source, for cache keys; "" for the built-ins

    def __call__(self, outputs: torch.Tensor, labels: torch.Tensor, inputs: tuple = ()) -> torch.Tensor:
        return self.fn(outputs, labels)

    def per_sample(self, outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """The loss of each sample alone (what a paired test across two models compares)."""
        with torch.no_grad():
            o, y = torch.from_numpy(outputs), torch.from_numpy(labels)
            return np.array([float(self.fn(o[i:i + 1], y[i:i + 1])) for i in range(len(labels))])


def loss_of(data: DataSection, base_dir: Path) -> TaskLoss | None:
    """The training loss of `data.loss`, or the metric's matching one; None for a metric function
    with no loss named (the recipe's validation refuses that when anything trains)."""
    spec = data.loss or MATCHING_LOSS.get(data.metric)
    if spec is None:
        return None
    if spec in BUILTIN_LOSSES:
        return TaskLoss(spec, BUILTIN_LOSSES[spec])
    fn = resolve_callable(spec, "data.loss", base_dir)
    return TaskLoss(spec, fn, _source(fn, spec))

