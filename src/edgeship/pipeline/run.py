"""One run of one recipe, top to bottom as the README draws it:

load → float eval → [prune] → [sensitivity] → calibrate → [QAT] → convert (→ or dynamic
quantization, per target) → export → verify → benchmark → gate → report.

Each stage is a function of typed values (values.py) that returns new ones; each is timed in the
report. The plan is checked before any work; a target or flow that fails is recorded and the
others go on; the stage cache in the run folder lets an unchanged recipe resume."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from edgeship.version import __version__
from edgeship.cluster import Tasks, connect
from edgeship.engines import attention_slow_path, torch_logs_into
from edgeship.environment import environment
from edgeship.errors import UserError
from edgeship.factories import USER_MODULE_PREFIX
from edgeship.gate.decide import decide
from edgeship.metrics import loss_of, metric_of
from edgeship.pipeline import assemble
from edgeship.pipeline.analyse import analyse
from edgeship.pipeline.benchmark import measure
from edgeship.pipeline.cache import StageCache, digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.dynamic import quantize_dynamic
from edgeship.pipeline.emulated import check_emulated, prepare_environment
from edgeship.pipeline.export import export
from edgeship.pipeline.float_model import batch_norms, evaluate_float, prune
from edgeship.pipeline.load import load
from edgeship.pipeline.plan import make_plan
from edgeship.pipeline.runfolder import RunFolder
from edgeship.pipeline.stages import StageLog
from edgeship.pipeline.static import calibrate, convert, finetune
from edgeship.pipeline.verify import verify_all
from edgeship.progress import Progress
from edgeship.recipe import Recipe
from edgeship.report.publish import publish
from edgeship.report.schema import FloatResult, Report
from edgeship.report.writers import append_step_summary


# torch's log output during a run (graph dumps of a failed capture), in the run folder
TORCH_LOG = "edgeship-torch.log"


def run_recipe(recipe: Recipe, out: Path, *, force: bool = False, progress: Progress | None = None,
               baseline: Report | None = None, use_cache: bool = True, setup_devices: bool = False) -> Report:
    """`setup_devices`: build what an emulated device in `devices` needs (once per machine) instead
    of stopping with the command that builds it."""
    with attention_slow_path(), contextlib.ExitStack() as stack:
        return _run(recipe, out, force, progress, baseline, use_cache, setup_devices, stack)


def _run(recipe: Recipe, out: Path, force: bool, progress: Progress | None, baseline: Report | None,
         use_cache: bool, setup_devices: bool, stack: contextlib.ExitStack) -> Report:
    started = time.perf_counter()
    ctx, env = _start(recipe, Path(out), force, progress or Progress(), baseline, use_cache, setup_devices)
    stack.enter_context(torch_logs_into(ctx.folder.root / TORCH_LOG))
    loaded = load(ctx)
    float_model = evaluate_float(ctx, loaded)
    if ctx.plan.prune:
        float_model = prune(ctx, loaded, float_model)
    float_layers = analyse(ctx, loaded, float_model)
    calibrated = calibrate(ctx, loaded, float_model, float_layers)
    tuned = finetune(ctx, loaded, float_model, calibrated)
    converted = convert(ctx, loaded, float_model, tuned)
    dynamic = quantize_dynamic(ctx, loaded, float_model)
    sources = assemble.sources(ctx.plan, float_model, converted.ok, dynamic.ok)
    exported = export(ctx, loaded.examples, sources)
    with ctx.folder.temporary() as tmp:  # in the run folder: the next run removes it if this one is killed
        verified = verify_all(ctx, Path(tmp), loaded.test, loaded.examples[0].shape[0], sources, exported.ok)
        answered = {n: e for n, e in exported.ok.items() if n in verified.ok}
        emulated = check_emulated(ctx, Path(tmp), loaded.test, loaded.examples[0].shape[0], sources, answered)
        measured = measure(ctx, Path(tmp), loaded.examples, answered)
    failed = {**calibrated.failed, **tuned.failed, **converted.failed, **dynamic.failed,
              **exported.failed, **verified.failed}
    records = {t.name: assemble.artifact(t, ctx.folder, failed, sources.get(t.name), exported.ok.get(t.name),
                                         verified.ok.get(t.name), measured.get(t.name, []))
               for t in ctx.plan.targets}
    for name, checks in emulated.items():
        records[name].emulated = checks
    assemble.attach_fp32_ratios(records)
    report = Report(edgeship_version=__version__, recipe_name=recipe.name, recipe_sha256=recipe.sha256(),
                    environment=env,
                    devices=[assemble.device_facts(d, env["host"]) for d in ctx.plan.devices],
                    float=FloatResult(accuracy=float_model.accuracy, train_loss=loaded.train_loss,
                                      warning=float_model.warning, batch_norms=batch_norms(float_model.module)),
                    metric=ctx.metric.info,
                    artifacts=list(records.values()), prune=float_model.prune,
                    sensitivity=float_layers.sensitivity, fallback=float_layers.fallback)
    return _gate_and_publish(ctx, report, baseline, started)


def _start(recipe: Recipe, out: Path, force: bool, progress: Progress, baseline: Report | None,
           use_cache: bool, setup_devices: bool) -> tuple[RunContext, dict]:
    """Everything a user can get wrong is checked before any work starts."""
    if baseline is not None and baseline.recipe_name != recipe.name:
        raise UserError(f"the baseline report does not match this recipe: it is a report of "
                        f"recipe {baseline.recipe_name!r}, this recipe is {recipe.name!r}")
    plan = make_plan(recipe)
    prepare_environment(plan, build=setup_devices, say=progress.log)
    tasks = _join_cluster(recipe, progress)
    folder = RunFolder(out, force=force, recipe_sha256=recipe.sha256())
    if folder.resumed:
        progress.log(f"resuming the earlier run of this recipe in {out}")
    progress.log(f"plan: {' → '.join(plan.stages)}")
    env = environment()
    env_key = digest(__version__, {k: v for k, v in env.items() if k != "host"})
    return RunContext(recipe, plan, folder, StageCache(folder.root, read=use_cache), StageLog(progress),
                      progress, env_key, metric_of(recipe.data, recipe.base_dir),
                      loss_of(recipe.data, recipe.base_dir), tasks), env


def _join_cluster(recipe: Recipe, progress: Progress) -> Tasks | None:
    """With [cluster] (or --cluster), the run joins it before any work: exports and verifications
    go there as Ray tasks, and QAT with engine = "ray" trains there."""
    if recipe.cluster is None:
        return None
    tasks = Tasks(connect(recipe.cluster.address, progress.log), by_value=USER_MODULE_PREFIX, progress=progress)
    progress.log("  QAT, export and verify run as Ray tasks on the cluster; the driver writes the run folder")
    return tasks


def _gate_and_publish(ctx: RunContext, report: Report, baseline: Report | None, started: float) -> Report:
    budgets = list(ctx.recipe.budgets)
    with ctx.log.stage("gate") as notes:
        decision = decide(budgets, report, baseline)
        report = decision.applied_to(report)
        notes.append(f"{len(report.gate.violations)} violations")
    with ctx.log.stage("report"):
        report.wall_seconds = time.perf_counter() - started
    report.stages = ctx.log.stages
    ctx.folder.record(*publish(report, decision.checks, budgets, ctx.folder.root, baseline=baseline))
    append_step_summary(report)
    return report
