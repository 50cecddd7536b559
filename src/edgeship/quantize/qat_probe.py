"""The learning-rate probe: when the recipe leaves QAT's learning rate out, a few candidate
(optimizer, rate) pairs each fine-tune the calibrated fake-quant model (its state restored before
each) for the same few steps on the same slice of the train split, and the one with the lowest
task loss (data.loss) on the held-out scoring split wins. Loss, not top-1: on a few hundred
samples top-1 moves in whole images and ties, while the loss sees every logit move.

Its training is bounded by the fine-tune it serves: all candidates together train on at most
PROBE_SHARE of the fine-tune's steps. Each candidate also pays fixed costs (its optimizer and
loader, a score of the split), so on fine-tunes of a few seconds the probe measured 0.5-0.65x of
the fine-tune's time (tests/perf/test_qat_rate.py), more than PROBE_SHARE."""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from edgeship.quantize.best_state import Scorer
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.qat import finetune
from edgeship.quantize.training import TrainingDiverged
from edgeship.recipe import QATSection

# Around torchvision's QAT reference rate (SGD 1e-4) a decade each way; Adam a decade lower, as
# its steps are normalised per weight. Which wins differs by model: convnets with batch norm
# usually take SGD, attention models Adam.
CANDIDATES = {"sgd": (1e-4, 1e-3), "adam": (1e-5, 1e-4)}
ONE_OPTIMIZER = {"sgd": (1e-5, 1e-4, 1e-3), "adam": (1e-6, 1e-5, 1e-4)}
PROBE_SHARE = 0.3


@dataclass(frozen=True)
class Trial:
    optimizer: str
    lr: float
    loss: float  # mean task loss on the scoring split after the probe's steps; inf: diverged
    accuracy: float | None  # the task metric there; None: diverged


@dataclass(frozen=True)
class Probe:
    steps: int  # per candidate
    seconds: float
    calibrated_loss: float  # the same split's loss before any step
    trials: list[Trial]

    @property
    def chosen(self) -> Trial:
        """The lowest loss; a tie takes the smaller rate."""
        return min(self.trials, key=lambda t: (t.loss, t.lr))


def candidates(qat: QATSection) -> list[tuple[str, float]]:
    if qat.optimizer is not None:
        return [(qat.optimizer, lr) for lr in ONE_OPTIMIZER[qat.optimizer]]
    return [(opt, lr) for opt, rates in CANDIDATES.items() for lr in rates]


def probe_steps(qat: QATSection, train_samples: int, batch_size: int, tried: int) -> int:
    per_epoch = -(-train_samples // batch_size)
    return max(1, int(PROBE_SHARE * qat.epochs * per_epoch / tried))


def run_probe(flow: QuantFlow, prepared: nn.Module, train: Dataset, scorer: Scorer, *,
              qat: QATSection, batch_size: int, seed: int, teacher: nn.Module | None = None) -> Probe:
    """Tries each candidate from `prepared`'s state and returns the scores; `prepared` ends in
    the state it came in, in training form (restored, not copied, and not switched to eval
    between candidates: for an exported graph either costs about a second, more than a
    candidate's few steps)."""
    started = time.perf_counter()
    tried = candidates(qat)
    steps = probe_steps(qat, len(train), batch_size, len(tried))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    piece = Subset(train, order[:steps * batch_size].tolist())  # one slice for every candidate
    # A deep copy keeps the state dict's _metadata (see best_state.py)
    start, trials = copy.deepcopy(prepared.state_dict()), []
    calibrated_loss = scorer(prepared)[1]
    for optimizer, lr in tried:
        prepared.load_state_dict(start)
        short = qat.model_copy(update={"optimizer": optimizer, "lr": lr, "epochs": 1, "distributed": None,
                                       "freeze_bn_after_epochs": "never",
                                       "freeze_observers_after_epochs": "never"})
        try:
            finetune(flow, prepared, piece, qat=short, batch_size=batch_size, seed=seed, teacher=teacher,
                     end_in_eval=False, task_loss=scorer.loss)
            accuracy, loss = scorer(prepared)
        except TrainingDiverged:  # a rate too high for this model: the probe's answer, not an error
            accuracy, loss = None, float("inf")
        trials.append(Trial(optimizer, lr, loss if math.isfinite(loss) else float("inf"), accuracy))
    prepared.load_state_dict(start)
    return Probe(steps, time.perf_counter() - started, calibrated_loss, trials)
