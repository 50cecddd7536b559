"""The pipeline: load → float eval → [prune] → [sensitivity] → calibrate → [QAT] → convert →
export → verify → benchmark → gate → report. Each stage is timed; a target or flow that fails is
recorded and the others go on; bad input stops the run before any work with one line per
problem. Stages reuse the stage cache in the run folder (cache.py) unless --no-cache."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeship import __version__
from edgeship.data import Arrays, Splits, stack
from edgeship.devices.profile import BenchmarkDefaults, DeviceProfile, load_profile
from edgeship.environment import environment
from edgeship.errors import UserError
from edgeship.exporters import onnx as onnx_exporter
from edgeship.exporters.base import ExportedArtifact, export_atomically, exporter_for
from edgeship.fileio import sha256_file
from edgeship.gate.budgets import checks, evaluate, exit_code
from edgeship.pipeline import dynamic
from edgeship.pipeline.benchmark import benchmark_all
from edgeship.pipeline.cache import StageCache, digest, tensors_digest
from edgeship.pipeline.distributed_qat import backend_for
from edgeship.pipeline.evaluate import logits, top1
from edgeship.pipeline.load import check_fit, example_inputs, fill_examples, load_data, load_model
from edgeship.pipeline.model_stages import ModelStages, describe
from edgeship.pipeline.op_support import unsupported_layers
from edgeship.pipeline.runfolder import RunFolder
from edgeship.pipeline.stages import StageLog
from edgeship.pipeline.training import TrainingDiverged, train
from edgeship.pipeline.verify import VerificationFailed, verify
from edgeship.progress import Progress
from edgeship.recipe import Recipe
from edgeship.report.html import write_html
from edgeship.report.junit import write_junit
from edgeship.report.recommend import recommend
from edgeship.report.schema import Artifact, FloatResult, Parity, Report
from edgeship.report.writers import append_step_summary, twin_benchmark, write_json, write_markdown
from edgeship.targets import Flow, Target, get_target, with_twins


def _device_facts(profile: DeviceProfile, settings: BenchmarkDefaults) -> dict:
    facts = profile.model_dump(mode="json", exclude={"benchmark"})
    facts["benchmark"] = settings.model_dump(mode="json")
    if profile.arch == "auto":
        host = environment()["host"]
        facts.update(arch=host["arch"], cores=host["cores"], memory_mb=host["memory_mb"], cpu=host["cpu"])
    return facts


class Pipeline(ModelStages):
    """One run of one recipe into one run folder."""

    def __init__(self, recipe: Recipe, out: Path, *, force: bool, progress: Progress,
                 baseline: Report | None = None, use_cache: bool = True) -> None:
        self.recipe = recipe
        self.baseline = baseline  # an earlier report the max_regression budgets compare with
        if baseline is not None and baseline.recipe_name != recipe.name:
            raise UserError(f"the baseline report does not match this recipe: it is a report of "
                            f"recipe {baseline.recipe_name!r}, this recipe is {recipe.name!r}")
        self.progress = progress
        # Everything a user can get wrong is checked before any work starts.
        names = recipe.targets
        self.targets = with_twins(names) if recipe.fp32_twins else [get_target(n) for n in names]
        self.devices = [(p, p.benchmark.overridden(recipe.benchmark))
                        for p in (load_profile(d, recipe.base_dir) for d in recipe.devices)]
        self.folder = RunFolder(out, force=force, recipe_sha256=recipe.sha256())
        if self.folder.resumed:
            progress.log(f"resuming the earlier run of this recipe in {out}")
        self.cache = StageCache(self.folder.root, read=use_cache)
        self.log = StageLog(progress)
        env = environment()
        self.report = Report(edgeship_version=__version__, recipe_name=recipe.name,
                             recipe_sha256=recipe.sha256(), environment=env,
                             devices=[_device_facts(p, s) for p, s in self.devices],
                             budgets=[b.model_dump(mode="json", exclude_none=True) for b in recipe.budgets])
        # What every cache key starts from: the versions of everything that makes artifacts.
        self.env_key = digest(__version__, {k: v for k, v in env.items() if k != "host"})
        self.records = {t.name: Artifact(target=t.name, format=t.format.value, engine=t.engine,
                                         precision=t.precision.value,
                                         flow=t.flow.value if t.flow else None, status="ok")
                        for t in self.targets}
        self.exported: dict[str, ExportedArtifact] = {}
        self.quantization: dict[str, dict] = {}  # per int8 target: how it was quantized
        # per target: the PyTorch model it is exported from (None: quantized after export), and
        # the reference its runtime's answers are compared with; and the cache key of that model
        self.sources: dict[str, tuple[nn.Module | None, str, np.ndarray]] = {}
        self.source_keys: dict[str, str] = {}
        self.fresh: set[Flow] = set()  # flows calibrated in this run, not taken from the cache
        self.distributed_runs: dict[Flow, dict] = {}  # flows fine-tuned under torchrun: how

    def fail(self, target: Target, why: str) -> None:
        record = self.records[target.name]
        if record.status == "ok":
            record.status, record.error = "failed", why

    def run(self) -> Report:
        started = time.perf_counter()
        model, splits, examples = self.load()
        self.model = model
        test = stack(splits.test)
        self.test_key = tensors_digest(list(test.inputs) + [test.labels])
        with self.log.stage("evaluate-float") as notes:
            float_logits = logits(model, test)
            self.report.float.accuracy = top1(float_logits, test.labels)
            notes.append(f"top-1 {self.report.float.accuracy:.4f} on {len(test)} test samples")
        if self.recipe.prune is not None:
            self.prune(model, splits, test)
        float_layers = self.analyse(model, splits, examples)
        self.quantize(model, splits, examples, test, float_layers)
        self.quantize_dynamic(model, examples, test, float_logits)
        for t in self.targets:
            if not t.is_int8:
                self.sources[t.name] = (model, "float model", float_logits)
                self.source_keys[t.name] = self.float_key
        self.export(examples)
        with tempfile.TemporaryDirectory(prefix="edgeship-") as tmp:
            self.verify(Path(tmp), test, batch_size=examples[0].shape[0])
            self.benchmark(Path(tmp), examples)
        with self.log.stage("gate") as notes:
            self.report.artifacts = list(self.records.values())
            self.report.gate = evaluate(list(self.recipe.budgets), self.report, self.baseline)
            self.report.recommendations = recommend(list(self.recipe.budgets), self.report, self.baseline)
            notes.append(f"{len(self.report.gate.violations)} violations")
        with self.log.stage("report"):
            self.report.exit_code = exit_code(self.report)
            self.report.wall_seconds = time.perf_counter() - started
        self.report.stages = self.log.stages
        self.write_reports()
        return self.report

    def load(self) -> tuple[nn.Module, Splits, tuple]:
        recipe = self.recipe
        with self.log.stage("load") as notes:
            model = load_model(recipe)
            splits = load_data(recipe)
            examples = example_inputs(recipe)
            check_fit(model, examples, splits)
            # Before any training: what a target cannot do with this model is said now.
            dynamic.check_quantizable(model, self.dynamic_targets())
            check_runnable(model, self.targets)
            if recipe.quantization.qat.enabled and recipe.quantization.qat.distributed:
                backend_for(recipe.quantization.qat.distributed)
            examples = fill_examples(examples, splits)
            data = [stack(getattr(splits, name)) for name in ("train", "calibration", "test")]
            self.float_key = digest("float", self.env_key, recipe.model, recipe.data, recipe.seed,
                                    tensors_digest(model.state_dict()),
                                    tensors_digest([a for d in data for a in (*d.inputs, d.labels)]))
            loss = None
            if recipe.model.train:
                state = self.cache.load_state("float", self.float_key)
                if state is not None:
                    model.load_state_dict(state)
                    notes.cached = True
                else:
                    torch.manual_seed(recipe.seed)
                    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.model.train.lr)
                    try:
                        loss = train(model, splits.train, optimizer=optimizer,
                                     epochs=recipe.model.train.epochs, batch_size=recipe.data.batch_size,
                                     seed=recipe.seed, progress=self.progress, label="train float model",
                                     schedule=recipe.model.train.schedule)
                    except TrainingDiverged as e:  # nothing to ship: say which key to change
                        raise UserError(f"model.train: {e}") from None
                    self.cache.store_state("float", self.float_key, model)
                    notes.append(f"trained {recipe.model.train.epochs} epochs, loss {loss:.4f}")
            model.eval()
            self.report.float = FloatResult(accuracy=float("nan"), train_loss=loss)
            notes.append(f"{len(splits.train)} train / {len(splits.calibration)} calibration / "
                         f"{len(splits.test)} test samples")
        return model, splits, examples

    def export(self, examples: tuple) -> None:
        dest = self.folder.root / "artifacts"
        examples_key = tensors_digest(list(examples))
        with self.log.stage("export") as notes:
            reused = 0
            for t in self.targets:
                if self.records[t.name].status != "ok":
                    continue
                key = digest("export", self.env_key, self.source_keys[t.name], t.name, examples_key)
                cached, files = self.cache.load_json("export", key), self.cache.load_files("export-files", key)
                if cached is not None and files is not None:
                    exporter, module = _copier(files, cached), None
                    reused += 1
                else:
                    module, _, _ = self.sources[t.name]
                    exporter = exporter_for(t.format)
                    if module is None:  # dynamic ONNX: ONNX Runtime quantizes the float export
                        module, exporter = self.model, onnx_exporter.export_dynamic
                try:
                    made = export_atomically(exporter, module, examples, t, dest)
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - this target fails, the others go on
                    self.fail(t, f"export: {describe(e)}")
                    continue
                if cached is None or files is None:
                    self.cache.store_files("export-files", key, list(made.files))
                    self.cache.store_json("export", key, {"path": made.path.name, "details": made.details})
                self.folder.record(*made.files)
                self.exported[t.name] = made
                record = self.records[t.name]
                record.path = self.folder.relative(made.path)
                record.files = [self.folder.relative(f) for f in made.files]
                record.sha256 = sha256_file(made.path)
                record.size_bytes = made.size_bytes
                record.details = dict(made.details)
                if t.is_int8:
                    record.details["quantization"] = self.quantization[t.name]
                notes.append(f"{t.name} {made.size_bytes / 1e6:.3f} MB")
            notes.cached = reused > 0 and reused == len(self.exported)

    def verify(self, tmp: Path, test: Arrays, batch_size: int) -> None:
        inputs = tmp / "test-inputs.npz"
        np.savez(inputs, **test.npz_dict())
        with self.log.stage("verify") as notes, \
                self.progress.task("verify in each runtime", total=len(self.exported)) as advance:
            reused = 0
            for name, made in self.exported.items():
                target, record = get_target(name), self.records[name]
                key = digest("verify", self.env_key, record.sha256, self.source_keys[name], self.test_key)
                found = self.cache.load_json("verify", key)
                if found is not None:
                    record.accuracy, record.parity = found["accuracy"], Parity(**found["parity"])
                    reused += 1
                else:
                    _, reference_name, reference = self.sources[name]
                    try:
                        record.accuracy, record.parity = verify(made, target, inputs, test.labels, reference,
                                                                reference_name, tmp, batch_size)
                    except VerificationFailed as e:
                        self.fail(target, f"verify: {e}")
                        advance()
                        continue
                    self.cache.store_json("verify", key, {"accuracy": record.accuracy,
                                                          "parity": record.parity.model_dump()})
                notes.append(f"{name} {record.accuracy:.4f}")
                advance()
            notes.cached = reused > 0 and reused == len(self.exported)

    def benchmark(self, tmp: Path, examples: tuple) -> None:
        ready = [(get_target(n), made) for n, made in self.exported.items()
                 if self.records[n].status == "ok"]
        if not ready:
            self.log.skipped("benchmark", "no artifact passed verification")
            return
        inputs = tmp / "bench-inputs.npz"
        np.savez(inputs, **{f"input_{i}": x.numpy() for i, x in enumerate(examples)})
        with self.log.stage("benchmark") as notes:
            key_base = digest(self.env_key, tensors_digest(list(examples)))
            by_device = benchmark_all(self.devices, ready, inputs, self.progress, self.cache, key_base)
            reused = sum(b.cached for results in by_device.values() for b in results.values())
            total = sum(len(results) for results in by_device.values())
            notes.cached = 0 < reused == total
        for device_results in by_device.values():
            for name, bench in device_results.items():
                self.records[name].benchmarks.append(bench)
        attach_fp32_ratios(self.records)

    def write_reports(self) -> None:
        root = self.folder.root
        write_json(self.report, root / "report.json")
        write_markdown(self.report, root / "report.md")
        budgets = list(self.recipe.budgets)
        write_junit(self.report, list(checks(budgets, self.report, self.baseline)), root / "junit.xml")
        write_html(self.report, budgets, root / "report.html")
        self.folder.record(root / "report.json", root / "report.md", root / "junit.xml", root / "report.html")
        append_step_summary(self.report)


def attach_fp32_ratios(records: dict[str, Artifact]) -> None:
    """Sets each int8 benchmark's `vs_fp32`: its latency p50 and peak RSS over those of its fp32
    twin on the same device (> 1: int8 is slower or bigger). None where either was not measured."""
    artifacts = list(records.values())
    for record in artifacts:
        for bench in record.benchmarks:
            base = twin_benchmark(artifacts, record, bench)
            if base is None or not (bench.latency_ms and base.latency_ms and base.latency_ms.p50):
                continue
            rss = bench.peak_rss_mb / base.peak_rss_mb if bench.peak_rss_mb and base.peak_rss_mb else None
            bench.vs_fp32 = {"latency_p50_ratio": bench.latency_ms.p50 / base.latency_ms.p50,
                             "peak_rss_ratio": rss}


def check_runnable(model: nn.Module, targets: list[Target]) -> None:
    """A target whose runtime cannot run a layer of the model, in any precision, is bad input."""
    problems = []
    for t in targets:
        for name, reason in unsupported_layers(model, t).items():
            kind = type(dict(model.named_modules())[name]).__name__
            problems.append(f"target {t.name} cannot run layer {name!r} ({kind}): {reason}; "
                            f"remove {t.name} from targets")
    if problems:
        raise UserError("\n".join(problems))


def _copier(files: list[Path], cached: dict):
    """An exporter that copies a cached artifact instead of making it again."""
    def copy(module, examples, target, workdir: Path) -> ExportedArtifact:
        copies = tuple(Path(shutil.copy2(f, workdir / f.name)) for f in files)
        return ExportedArtifact(workdir / cached["path"], copies, cached["details"])
    return copy


def run_recipe(recipe: Recipe, out: Path, *, force: bool = False, progress: Progress | None = None,
               baseline: Report | None = None, use_cache: bool = True) -> Report:
    return Pipeline(recipe, Path(out), force=force, progress=progress or Progress(),
                    baseline=baseline, use_cache=use_cache).run()
