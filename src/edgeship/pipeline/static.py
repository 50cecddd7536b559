"""Static quantization, once per flow for the targets quantized with calibration: calibrate →
[QAT fine-tune] → convert. A flow whose calibrated (and fine-tuned) state is in the stage cache
skips both; a flow that fails fails its targets, and the other flows go on. With a cluster, the
flows calibrate, then fine-tune, then convert at once, each in a Ray task (calibrate.py's
calibrated_state, qat_flow.py, convert_flow.py); the stage cache is written here."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from edgeship.cluster import TaskFailed
from edgeship.data import Arrays
from edgeship.factories import teacher_digest
from edgeship.pipeline.analyse import quant_settings
from edgeship.pipeline.cache import digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.convert_flow import converted, converted_task, system_scratch
from edgeship.pipeline.post_training import ConvertJob
from edgeship.pipeline.qat_flow import Elsewhere, QatJob, fine_tune_flow, qat_task, restored
from edgeship.pipeline.stages import StageNotes, describe, each
from edgeship.pipeline.values import Calibrated, Converted, FloatLayers, FloatModel, Loaded, Results
from edgeship.quantize import calibrate as calibration
from edgeship.quantize.distributed import finetune_distributed
from edgeship.quantize.distributed_ray import finetune_on_ray
from edgeship.quantize.float_layers import DYNAMIC_IN_STATIC, LEFT_FLOAT, layers_of, required_float_layers
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.flows import flow_for
from edgeship.recipe import QATSection
from edgeship.report.schema import QatHistory, QuantizationDetails
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
        keyed = each(((f, float_layers.per_flow.get(f, [])) for f in flows),
                     lambda flow, chosen: _keys(ctx, float_model, flow, chosen), _failed(ctx, "calibrate"))
        before = ctx.tasks.task_seconds if ctx.tasks else 0.0
        sent = _calibrations_sent(ctx, loaded, float_model, keyed.ok, notes)
        out = each(keyed.ok.items(),
                   lambda flow, keys: _calibrate(ctx, loaded, float_model, keys, notes, sent.get(flow)),
                   _failed(ctx, "calibrate"))
        out.failed.update(keyed.failed)
        if sent:
            notes.append(f"{ctx.tasks.task_seconds - before:.1f} task-seconds on the cluster")
        notes.cached = bool(out.ok) and not any(c.fresh for c in out.ok.values())
    return out


@dataclass(frozen=True)
class _Keys:
    """A flow's quantizer in this run and the stage-cache keys of its states."""

    flow: QuantFlow
    required: dict[str, str]  # layers the flow cannot make int8, and why
    key: str  # its final state: calibrated, and fine-tuned when QAT runs
    start: str  # its calibrated state: `key` without QAT, else QAT's starting point


def _keys(ctx: RunContext, float_model: FloatModel, flow: Flow, chosen: list[str]) -> _Keys:
    """With QAT, the calibrated state's key leaves QAT's own settings out: a run killed during
    QAT, or one with other QAT settings, starts from it instead of calibrating again."""
    recipe, q = ctx.recipe, ctx.recipe.quantization
    required = required_float_layers(float_model.module, flow)
    qf = flow_for(flow, quant_settings(ctx).and_float({*chosen, *required}))
    float_layers = sorted(qf.settings.float_layers)
    # "best-state": QAT ships its best-scoring epoch; "probe-furthest": the probe's choice rule
    # (states cached before either are not reused)
    key = digest("quantize", float_model.key, flow, float_layers, q, recipe.data.batch_size, recipe.seed,
                 "best-state", "probe-furthest", _QCONFIG, *_teacher_key(recipe))
    start = key if not ctx.plan.qat else digest(
        "calibrated", float_model.key, flow, float_layers, q.model_dump(mode="json", exclude={"qat"}),
        recipe.data.batch_size, recipe.seed, _QCONFIG)
    return _Keys(qf, required, key, start)


