"""QAT knobs the recipe leaves out are chosen (the learning rate and optimizer by a short probe,
batch norm and observers frozen late), the recipe's own values are obeyed, and the choice between
QAT and calibration alone is made beyond the scoring split's noise."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch

from edgeship.data import stack
from edgeship.examples import digits
from edgeship.metrics import TaskLoss, builtin, cross_entropy
from edgeship.pipeline.post_training import compare
from edgeship.progress import Progress
from edgeship.quantize.best_state import Scorer
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.quantize.qat_probe import CANDIDATES, ONE_OPTIMIZER, PROBE_SHARE, Probe, Trial, run_probe
from edgeship.quantize.qat_settings import FALLBACK_LR, choices, resolved
from edgeship.quantize.training import train
from edgeship.recipe import QATSection
from edgeship.targets import Flow


def test_values_the_recipe_sets_are_obeyed_and_said_to_come_from_it():
    qat = QATSection(epochs=4, lr=3e-4, optimizer="adam", freeze_bn_after_epochs=0,
                     freeze_observers_after_epochs="never", anchor=0.5)
    chosen = choices(qat, probed=("sgd", 1e-3))  # a probe never overrides the recipe
    assert {k: (v.value, v.source) for k, v in chosen.items()} == {
        "optimizer": ("adam", "recipe"), "lr": (3e-4, "recipe"), "freeze_bn_after_epochs": (0, "recipe"),
        "freeze_observers_after_epochs": (None, "recipe"), "anchor": (0.5, "recipe")}
    ran = resolved(qat, chosen)
    assert (ran.lr, ran.optimizer, ran.freeze_bn_after_epochs, ran.freeze_observers_after_epochs) == \
        (3e-4, "adam", 0, "never")


@pytest.mark.parametrize("epochs, bn, observers", [(1, None, None), (2, 1, 1), (8, 4, 7)])
def test_left_out_knobs_take_the_probe_or_late_freezing(epochs, bn, observers):
    qat = QATSection(epochs=epochs)
    chosen = choices(qat, probed=("adam", 1e-5))
    assert (chosen["optimizer"].value, chosen["optimizer"].source) == ("adam", "probe")
    assert (chosen["lr"].value, chosen["lr"].source) == (1e-5, "probe")
    assert chosen["freeze_bn_after_epochs"].value == bn and chosen["freeze_bn_after_epochs"].source == "default"
    assert chosen["freeze_observers_after_epochs"].value == observers
    # Without a probe (a direct API call), the fallback rate of the optimizer
    assert choices(QATSection(optimizer="adam"))["lr"].value == FALLBACK_LR["adam"]


def _logits(margins: np.ndarray) -> np.ndarray:
    """Two-class logits whose right answer (class 0) leads by `margins`."""
    return np.stack([margins, np.zeros_like(margins)], axis=1).astype(np.float32)


TASK = (builtin("top1"), TaskLoss("cross_entropy", cross_entropy))


def test_qat_wins_only_when_its_loss_is_lower_beyond_noise():
    labels = np.zeros(200, dtype=np.int64)
    rng = np.random.default_rng(0)
    ptq = rng.normal(3.0, 1.0, 200)
    # Every sample a little more confident: a real improvement, even with top-1 tied
    better = compare(_logits(ptq + 0.3), _logits(ptq), labels, *TASK)
    assert better["p_value"] < 1e-6 and better["qat_loss"] < better["post_training_loss"]
    assert better["qat_accuracy"] == better["post_training_accuracy"]
    # Two samples flipped right, the rest noise around the same loss: a lead top-1 would take
    noise = ptq + rng.normal(0.0, 0.5, 200)
    flipped = np.argsort(ptq)[:2]
    noise[flipped] = np.abs(noise[flipped]) + 0.1
    ptq[flipped] = -np.abs(ptq[flipped]) - 0.1
    lucky = compare(_logits(noise), _logits(ptq), labels, *TASK)
    assert lucky["qat_only_right"] >= 2 and lucky["p_value"] > 0.05
    same = compare(_logits(ptq), _logits(ptq), labels, *TASK)
    assert same["p_value"] == 1.0 and same["qat_only_right"] == same["post_training_only_right"] == 0


@pytest.fixture(scope="module")
def calibrated():
    data = digits.splits()
    torch.manual_seed(0)
    model = digits.cnn(width=8)
    train(model, data.train, optimizer=torch.optim.Adam(model.parameters(), lr=1e-2), epochs=2,
          batch_size=64, seed=0, progress=Progress(enabled=False), label="float")
    qf = flow_for(Flow.FX_FBGEMM)
    prepared = calibrate(qf, model.eval(), (data.test[0][0].unsqueeze(0),), data.calibration, batches=2,
                         batch_size=64, qat=True)
    return data, model, qf, prepared


@pytest.mark.parametrize("optimizer, tried", [(None, [(o, lr) for o, rates in CANDIDATES.items() for lr in rates]),
                                              ("sgd", [("sgd", lr) for lr in ONE_OPTIMIZER["sgd"]])])
def test_the_probe_scores_each_rate_from_the_calibrated_state_and_leaves_it_there(calibrated, optimizer, tried):
    data, model, qf, prepared = calibrated
    before = copy.deepcopy(prepared.state_dict())
    qat = QATSection(epochs=2, optimizer=optimizer)
    probe = run_probe(qf, prepared, data.train, Scorer(qf, prepared, stack(data.calibration)), qat=qat, batch_size=64, seed=0,
                      teacher=model)
    assert [(t.optimizer, t.lr) for t in probe.trials] == tried
    # All candidates together train on at most PROBE_SHARE of the fine-tune's steps
    steps_per_epoch = -(-len(data.train) // 64)
    assert 1 <= probe.steps * len(tried) <= PROBE_SHARE * qat.epochs * steps_per_epoch
    # The lowest loss is the yardstick; the choice is the furthest mover among those not worse than it
    lowest = min(probe.trials, key=lambda t: t.loss)
    assert lowest.p_worse is None and all(t.p_worse is not None for t in probe.trials if t is not lowest)
    assert all(t.worse == (t.p_worse is not None and t.p_worse < 0.05) for t in probe.trials)
    running = [t for t in probe.trials if not t.worse]
    assert probe.chosen in running and probe.chosen.moved == max(t.moved for t in running)
    assert all(t.moved > 0 for t in probe.trials)
    # The candidates moved the model: the losses differ from one another and from the start
    assert len({round(t.loss, 6) for t in probe.trials} | {round(probe.calibrated_loss, 6)}) == len(tried) + 1
    for key, value in prepared.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_the_probe_takes_the_furthest_mover_not_worse_than_the_lowest_loss():
    """Short probes favour small rates: among candidates tied with the lowest loss (p_worse >=
    0.05) the one that moved the weights furthest wins; one significantly worse never does, however
    far it moved; when all diverged, the smallest rate (the fine-tune then meets the divergence)."""
    def probe(*trials):
        return Probe(steps=2, seconds=0.1, calibrated_loss=0.3, trials=list(trials))

    lowest, tied = Trial("adam", 1e-5, 0.280, 0.9, moved=2e-5), Trial("adam", 1e-4, 0.281, 0.9, 2e-4, p_worse=0.4)
    worse = Trial("sgd", 1e-3, 0.300, 0.9, moved=5e-4, p_worse=0.001, worse=True)
    assert probe(lowest, tied, worse).chosen is tied
    assert probe(lowest, dataclasses.replace(tied, p_worse=0.01, worse=True), worse).chosen is lowest
    diverged = [Trial("sgd", lr, float("inf"), None, moved=float("nan")) for lr in (1e-3, 1e-4)]
    assert probe(*diverged).chosen.lr == 1e-4
