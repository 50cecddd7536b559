"""QAT against calibration alone, after conversion. QAT calibrates its starting point with
fake-quant observers (a moving-average min/max), not the post-training observers (a histogram for
the PyTorch flows, ONNX Runtime's own calibration for onnx-int8), and its scores are of fake
quantization. So when QAT is on, each flow's best QAT state and its post-training twin are both
converted and scored on the same held-out split: in PyTorch for a flow that converts to int8
there, in the artifact's own runtime for a flow whose runtime quantizes at export. QAT ships only
when it is better beyond the split's noise: its per-sample task loss (data.loss: cross-entropy for
a classifier) lower by a one-sided Wilcoxon signed-rank test (p < SIGNIFICANCE) and on average,
and its metric no worse. Top-1 alone cannot tell: on
a few hundred samples it moves in whole samples, and a 2-sample lead there turned into a 4-sample
loss on the test split (MobileNetV2 example, fbgemm), while a sign test on the samples only one
model answers right (McNemar's) gave the same p = 0.25 to a lead that held (a transformer, +3
points on test). Every logit's move counts in the loss. Otherwise the post-training model ships,
the simpler of the two. (Where the runtime quantizes at export and fine-tuning did not beat
calibration, the two are the same artifact.)"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import wilcoxon
from torch import nn
from torch.utils.data import Dataset

from edgeship.data import Arrays
from edgeship.formats import Exporter, export_atomically, spec_for
from edgeship.metrics import TaskLoss, TaskMetric
from edgeship.pipeline.cache import digest
from edgeship.pipeline.values import Calibrated
from edgeship.pipeline.verify import predict
from edgeship.quantize import calibrate as calibration
from edgeship.quantize.evaluate import logits
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.flows import flow_for
from edgeship.quantize.remake import Remake
from edgeship.recipe import Recipe
from edgeship.report.schema import QatHistory
from edgeship.targets import Flow, Target

SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class ConvertJob:
    """What converting a flow takes from the run, in a form a Ray task can take too."""

    recipe: Recipe
    metric: TaskMetric
    loss: TaskLoss | None
    targets: dict[Flow, list[Target]]  # each static flow's targets
    arm_only: bool  # every device is ARM64
    examples: tuple[torch.Tensor, ...]
    calibration: Dataset  # the calibration split
    calibration_inputs: tuple[np.ndarray, ...]  # the same, stacked
    test: Arrays  # what the converted model's reference answers are of
    qat: bool  # the flows' states are QAT's (fake-quant), not observers'
    remakes: bool  # with a cluster: each candidate says how a task makes it again (Remake)
    temporary: Callable[[], AbstractContextManager[Path]]  # a scratch folder, removed on leaving


@dataclass(frozen=True)
class Candidate:
    """A converted model a flow's targets can be made from."""

    flow: QuantFlow
    module: nn.Module | None  # int8; float with its weights where the runtime quantizes at export
    export: Exporter | None  # None: the target format's own exporter
    runtime_quantizer: dict | None  # what the runtime's own quantizer chose, for the report
    key: str  # stage-cache key of the artifacts made from it
    remake: Remake | None = None  # how a Ray task makes `module` again (an int8 GraphModule does not pickle)


def candidate(job: ConvertJob, flow: QuantFlow, prepared: nn.Module, key: str, *, float_model: nn.Module,
              qat: bool) -> Candidate:
    """`prepared` (prepared from `float_model`, for QAT or not) converted; for a flow whose
    targets' runtime quantizes at export, with that runtime's exporter, calibrated on as many
    samples as the PyTorch flows see (its choices depend on this machine's CPU and the devices',
    so they are part of the key)."""
    module = flow.convert(prepared)
    if not flow.quantizes_at_export:
        remake = Remake.of(flow, float_model, job.examples, prepared, qat=qat) if job.remakes else None
        return Candidate(flow, module, None, None, key, remake)
    (fmt,) = {t.format for t in job.targets[flow.flow]}
    samples = job.recipe.quantization.calibration_batches * job.recipe.data.batch_size
    export, chosen = spec_for(fmt).quantize_static(job.calibration_inputs, flow.settings, samples,
                                                   arm=job.arm_only)
    return Candidate(flow, module, export, chosen, digest(key, chosen))


