"""Dynamic quantization stage: each dynamically quantized target's model, made the way its
format's spec says (FormatSpec.quantize_dynamic)."""

from __future__ import annotations

from edgeship.formats import spec_for
from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.stages import StageNotes, each
from edgeship.pipeline.values import FloatModel, Loaded, Results, Source
from edgeship.quantize.evaluate import logits
from edgeship.report.schema import QuantizationDetails
from edgeship.targets import Target


def quantize_dynamic(ctx: RunContext, loaded: Loaded, float_model: FloatModel) -> Results[str, Source]:
    if not ctx.plan.dynamic:
        return Results()
    with ctx.log.stage("quantize-dynamic") as notes:
        return each(((t.name, t) for t in ctx.plan.dynamic),
                    lambda name, t: _source(ctx, loaded, float_model, t, notes),
                    lambda name, why: {name: f"quantize-dynamic: {why}"})


def _source(ctx: RunContext, loaded: Loaded, float_model: FloatModel, target: Target,
            notes: StageNotes) -> Source:
    spec = spec_for(target.format)
    kept = frozenset(ctx.recipe.quantization.float_layers)
    made = spec.quantize_dynamic(target, float_model.module, loaded.examples, kept)
    if made.module is float_model.module:  # quantized after export: it answers as the float model
        reference = float_model.logits
    else:
        with spec.running(target):
            # at the artifact's batch: activation ranges come from the whole batch (evaluate.reference_logits)
            reference = logits(made.module, loaded.test, loaded.examples[0].shape[0])
        notes.append(f"{target.name} {ctx.metric.said(ctx.metric.score(reference, loaded.test.labels))} in PyTorch")
    return Source(made.module, made.export, made.reference, reference,
                  digest("dynamic", float_model.key, target.name, spec.dynamic_per_channel, spec.dynamic_layers,
                         sorted(kept)),
                  QuantizationDetails(mode="dynamic", qat=False, per_channel=spec.dynamic_per_channel,
                                      layers=spec.dynamic_layers, float_layers_recipe=sorted(kept) or None),
                  int8_reference=made.module is not float_model.module)
