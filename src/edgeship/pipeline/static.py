"""Static quantization, once per flow for the targets quantized with calibration: calibrate →
[QAT fine-tune] → convert. A flow whose calibrated (and fine-tuned) state is in the stage cache
skips both; a flow that fails fails its targets, and the other flows go on."""

from __future__ import annotations

import dataclasses
import functools
import math
import time

from torch import nn

from edgeship.data import Arrays
from edgeship.pipeline.analyse import quant_settings
from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.post_training import against_post_training, candidate
from edgeship.pipeline.stages import StageNotes, each
from edgeship.pipeline.values import Calibrated, Converted, FloatLayers, FloatModel, Loaded, Results
from edgeship.factories import teacher_digest
from edgeship.quantize import calibrate as calibration
from edgeship.quantize.best_state import BestState, Scorer
from edgeship.quantize.distributed import finetune_distributed
from edgeship.quantize.distributed_ray import finetune_on_ray
from edgeship.quantize.evaluate import logits
from edgeship.quantize.float_layers import DYNAMIC_IN_STATIC, LEFT_FLOAT, layers_of, required_float_layers
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.flows import flow_for
from edgeship.quantize.qat import finetune as qat_finetune
from edgeship.quantize.qat_probe import run_probe
from edgeship.quantize.qat_settings import Chosen, choices, probe_needed, resolved
from edgeship.recipe import QATSection
from edgeship.report.analysis import qat_outcome
from edgeship.report.schema import QatEpoch, QatHistory, QatProbe, QuantizationDetails
from edgeship.targets import Flow


# What the flows' quantizer configurations make of a model, for the cache keys of its states (and
# of the artifacts made from them): LSTM and GRU dynamic int8 inside static FX models, FX's torch.nn
# leaves (attention) unobserved and their Linears dynamic int8 after conversion
_QCONFIG = "dynamic-rnn,float-leaves,dynamic-attention-linears"


def _failed(ctx: RunContext, stage: str):
    return lambda flow, why: {t.name: f"{stage} ({flow.value}): {why}" for t in ctx.plan.targets_of(flow)}


def calibrate(ctx: RunContext, loaded: Loaded, float_model: FloatModel,
              float_layers: FloatLayers) -> Results[Flow, Calibrated]:
    flows = ctx.plan.static_flows
    if not flows:
        ctx.log.skipped("calibrate", "no statically quantized int8 target")
        return Results()
    with ctx.log.stage("calibrate") as notes:
        out = each(((f, float_layers.per_flow.get(f, [])) for f in flows),
                   lambda flow, chosen: _calibrate(ctx, loaded, float_model, flow, chosen, notes),
                   _failed(ctx, "calibrate"))
        notes.cached = bool(out.ok) and not any(c.fresh for c in out.ok.values())
    return out


def _calibrate(ctx: RunContext, loaded: Loaded, float_model: FloatModel, flow: Flow,
               chosen: list[str], notes: StageNotes) -> Calibrated:
    recipe, q, model, examples = ctx.recipe, ctx.recipe.quantization, float_model.module, loaded.examples
    required = required_float_layers(model, flow)
    qf = flow_for(flow, quant_settings(ctx).with_float_layers({*chosen, *required}))
    # "best-state": QAT ships its best-scoring epoch; "probe-furthest": the probe's choice rule
    # (states cached before either are not reused)
    key = digest("quantize", float_model.key, flow, sorted(qf.settings.float_layers), q,
                 recipe.data.batch_size, recipe.seed, "best-state", "probe-furthest", _QCONFIG,
                 *_teacher_key(recipe))
    captured = qf.capture(model, examples, qat=ctx.plan.qat)
    state = ctx.cache.load_state("quantize", key)
    prepared = _restored(qf, captured, examples, state, qat=ctx.plan.qat)
    if prepared is None:
        prepared = _calibrated(ctx, loaded, float_model, qf, captured, key, notes)
        return Calibrated(qf, prepared, key, True, required)
    notes.append(f"{flow.value} reused")
    qat = ctx.cache.load_json("qat", key) if ctx.plan.qat else None
    history = QatHistory.model_validate(qat["history"]) if qat and qat["history"] else None
    return Calibrated(qf, prepared, key, False, required, qat["distributed"] if qat else None, history)


def _calibrated(ctx: RunContext, loaded: Loaded, float_model: FloatModel, qf: QuantFlow,
                captured: nn.Module, key: str, notes: StageNotes) -> nn.Module:
    """`captured` prepared and calibrated, cached as soon as calibration ends. Without QAT that is
    the flow's final state (under `key`). With QAT it is QAT's starting point, under a key without
    QAT's own settings: a run killed during QAT, or one with other QAT settings, starts from it
    instead of calibrating again."""
    recipe, qat = ctx.recipe, ctx.plan.qat
    start = key if not qat else digest(
        "calibrated", float_model.key, qf.flow, sorted(qf.settings.float_layers),
        recipe.quantization.model_dump(mode="json", exclude={"qat"}), recipe.data.batch_size, recipe.seed,
        _QCONFIG)
    restored = _restored(qf, captured, loaded.examples, ctx.cache.load_state("calibrated", start),
                         qat=True) if qat else None
    if restored is not None:
        notes.append(f"{qf.flow.value} calibration reused")
        return restored
    prepared = calibration.calibrate(
        qf, float_model.module, loaded.examples, loaded.splits.calibration,
        batches=recipe.quantization.calibration_batches, batch_size=recipe.data.batch_size, qat=qat,
        progress=ctx.progress, captured=captured)
    ctx.cache.store_state("calibrated" if qat else "quantize", start, prepared)
    return prepared