def _calibrate(ctx: RunContext, loaded: Loaded, float_model: FloatModel, keys: _Keys, notes: StageNotes,
               task=None) -> Calibrated:
    """`task`: the Ray task calibrating this flow, if one does."""
    qf, examples = keys.flow, loaded.examples
    captured = qf.capture(float_model.module, examples, qat=ctx.plan.qat)
    required = {**keys.required, **qf.untraceable}
    prepared = restored(qf, captured, examples, ctx.cache.load_state("quantize", keys.key), qat=ctx.plan.qat)
    if prepared is None:
        prepared = _calibrated(ctx, loaded, float_model, keys, captured, notes, task)
        return Calibrated(qf, prepared, keys.key, True, required)
    notes.append(f"{qf.flow.value} reused")
    qat = ctx.cache.load_json("qat", keys.key) if ctx.plan.qat else None
    history = QatHistory.model_validate(qat["history"]) if qat and qat["history"] else None
    return Calibrated(qf, prepared, keys.key, False, required, qat["distributed"] if qat else None, history)


def _calibrated(ctx: RunContext, loaded: Loaded, float_model: FloatModel, keys: _Keys, captured: nn.Module,
                notes: StageNotes, task) -> nn.Module:
    """`captured` prepared and calibrated (here, or by its Ray `task`), cached as soon as
    calibration ends: without QAT the flow's final state, with QAT its starting point."""
    recipe, qat, qf = ctx.recipe, ctx.plan.qat, keys.flow
    if task is not None:
        # the task prepared the same graph: a state that does not fit is a bug, and torch says why
        prepared = qf.restore(captured, loaded.examples, _value(ctx.tasks.result(task)), qat=qat)
        notes.append(f"{qf.flow.value} calibrated in a Ray task")
    else:
        reused = restored(qf, captured, loaded.examples, ctx.cache.load_state("calibrated", keys.start),
                          qat=True) if qat else None
        if reused is not None:
            notes.append(f"{qf.flow.value} calibration reused")
            return reused
        prepared = calibration.calibrate(
            qf, float_model.module, loaded.examples, loaded.splits.calibration,
            batches=recipe.quantization.calibration_batches, batch_size=recipe.data.batch_size, qat=qat,
            progress=ctx.progress, captured=captured)
    ctx.cache.store_state("calibrated" if qat else "quantize", keys.start, prepared)
    return prepared


def _value(done: object):
    """A Ray task's value; the TaskFailed it ended with is raised (its flow fails)."""
    if isinstance(done, TaskFailed):
        raise done
    return done


def _calibrations_sent(ctx: RunContext, loaded: Loaded, float_model: FloatModel, keyed: dict[Flow, _Keys],
                       notes: StageNotes) -> dict:
    """With a cluster, each flow without a calibrated state in the stage cache calibrates in a
    Ray task, all at once: {flow: its task}. The driver loads each task's state into its own
    capture, as it loads the stage cache's."""
    missing = [f for f, k in keyed.items() if not ctx.cache.has_state("quantize", k.key)
               and not (ctx.plan.qat and ctx.cache.has_state("calibrated", k.start))]
    if ctx.tasks is None or not missing:
        return {}
    q, batch_size = ctx.recipe.quantization, ctx.recipe.data.batch_size
    shared = ctx.tasks.put((float_model.module, loaded.examples, loaded.splits.calibration))
    sent = ctx.tasks.submit_each(calibration.calibrated_state, {
        flow: (keyed[flow].flow, shared, q.calibration_batches, batch_size, ctx.plan.qat, ctx.tasks.forwarded())
        for flow in missing}, describe) if shared is not None else {}
    notes.append(f"{len(sent)} of {len(missing)} flows calibrated as Ray tasks")
    return sent


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
            before = ctx.tasks.task_seconds if ctx.tasks else 0.0
            sent = _sent_to_cluster(ctx, loaded, float_model, calibrated, split, notes)
            tuned = each(calibrated.ok.items(),
                         lambda flow, c: (_finetune(ctx, loaded, float_model, c, split(), notes, sent.get(flow))
                                          if c.fresh else c),
                         _failed(ctx, "qat"))
            if sent:
                notes.append(f"{ctx.tasks.task_seconds - before:.1f} task-seconds on the cluster")
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
              split: tuple[str, Arrays], notes: StageNotes, task=None) -> Calibrated:
    """Trains `c.prepared` in place (or takes what its Ray `task` trained) and leaves its
    best-scoring state in it."""
    if task is not None:
        done = _value(ctx.tasks.result(task))
        c.prepared.load_state_dict(done["state"])
        c.flow.set_eval(c.prepared)
        notes.extend([*done["notes"], f"{c.flow.flow.value} fine-tuned in a Ray task"])
        return dataclasses.replace(c, qat_history=done["history"])
    history, run = fine_tune_flow(c.flow, c.prepared, _job(ctx, loaded, float_model, split), ctx.progress,
                                  notes, _elsewhere(ctx, loaded, float_model, c))
    return dataclasses.replace(c, qat_distributed=run, qat_history=history)


