"""The learning-rate probe: when the recipe leaves QAT's learning rate out, a few candidate
(optimizer, rate) pairs each fine-tune the calibrated fake-quant model (its state restored before
each) for the same few steps on the same slice of the train split and are scored by their task
loss (data.loss) on the held-out scoring split. Loss, not top-1: on a few hundred samples top-1
moves in whole images and ties, while the loss sees every logit move.

The choice: of the candidates whose per-sample loss is not higher than the lowest one's beyond
the split's noise (one-sided Wilcoxon signed-rank, p < 0.05), the one that moved the weights
furthest. A few steps favour the small rates (short-horizon bias, Wu et al., 2018): measured on
three model families (tests/perf/families.py), the 2-step losses of the four candidates were
mostly within noise of each other, and the lowest picked rates whose full fine-tune ended worst
(a transformer's qnnpack flow: Adam 1e-5, 0.9135 on test after the 2-epoch fine-tune, where
Adam 1e-4 gave 0.9376). The best state and the post-training guard (best_state.py,
pipeline/post_training.py) keep a rate too bold from shipping.

Its training is bounded by the fine-tune it serves: all candidates together train on at most
PROBE_SHARE of the fine-tune's steps. Each candidate also pays fixed costs (its optimizer and
loader, a score of the split), so on fine-tunes of a few seconds the probe costs more than
PROBE_SHARE of the fine-tune's time (tests/perf/test_qat_rate.py). Two costs are the fine-tune's,
not the probe's, and are not on its clock: the calibrated state's score (QAT's epoch 0, passed
in) and the graph's switch into training form (for an exported graph about a second, re-exporting
its batch-norm and dropout patterns), which the probe makes first and leaves made."""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import wilcoxon
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
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Trial:
    optimizer: str
    lr: float
    loss: float  # mean task loss on the scoring split after the probe's steps; inf: diverged
    accuracy: float | None  # the task metric there; None: diverged
    moved: float = 0.0  # how far the steps moved the weights: |w - w0| / |w0| over all of them
    p_worse: float | None = None  # one-sided Wilcoxon p that its loss is above the lowest one's
    worse: bool = False  # p_worse < SIGNIFICANCE: out of the running


@dataclass(frozen=True)
class Probe:
    steps: int  # per candidate
    seconds: float
    calibrated_loss: float  # the same split's loss before any step
    trials: list[Trial]

    @property
    def chosen(self) -> Trial:
        """Of the trials not worse than the lowest loss beyond noise, the one that moved furthest;
        when every candidate diverged, the smallest rate."""
        tied = [t for t in self.trials if math.isfinite(t.loss) and not t.worse]
        return max(tied, key=lambda t: (t.moved, -t.lr)) if tied else min(self.trials, key=lambda t: t.lr)


def candidates(qat: QATSection) -> list[tuple[str, float]]:
    if qat.optimizer is not None:
        return [(qat.optimizer, lr) for lr in ONE_OPTIMIZER[qat.optimizer]]
    return [(opt, lr) for opt, rates in CANDIDATES.items() for lr in rates]


def probe_steps(qat: QATSection, train_samples: int, batch_size: int, tried: int) -> int:
    per_epoch = -(-train_samples // batch_size)
    return max(1, int(PROBE_SHARE * qat.epochs * per_epoch / tried))


def run_probe(flow: QuantFlow, prepared: nn.Module, train: Dataset, scorer: Scorer, *,
              qat: QATSection, batch_size: int, seed: int, teacher: nn.Module | None = None,
              calibrated_loss: float | None = None) -> Probe:
    """Tries each candidate from `prepared`'s state and returns the scores; `prepared` ends in
    the state it came in, in training form (restored, not copied, and not switched to eval
    between candidates: for an exported graph either costs about a second, more than a
    candidate's few steps). `calibrated_loss`: the scorer's loss for `prepared` as it comes,
    when the caller has scored it already (the pipeline has: it is QAT's epoch 0)."""
    flow.set_train(prepared)  # the fine-tune's first cost (see above): made before the clock starts
    started = time.perf_counter()
    tried = candidates(qat)
    steps = probe_steps(qat, len(train), batch_size, len(tried))
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    piece = Subset(train, order[:steps * batch_size].tolist())  # one slice for every candidate
    # A deep copy keeps the state dict's _metadata (see best_state.py)
    start, scored = copy.deepcopy(prepared.state_dict()), []
    calibrated_loss = scorer(prepared)[1] if calibrated_loss is None else calibrated_loss
    for optimizer, lr in tried:
        prepared.load_state_dict(start)
        short = qat.model_copy(update={"optimizer": optimizer, "lr": lr, "epochs": 1, "distributed": None,
                                       "freeze_bn_after_epochs": "never",
                                       "freeze_observers_after_epochs": "never"})
        try:
            finetune(flow, prepared, piece, qat=short, batch_size=batch_size, seed=seed, teacher=teacher,
                     end_in_eval=False, task_loss=scorer.loss)
            accuracy, losses = scorer.per_sample(prepared)
        except TrainingDiverged:  # a rate too high for this model: the probe's answer, not an error
            accuracy, losses = None, None
        scored.append((Trial(optimizer, lr, _mean(losses), accuracy, _moved(prepared, start)), losses))
    prepared.load_state_dict(start)
    return Probe(steps, time.perf_counter() - started, calibrated_loss, _against_lowest(scored))


def _mean(losses: np.ndarray | None) -> float:
    return float(losses.mean()) if losses is not None and np.isfinite(losses).all() else float("inf")


def _moved(prepared: nn.Module, start: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        params = [(p, start[name]) for name, p in prepared.named_parameters()]
        return float(sum(((p - p0) ** 2).sum() for p, p0 in params).sqrt()
                     / sum((p0 ** 2).sum() for _, p0 in params).sqrt().clamp_min(1e-12))


def _against_lowest(scored: list[tuple[Trial, np.ndarray | None]]) -> list[Trial]:
    """Each finite trial with the p that its per-sample loss is above the lowest trial's."""
    finite = [(t, losses) for t, losses in scored if math.isfinite(t.loss)]
    if not finite:
        return [t for t, _ in scored]
    lowest, low_losses = min(finite, key=lambda s: (s[0].loss, s[0].lr))
    out = []
    for trial, losses in scored:
        if trial is lowest or not math.isfinite(trial.loss):
            out.append(trial)
            continue
        above = losses - low_losses
        p = 1.0 if not above.any() else float(wilcoxon(above, alternative="greater").pvalue)
        out.append(dataclasses.replace(trial, p_worse=p, worse=p < SIGNIFICANCE))
    return out