def _restored(qf: QuantFlow, captured: nn.Module, examples: tuple, state: dict | None, *,
              qat: bool) -> nn.Module | None:
    """A prepared graph holding a cached state, in eval form as calibration leaves it; None
    without a state, or for one another edgeship's quantizer configuration made (a miss)."""
    if state is None:
        return None
    prepared = qf.prepare_captured(captured, examples, qat=qat)
    try:
        prepared.load_state_dict(state)
    except RuntimeError:  # its observers differ from this configuration's: calibrate again
        return None
    qf.set_eval(prepared)
    return prepared


def finetune(ctx: RunContext, loaded: Loaded, float_model: FloatModel,
             calibrated: Results[Flow, Calibrated]) -> Results[Flow, Calibrated]:
    """QAT for the flows calibrated in this run, each keeping its best-scoring state; then every
    fresh state goes to the stage cache."""
    if not ctx.plan.static_flows:
        return Results(dict(calibrated.ok))
    if not ctx.plan.qat:
        ctx.log.skipped("qat", "quantization.qat.enabled = false: post-training quantization")
        tuned = Results(dict(calibrated.ok))
    else:
        split = functools.cache(lambda: _scoring_split(loaded))  # stacked once, if a flow trains
        with ctx.log.stage("qat") as notes:
            tuned = each(calibrated.ok.items(),
                         lambda flow, c: (_finetune(ctx, loaded, float_model, c, split(), notes)
                                          if c.fresh else c),
                         _failed(ctx, "qat"))
            notes.cached = bool(tuned.ok) and not any(c.fresh for c in tuned.ok.values())
    for c in (c for c in tuned.ok.values() if c.fresh and ctx.plan.qat):  # else: cached at calibration
        ctx.cache.store_state("quantize", c.key, c.prepared)
        ctx.cache.store_json("qat", c.key, {
            "distributed": c.qat_distributed,
            "history": c.qat_history.model_dump(mode="json") if c.qat_history else None})
    return tuned


def _scoring_split(loaded: Loaded) -> tuple[str, Arrays]:
    """What QAT is scored on: the data factory's validation split, else the calibration split;
    never the train split it fine-tunes on, never the test split the artifacts answer."""
    if loaded.splits.validation is not None:
        return "validation", loaded.arrays["validation"]
    return "calibration", loaded.arrays["calibration"]


def _finetune(ctx: RunContext, loaded: Loaded, float_model: FloatModel, c: Calibrated,
              split: tuple[str, Arrays], notes: StageNotes) -> Calibrated:
    """Trains `c.prepared` in place and leaves its best-scoring state in it."""
    recipe, name = ctx.recipe, c.flow.flow.value
    # QAT's seconds: everything here but the probe's own (it leaves out the fine-tune's costs
    # it pays first: the epoch-0 score and the switch into training form)
    run, started = None, time.perf_counter()
    scorer = Scorer(c.flow, c.prepared, split[1], ctx.metric, ctx.loss)
    calibrated = scorer(c.prepared)  # QAT's epoch 0 and the probe's baseline: scored once
    qat, chosen, probe = _settings(ctx, loaded, float_model, c, scorer, calibrated[1], notes)
    tracker = BestState(c.flow, c.prepared, split[1], scorer)
    tracker.score(0, accuracy=calibrated[0])  # the probe restored the calibrated state
    if qat.distributed is None:
        loss = qat_finetune(c.flow, c.prepared, loaded.splits.train, qat=qat,
                            batch_size=recipe.data.batch_size, seed=recipe.seed,
                            teacher=loaded.qat_teacher or float_model.module, progress=ctx.progress,
                            on_epoch_end=tracker.score, task_loss=ctx.loss)
        notes.append(f"{name} loss {loss:.4f}")
    else:  # the workers train; the parent scores what they give back against calibration
        with_qat = recipe.quantization.model_copy(update={"qat": qat})
        with ctx.folder.temporary() as scratch:
            train = finetune_on_ray if qat.distributed.engine == "ray" else finetune_distributed
            run = train(c.flow, c.prepared, float_model.module, loaded.examples,
                        recipe.model_copy(update={"quantization": with_qat}), scratch, log=ctx.progress.log)
        tracker.score(qat.epochs, run["loss"])
        ranks = f"{run['processes']} Ray workers" if qat.distributed.engine == "ray" else f"{run['processes']} processes"
        notes.append(f"{name} loss {run['loss']:.4f} on {ranks} ({run['backend']})")
    seconds, shipped = time.perf_counter() - started - (probe.seconds if probe else 0.0), tracker.restore()
    history = QatHistory(split=split[0], shipped_epoch=shipped.epoch,
                         epochs=[QatEpoch(**dataclasses.asdict(s)) for s in tracker.history],
                         settings={k: dataclasses.asdict(v) for k, v in chosen.items()},
                         probe=probe, train_seconds=round(seconds, 2))
    notes.append(f"{name} {qat_outcome(history, ctx.metric.info)}")
    return dataclasses.replace(c, qat_distributed=run, qat_history=history)