def _job(ctx: RunContext, loaded: Loaded, float_model: FloatModel, split: tuple[str, Arrays]) -> QatJob:
    return QatJob(ctx.recipe, loaded.splits.train, split, ctx.metric, ctx.loss,
                  loaded.qat_teacher or float_model.module)


def _elsewhere(ctx: RunContext, loaded: Loaded, float_model: FloatModel, c: Calibrated) -> Elsewhere | None:
    """With `qat.distributed`: QAT on its own workers (torchrun or Ray Train), given the resolved
    QAT section."""
    recipe = ctx.recipe
    if recipe.quantization.qat.distributed is None:
        return None

    def train(qat: QATSection) -> dict:
        with_qat = recipe.quantization.model_copy(update={"qat": qat})
        with ctx.folder.temporary() as scratch:
            run = finetune_on_ray if qat.distributed.engine == "ray" else finetune_distributed
            return run(c.flow, c.prepared, float_model.module, loaded.examples,
                       recipe.model_copy(update={"quantization": with_qat}), scratch, log=ctx.progress.log)
    return train


def _sent_to_cluster(ctx: RunContext, loaded: Loaded, float_model: FloatModel, calibrated: Results[Flow, Calibrated],
                     split: Callable[[], tuple[str, Arrays]], notes: StageNotes) -> dict:
    """With a cluster, each flow that trains in this process otherwise fine-tunes in a Ray task,
    all at once (distributed QAT has its own workers): {flow: its task}."""
    fresh = {f: c for f, c in calibrated.ok.items() if c.fresh}
    if ctx.tasks is None or ctx.recipe.quantization.qat.distributed is not None or not fresh:
        return {}
    job = ctx.tasks.put(_job(ctx, loaded, float_model, split()))
    sent = ctx.tasks.submit_each(qat_task, {
        flow: (c.flow, float_model.module, loaded.examples, c.prepared.state_dict(), job, ctx.tasks.forwarded())
        for flow, c in fresh.items()}, describe) if job is not None else {}
    notes.append(f"{len(sent)} of {len(fresh)} flows fine-tuned as Ray tasks")
    return sent


def convert(ctx: RunContext, loaded: Loaded, float_model: FloatModel,
            tuned: Results[Flow, Calibrated]) -> Results[Flow, Converted]:
    if not ctx.plan.static_flows:
        return Results()
    split = functools.cache(lambda: _scoring_split(loaded)[1])
    job = _convert_job(ctx, loaded)
    with ctx.log.stage("convert") as notes:
        before = ctx.tasks.task_seconds if ctx.tasks else 0.0
        sent = _conversions_sent(ctx, job, float_model, tuned, split, notes)
        out = each(tuned.ok.items(),
                   lambda flow, c: _convert(ctx, job, float_model, c, split, notes, sent.get(flow)),
                   _failed(ctx, "convert"))
        if sent:
            notes.append(f"{ctx.tasks.task_seconds - before:.1f} task-seconds on the cluster")
    return out