def against_post_training(job: ConvertJob, float_model: nn.Module, c: Calibrated, qat: Candidate,
                          split: Arrays) -> tuple[Candidate, QatHistory]:
    """`qat` (the best QAT state, converted) when it beats the same flow's post-training model
    on `split` beyond noise, else the post-training model; the history says which shipped and
    why."""
    if qat.export is not None and c.qat_history.shipped_epoch == 0:
        # The calibrated state's weights are the float weights, and the runtime calibrates them
        # itself: the same artifact either way, nothing to score
        return qat, c.qat_history.model_copy(update={"shipped": "post-training"})
    ptq = post_training(job, float_model, c)
    outputs = {name: _outputs(job, cand, split) for name, cand in (("qat", qat), ("post-training", ptq))}
    verdict = compare(outputs["qat"], outputs["post-training"], split.labels, job.metric, job.loss)
    shipped = "qat" if qat_ships(verdict, job.metric) else "post-training"
    return (qat if shipped == "qat" else ptq), c.qat_history.model_copy(update={**verdict, "shipped": shipped})


def post_training(job: ConvertJob, float_model: nn.Module, c: Calibrated) -> Candidate:
    """The same flow's model from calibration alone, with its post-training observers."""
    q = job.recipe.quantization
    flow = flow_for(c.flow.flow, c.flow.settings)  # its own: a flow remembers what it captured
    prepared = calibration.calibrate(flow, float_model, job.examples, job.calibration,
                                     batches=q.calibration_batches, batch_size=job.recipe.data.batch_size,
                                     qat=False)
    return candidate(job, flow, prepared, digest(c.key, "post-training"), float_model=float_model, qat=False)


def qat_ships(verdict: dict, metric: TaskMetric) -> bool:
    """QAT's loss lower by the signed-rank test and on average, its metric no worse. The test
    alone is not enough: it weighs ranks, so many small gains outvote a few large losses, and
    QAT shipped with the higher mean loss (a ConvNeXt's onnx-int8: 0.1079 against 0.1070, p 2e-6,
    then 2 test images below calibration only)."""
    return (verdict["p_value"] < SIGNIFICANCE and verdict["qat_loss"] < verdict["post_training_loss"]
            and not metric.is_better(verdict["post_training_accuracy"], verdict["qat_accuracy"]))


def compare(qat: np.ndarray, post_training: np.ndarray, labels: np.ndarray, metric: TaskMetric,
            loss: TaskLoss) -> dict:
    """Both models' metric and mean task loss on one split, the samples only one answers right
    (classifiers), and the one-sided Wilcoxon signed-rank p that QAT's per-sample loss is the lower."""
    both = (("qat", qat), ("post_training", post_training))
    losses = {n: loss.per_sample(o, labels) for n, o in both}
    differ = losses["qat"] - losses["post_training"]
    p = 1.0 if not differ.any() else float(wilcoxon(differ, alternative="less").pvalue)
    verdict = {f"{n}_accuracy": metric.score(o, labels) for n, o in both} | \
        {f"{n}_loss": float(losses[n].mean()) for n, _ in both} | {"p_value": p}
    if metric.labels == "classes":
        right = {n: o.argmax(axis=1) == labels for n, o in both}
        verdict |= {"qat_only_right": int((right["qat"] & ~right["post_training"]).sum()),
                    "post_training_only_right": int((right["post_training"] & ~right["qat"]).sum())}
    return verdict


def _outputs(job: ConvertJob, cand: Candidate, split: Arrays) -> np.ndarray:
    """`cand`'s logits for each sample of `split`."""
    if cand.export is None:
        with cand.flow.engine():
            return logits(cand.module, split)
    target = job.targets[cand.flow.flow][0]
    with job.temporary() as tmp:
        made = export_atomically(cand.export, cand.module, job.examples, target, Path(tmp) / "artifact")
        np.savez(Path(tmp) / "inputs.npz", **split.npz_dict())
        answers = predict(made, target, Path(tmp) / "inputs.npz", Path(tmp), job.examples[0].shape[0])
    return answers
