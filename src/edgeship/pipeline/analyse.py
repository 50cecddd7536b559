"""Sensitivity stage: per-layer accuracy cost and accuracy-aware fallback, per static flow,
measured with post-training int8 on the calibration split. Decides which layers stay float."""

from __future__ import annotations

from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.values import FloatLayers, FloatModel, Loaded
from edgeship.quantize.fallback import fallback
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.sensitivity import PtqProbe, sensitivity
from edgeship.report.schema import FallbackResult, SensitivityResult
from edgeship.targets import Flow


def quant_settings(ctx: RunContext) -> QuantSettings:
    q = ctx.recipe.quantization
    return QuantSettings(observer=q.observer, per_channel=q.per_channel, float_layers=frozenset(q.float_layers))


def analyse(ctx: RunContext, loaded: Loaded, float_model: FloatModel) -> FloatLayers:
    flows = ctx.plan.static_flows
    if not ctx.plan.analyse or not flows:
        return FloatLayers()
    key = digest("analyse", float_model.key, ctx.recipe.quantization, flows, ctx.recipe.data.batch_size)
    with ctx.log.stage("sensitivity") as notes:
        found = ctx.cache.load_json("analyse", key)
        notes.cached = found is not None
        if found is None:
            found = _analyse(ctx, loaded, float_model, flows)
            ctx.cache.store_json("analyse", key, found)
        layers = FloatLayers(
            per_flow={Flow(r["flow"]): r["float_layers"] for r in found["fallback"]},
            sensitivity=[SensitivityResult.model_validate(s) for s in found["sensitivity"]],
            fallback=[FallbackResult.model_validate(f) for f in found["fallback"]])
        for result in layers.fallback:
            met = "met" if result.met else "NOT met, best kept"
            notes.append(f"{result.flow}: float {result.float_layers or 'none'}, drop "
                         f"{result.drop_points:.4g} {ctx.metric.info.short_unit} ({met})")
    return layers


def _analyse(ctx: RunContext, loaded: Loaded, float_model: FloatModel, flows: list[Flow]) -> dict:
    q, settings = ctx.recipe.quantization, quant_settings(ctx)
    calibration = loaded.splits.calibration
    probe = PtqProbe(float_model.module, loaded.examples, calibration, loaded.arrays["calibration"],
                     q.calibration_batches, ctx.recipe.data.batch_size, ctx.metric)
    float_accuracy = probe.float_accuracy()
    found: dict = {"sensitivity": [], "fallback": []}
    for flow in flows:
        rows = sensitivity(probe, flow, settings, float_accuracy)
        found["sensitivity"].append({"flow": flow.value, "split": "calibration",
                                     "float_accuracy": float_accuracy, "rows": rows})
        if q.fallback is not None:
            found["fallback"].append(fallback(
                probe, flow, settings, float_accuracy, [r["layer"] for r in rows],
                q.fallback.max_accuracy_drop, q.fallback.max_float_layers))
    return found