def _settings(ctx: RunContext, loaded: Loaded, float_model: FloatModel, c: Calibrated, scorer: Scorer,
              calibrated_loss: float, notes: StageNotes) -> tuple[QATSection, dict[str, Chosen], QatProbe | None]:
    """QAT's knobs: the recipe's, the probe's learning rate (and optimizer) when the recipe
    leaves the rate out, and defaults for the rest."""
    qat, probe, probed = ctx.recipe.quantization.qat, None, None
    if probe_needed(qat):
        found = run_probe(c.flow, c.prepared, loaded.splits.train, scorer, qat=qat,
                          batch_size=ctx.recipe.data.batch_size, seed=ctx.recipe.seed,
                          teacher=loaded.qat_teacher or float_model.module, calibrated_loss=calibrated_loss)
        probe = QatProbe(steps=found.steps, seconds=round(found.seconds, 2),
                         calibrated_loss=found.calibrated_loss,
                         trials=[{k: None if isinstance(v, float) and not math.isfinite(v) else v  # diverged
                                  for k, v in dataclasses.asdict(t).items()} for t in found.trials])
        probed = (found.chosen.optimizer, found.chosen.lr)
        notes.append(f"{c.flow.flow.value} probe chose {probed[0]} lr {probed[1]:g} in {found.seconds:.1f} s")
    chosen = choices(qat, probed)
    return resolved(qat, chosen), chosen, probe


def convert(ctx: RunContext, loaded: Loaded, float_model: FloatModel,
            tuned: Results[Flow, Calibrated]) -> Results[Flow, Converted]:
    if not ctx.plan.static_flows:
        return Results()
    split = functools.cache(lambda: _scoring_split(loaded))
    with ctx.log.stage("convert") as notes:
        return each(tuned.ok.items(), lambda flow, c: _convert(ctx, loaded, float_model, c, split, notes),
                    _failed(ctx, "convert"))


def _teacher_key(recipe) -> list[str]:
    """The QAT teacher's weights, for the cache key of what QAT makes; nothing without one."""
    distillation = recipe.quantization.qat.distillation
    found = teacher_digest(recipe, distillation.teacher) if distillation is not None else None
    return [found] if found else []


def _unchosen(table: dict, float_model: FloatModel, c: Calibrated) -> dict[str, str]:
    """The layers `table` lists for the flow, but those the run chose to leave float."""
    return {name: why for name, why in layers_of(table, float_model.module, c.flow.flow).items()
            if name not in c.flow.settings.float_layers}


def _convert(ctx: RunContext, loaded: Loaded, float_model: FloatModel, c: Calibrated,
             split, notes: StageNotes) -> Converted:
    q, name = ctx.recipe.quantization, c.flow.flow.value
    shipped, history = candidate(ctx, loaded, c.flow, c.prepared, c.key), c.qat_history
    if history is not None:  # QAT ran: it ships only if it beats calibration alone, converted
        shipped, history = against_post_training(ctx, loaded, float_model, c, shipped, split()[1])
        if history.post_training_accuracy is not None:
            notes.append(f"{name} QAT {history.qat_accuracy:.4f} vs calibration only "
                         f"{history.post_training_accuracy:.4f} converted (loss Wilcoxon p = "
                         f"{history.p_value:.3g}): {history.shipped} ships")
    qat_shipped = ctx.plan.qat and (history is None or history.shipped == "qat")
    with shipped.flow.engine():
        reference = logits(shipped.module, loaded.test)
    details = QuantizationDetails(
        mode="static", qat=ctx.plan.qat, per_channel=q.per_channel,
        observer="fake-quant" if qat_shipped else (q.observer or "histogram"),
        float_layers=sorted(c.flow.settings.float_layers),
        float_layers_required={**c.required_float_layers, **_unchosen(LEFT_FLOAT, float_model, c)},
        dynamic_layers=_unchosen(DYNAMIC_IN_STATIC, float_model, c) or None,
        qat_distributed=c.qat_distributed if ctx.plan.qat else None, qat_history=history,
        runtime_quantizer=shipped.runtime_quantizer)
    what = "float with its weights" if shipped.export else "int8"
    notes.append(f"{name} {ctx.metric.said(ctx.metric.score(reference, loaded.test.labels))} in PyTorch ({what})")
    return Converted(shipped.module, reference, shipped.key, details, shipped.export)
