"""QAT against calibration alone, after conversion. QAT calibrates its starting point with
fake-quant observers (a moving-average min/max), not the post-training observers (a histogram for
the PyTorch flows, ONNX Runtime's own calibration for onnx-int8), and its scores are of fake
quantization. So when QAT is on, each flow's best QAT state and its post-training twin are both
converted and scored on the same held-out split: in PyTorch for a flow that converts to int8
there, in the artifact's own runtime for a flow whose runtime quantizes at export. The better one
ships; a tie ships the post-training model, the simpler of the two. (Where the runtime quantizes
at export and fine-tuning did not beat calibration, the two are the same artifact.)"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import nn

from edgeship.data import Arrays, stack
from edgeship.formats import Exporter, export_atomically, spec_for
from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.values import Calibrated, FloatModel, Loaded
from edgeship.pipeline.verify import predict
from edgeship.quantize import calibrate as calibration
from edgeship.quantize.evaluate import logits, top1
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.flows import flow_for
from edgeship.report.schema import QatHistory


@dataclass(frozen=True)
class Candidate:
    """A converted model a flow's targets can be made from."""

    flow: QuantFlow
    module: nn.Module  # int8; float with its weights where the runtime quantizes at export
    export: Exporter | None  # None: the target format's own exporter
    runtime_quantizer: dict | None  # what the runtime's own quantizer chose, for the report
    key: str  # stage-cache key of the artifacts made from it


def candidate(ctx: RunContext, loaded: Loaded, flow: QuantFlow, prepared: nn.Module, key: str) -> Candidate:
    """`prepared` converted; for a flow whose targets' runtime quantizes at export, with that
    runtime's exporter, calibrated on as many samples as the PyTorch flows see (its choices
    depend on this machine's CPU, so they are part of the key)."""
    module = flow.convert(prepared)
    if not flow.quantizes_at_export:
        return Candidate(flow, module, None, None, key)
    (fmt,) = {t.format for t in ctx.plan.targets_of(flow.flow)}
    samples = ctx.recipe.quantization.calibration_batches * ctx.recipe.data.batch_size
    export, chosen = spec_for(fmt).quantize_static(stack(loaded.splits.calibration).inputs, flow.settings,
                                                   samples)
    return Candidate(flow, module, export, chosen, digest(key, chosen))


def against_post_training(ctx: RunContext, loaded: Loaded, float_model: FloatModel, c: Calibrated,
                          qat: Candidate, split: Arrays) -> tuple[Candidate, QatHistory]:
    """The better of `qat` (the best QAT state, converted) and the same flow's post-training
    model, both scored on `split`; the history says which shipped and both scores."""
    q, recipe = ctx.recipe.quantization, ctx.recipe
    if qat.export is not None and c.qat_history.shipped_epoch == 0:
        # The calibrated state's weights are the float weights, and the runtime calibrates them
        # itself: the same artifact either way, nothing to score
        return qat, c.qat_history.model_copy(update={"shipped": "post-training"})
    flow = flow_for(c.flow.flow, c.flow.settings)  # its own: a flow remembers what it captured
    prepared = calibration.calibrate(flow, float_model.module, loaded.examples, loaded.splits.calibration,
                                     batches=q.calibration_batches, batch_size=recipe.data.batch_size,
                                     qat=False)
    ptq = candidate(ctx, loaded, flow, prepared, digest(c.key, "post-training"))
    scores = {name: _score(ctx, loaded, cand, split) for name, cand in (("qat", qat), ("post-training", ptq))}
    shipped = "qat" if scores["qat"] > scores["post-training"] else "post-training"
    history = c.qat_history.model_copy(update={"qat_accuracy": scores["qat"], "shipped": shipped,
                                               "post_training_accuracy": scores["post-training"]})
    return (qat if shipped == "qat" else ptq), history


def _score(ctx: RunContext, loaded: Loaded, cand: Candidate, split: Arrays) -> float:
    if cand.export is None:
        with cand.flow.engine():
            return top1(logits(cand.module, split), split.labels)
    target = ctx.plan.targets_of(cand.flow.flow)[0]
    with tempfile.TemporaryDirectory(prefix="edgeship-score-") as tmp:
        made = export_atomically(cand.export, cand.module, loaded.examples, target, Path(tmp) / "artifact")
        np.savez(Path(tmp) / "inputs.npz", **split.npz_dict())
        answers = predict(made, target, Path(tmp) / "inputs.npz", Path(tmp), loaded.examples[0].shape[0])
    return top1(answers, split.labels)
