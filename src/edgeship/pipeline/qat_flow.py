"""One flow's QAT, without the run's services: the probe, the fine-tune and its best state, from a
calibrated graph and a QatJob. The QAT stage (static.py) runs it on the driver, or with a cluster
sends it to a Ray task (`qat_task`): torch cannot pickle a prepared graph (FX's nor PT2E's), so
the task captures and prepares the float model again, loads the calibrated state, fine-tunes, and
gives back the state it ends with, which the driver loads into its own graph."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn
from torch.utils.data import Dataset

from edgeship.data import Arrays
from edgeship.metrics import TaskLoss, TaskMetric
from edgeship.progress import Progress
from edgeship.quantize.best_state import BestState, Scorer
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.qat import finetune as qat_finetune
from edgeship.quantize.qat_probe import run_probe
from edgeship.quantize.qat_settings import Chosen, choices, probe_needed, resolved
from edgeship.quantize.training import TrainingDiverged
from edgeship.recipe import QATSection, Recipe
from edgeship.report.analysis import qat_outcome
from edgeship.report.schema import QatEpoch, QatHistory, QatProbe


@dataclass(frozen=True)
class QatJob:
    """What a flow's fine-tune needs besides its graph."""

    recipe: Recipe
    train: Dataset
    split: tuple[str, Arrays]  # what it is scored on: (its name, its arrays)
    metric: TaskMetric
    loss: TaskLoss | None
    teacher: nn.Module  # distillation's (the float model unless the recipe names one)


# (the resolved QAT section) -> the run of QAT's own workers (distributed.py, distributed_ray.py)
Elsewhere = Callable[[QATSection], dict]


def fine_tune_flow(flow: QuantFlow, prepared: nn.Module, job: QatJob, progress: Progress, notes: list[str],
                   elsewhere: Elsewhere | None = None) -> tuple[QatHistory, dict | None]:
    """Trains `prepared` in place and leaves its best-scoring state in it; the history, and the
    distributed run's figures when `elsewhere` trained it."""
    name, run = flow.flow.value, None
    # QAT's seconds: everything here but the probe's own (it leaves out the fine-tune's costs
    # it pays first: the epoch-0 score and the switch into training form)
    started = time.perf_counter()
    scorer = Scorer(flow, prepared, job.split[1], job.metric, job.loss)
    calibrated = scorer(prepared)  # QAT's epoch 0 and the probe's baseline: scored once
    qat, chosen, probe = _settings(flow, prepared, job, scorer, calibrated[1], notes)
    tracker = BestState(flow, prepared, job.split[1], scorer)
    tracker.score(0, accuracy=calibrated[0])  # the probe restored the calibrated state
    diverged = None
    if elsewhere is None:
        diverged = _fine_tune_here(flow, prepared, job, qat, tracker, progress, notes)
    else:  # the workers train; this process scores what they give back against calibration
        run = elsewhere(qat)
        tracker.score(qat.epochs, run["loss"])
        ranks = f"{run['processes']} Ray workers" if qat.distributed.engine == "ray" else f"{run['processes']} processes"
        notes.append(f"{name} loss {run['loss']:.4f} on {ranks} ({run['backend']})")
    seconds = time.perf_counter() - started - (probe.seconds if probe else 0.0)
    shipped = tracker.restore(moved=diverged is not None)
    history = QatHistory(split=job.split[0], shipped_epoch=shipped.epoch, diverged=diverged,
                         epochs=[QatEpoch(**dataclasses.asdict(s)) for s in tracker.history],
                         settings={k: dataclasses.asdict(v) for k, v in chosen.items()},
                         probe=probe, train_seconds=round(seconds, 2))
    notes.append(f"{name} {qat_outcome(history, job.metric.info)}")
    return history, run


def _fine_tune_here(flow: QuantFlow, prepared: nn.Module, job: QatJob, qat: QATSection, tracker: BestState,
                    progress: Progress, notes: list[str]) -> str | None:
    """The fine-tune in this process; None, or why it stopped when its loss stopped being finite:
    QAT cannot make things worse, so the best state scored before it (at least the calibrated
    one) stays, and the convert stage weighs it against calibration alone, which then ships where
    the fake-quant model itself answers NaN (a LayerNorm's variance rounding to zero)."""
    recipe, name = job.recipe, flow.flow.value
    try:
        loss = qat_finetune(flow, prepared, job.train, qat=qat, batch_size=recipe.data.batch_size,
                            seed=recipe.seed, teacher=job.teacher, progress=progress,
                            on_epoch_end=tracker.score, task_loss=job.loss)
    except TrainingDiverged as e:
        notes.append(f"{name} {e}; the best state before it stays")
        return str(e)
    notes.append(f"{name} loss {loss:.4f}")
    return None


def _settings(flow: QuantFlow, prepared: nn.Module, job: QatJob, scorer: Scorer, calibrated_loss: float,
              notes: list[str]) -> tuple[QATSection, dict[str, Chosen], QatProbe | None]:
    """QAT's knobs: the recipe's, the probe's learning rate (and optimizer) when the recipe
    leaves the rate out, and defaults for the rest."""
    qat, probe, probed = job.recipe.quantization.qat, None, None
    if probe_needed(qat):
        found = run_probe(flow, prepared, job.train, scorer, qat=qat, batch_size=job.recipe.data.batch_size,
                          seed=job.recipe.seed, teacher=job.teacher, calibrated_loss=calibrated_loss)
        probe = QatProbe(steps=found.steps, seconds=round(found.seconds, 2),
                         calibrated_loss=found.calibrated_loss,
                         trials=[{k: None if isinstance(v, float) and not math.isfinite(v) else v  # diverged
                                  for k, v in dataclasses.asdict(t).items()} for t in found.trials])
        probed = (found.chosen.optimizer, found.chosen.lr)
        notes.append(f"{flow.flow.value} probe chose {probed[0]} lr {probed[1]:g} in {found.seconds:.1f} s")
    chosen = choices(qat, probed)
    return resolved(qat, chosen), chosen, probe


def restored(flow: QuantFlow, captured: nn.Module, examples: tuple, state: dict | None, *,
             qat: bool) -> nn.Module | None:
    """A prepared graph holding a cached state, in eval form as calibration leaves it; None
    without a state, or for one another edgeship's quantizer configuration made (a miss)."""
    if state is None:
        return None
    try:
        return flow.restore(captured, examples, state, qat=qat)
    except RuntimeError:  # its observers differ from this configuration's: calibrate again
        return None


def qat_task(flow: QuantFlow, model: nn.Module, examples: tuple, calibrated: dict, job: QatJob,
             progress: Progress) -> dict:
    """A Ray task: the flow's QAT from its calibrated state; the state it ends with (the best),
    its history and what it said; `progress` shows its bar on the driver. It computes on the one
    CPU Ray gives it (Ray sets its thread count): given the driver's two threads, two such tasks on
    a 2-core machine trained 20 times slower, and on the demo one thread gives the serial run's
    weights bit for bit (the same artifact hashes). A model whose float sums depend on the thread
    count can differ in the last bits from a serial run."""
    prepared = flow.restore(flow.capture(model, examples, qat=True), examples, calibrated, qat=True)
    notes: list[str] = []
    history, _ = fine_tune_flow(flow, prepared, job, progress, notes)
    return {"state": prepared.state_dict(), "history": history, "notes": notes}