def _convert_job(ctx: RunContext, loaded: Loaded) -> ConvertJob:
    plan = ctx.plan
    return ConvertJob(ctx.recipe, ctx.metric, ctx.loss, {f: plan.targets_of(f) for f in plan.static_flows},
                      plan.arm_only, loaded.examples, loaded.splits.calibration,
                      loaded.arrays["calibration"].inputs, loaded.test, plan.qat, ctx.tasks is not None,
                      ctx.folder.temporary)


def _conversions_sent(ctx: RunContext, job: ConvertJob, float_model: FloatModel, tuned: Results[Flow, Calibrated],
                      split: Callable[[], Arrays], notes: StageNotes) -> dict:
    """With a cluster, each flow converts in a Ray task, all at once: {flow: its task}."""
    if ctx.tasks is None or not tuned.ok:
        return {}
    scored = any(c.qat_history is not None for c in tuned.ok.values())
    shared = ctx.tasks.put((dataclasses.replace(job, temporary=system_scratch), float_model.module,
                            split() if scored else None))
    sent = ctx.tasks.submit_each(converted_task, {
        flow: (shared, c.flow, c.prepared.state_dict(), c.key, c.qat_history)
        for flow, c in tuned.ok.items()}, describe) if shared is not None else {}
    notes.append(f"{len(sent)} of {len(tuned.ok)} flows converted as Ray tasks")
    return sent


def _teacher_key(recipe) -> list[str]:
    """The QAT teacher's weights, for the cache key of what QAT makes; nothing without one."""
    distillation = recipe.quantization.qat.distillation
    found = teacher_digest(recipe, distillation.teacher) if distillation is not None else None
    return [found] if found else []


def _unchosen(table: dict, float_model: FloatModel, c: Calibrated) -> dict[str, str]:
    """The layers `table` lists for the flow, but those the run chose to leave float."""
    return {name: why for name, why in layers_of(table, float_model.module, c.flow.flow).items()
            if name not in c.flow.settings.float_layers}


def _convert(ctx: RunContext, job: ConvertJob, float_model: FloatModel, c: Calibrated,
             split: Callable[[], Arrays], notes: StageNotes, task=None) -> Converted:
    """`task`: the Ray task converting this flow, if one does."""
    q, name = ctx.recipe.quantization, c.flow.flow.value
    done = _value(ctx.tasks.result(task)) if task is not None else converted(job, float_model.module, c, split)
    shipped, history = done.shipped, done.history
    if history is not None and history.post_training_accuracy is not None:
        notes.append(f"{name} QAT {history.qat_accuracy:.4f} vs calibration only "
                     f"{history.post_training_accuracy:.4f} converted (loss Wilcoxon p = "
                     f"{history.p_value:.3g}): {history.shipped} ships")
    qat_shipped = ctx.plan.qat and (history is None or history.shipped == "qat")
    details = QuantizationDetails(
        mode="static", qat=ctx.plan.qat, per_channel=q.per_channel,
        observer="fake-quant" if qat_shipped else (q.observer or "histogram"),
        float_layers=sorted(c.flow.settings.float_layers),
        float_layers_required={**c.required_float_layers, **_unchosen(LEFT_FLOAT, float_model, c)},
        float_layers_recipe=sorted(q.float_layers) or None,
        dynamic_layers=_unchosen(DYNAMIC_IN_STATIC, float_model, c) or None,
        float_for_masks=None if c.flow.quantizes_at_export else c.flow.float_for_masks or None,
        qat_distributed=c.qat_distributed if ctx.plan.qat else None, qat_history=history,
        runtime_quantizer=shipped.runtime_quantizer)
    what = "float with its weights" if shipped.export else "int8"
    score = ctx.metric.said(ctx.metric.score(done.reference, job.test.labels))
    notes.append(f"{name} {score} in PyTorch ({what})" + (" (Ray task)" if task is not None else ""))
    return Converted(shipped.module, done.reference, shipped.key, details, shipped.export, shipped.remake)
