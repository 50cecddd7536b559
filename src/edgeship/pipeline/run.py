"""The pipeline: load → float eval → calibrate → [QAT] → convert → export → verify → benchmark →
gate → report. Each stage is timed; a target or flow that fails is recorded and the others go on;
bad input stops the run before any work with one line per problem."""

from __future__ import annotations

import tempfile
import time
from contextlib import nullcontext
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
from edgeship.pipeline.evaluate import logits, top1
from edgeship.pipeline import dynamic
from edgeship.pipeline.flows import QuantSettings, flow_for, quantized_engine
from edgeship.pipeline.load import check_fit, example_inputs, fill_examples, load_data, load_model
from edgeship.pipeline.benchmark import benchmark_all
from edgeship.pipeline.prune import apply_masks, make_permanent, sparsity
from edgeship.pipeline.quantize import calibrate, finetune
from edgeship.pipeline.sensitivity import PtqProbe, fallback, sensitivity
from edgeship.pipeline.runfolder import RunFolder
from edgeship.pipeline.stages import StageLog
from edgeship.pipeline.training import train
from edgeship.pipeline.verify import VerificationFailed, verify
from edgeship.progress import Progress
from edgeship.recipe import Recipe
from edgeship.report.schema import Artifact, FloatResult, Report
from edgeship.report.html import write_html
from edgeship.report.junit import write_junit
from edgeship.report.recommend import recommend
from edgeship.report.writers import append_step_summary, write_json, write_markdown
from edgeship.targets import Flow, Format, Target, get_target, with_twins


def describe(e: BaseException, limit: int = 600) -> str:
    """The first lines of an exception: they name the op or the line that failed."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines()[:4] if line.strip())
    text = f"{type(e).__name__}: {text}"
    return text if len(text) <= limit else text[:limit] + "…"


def _device_facts(profile: DeviceProfile, settings: BenchmarkDefaults) -> dict:
    facts = profile.model_dump(mode="json", exclude={"benchmark"})
    facts["benchmark"] = settings.model_dump(mode="json")
    if profile.arch == "auto":
        host = environment()["host"]
        facts.update(arch=host["arch"], cores=host["cores"], memory_mb=host["memory_mb"], cpu=host["cpu"])
    return facts


class Pipeline:
    """One run of one recipe into one run folder."""

    def __init__(self, recipe: Recipe, out: Path, *, force: bool, progress: Progress,
                 baseline: Report | None = None) -> None:
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
        self.folder = RunFolder(out, force=force)
        self.log = StageLog(progress)
        self.report = Report(edgeship_version=__version__, recipe_name=recipe.name,
                             recipe_sha256=recipe.sha256(), environment=environment(),
                             devices=[_device_facts(p, s) for p, s in self.devices],
                             budgets=[b.model_dump(mode="json", exclude_none=True) for b in recipe.budgets])
        self.records = {t.name: Artifact(target=t.name, format=t.format.value, engine=t.engine,
                                         precision=t.precision.value,
                                         flow=t.flow.value if t.flow else None, status="ok")
                        for t in self.targets}
        self.exported: dict[str, ExportedArtifact] = {}
        self.quantization: dict[str, dict] = {}  # per int8 target: how it was quantized
        # per target: the PyTorch model it is exported from (None: quantized after export), and
        # the reference its runtime's answers are compared with
        self.sources: dict[str, tuple[nn.Module | None, str, np.ndarray]] = {}

    def fail(self, target: Target, why: str) -> None:
        record = self.records[target.name]
        if record.status == "ok":
            record.status, record.error = "failed", why

    def run(self) -> Report:
        started = time.perf_counter()
        model, splits, examples = self.load()
        self.model = model
        test = stack(splits.test)
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
            dynamic.check_quantizable(model, self.dynamic_targets())  # before any training
            examples = fill_examples(examples, splits)
            loss = None
            if recipe.model.train:
                torch.manual_seed(recipe.seed)
                optimizer = torch.optim.Adam(model.parameters(), lr=recipe.model.train.lr)
                loss = train(model, splits.train, optimizer=optimizer, epochs=recipe.model.train.epochs,
                             batch_size=recipe.data.batch_size, seed=recipe.seed,
                             progress=self.progress, label="train float model")
                notes.append(f"trained {recipe.model.train.epochs} epochs, loss {loss:.4f}")
            model.eval()
            self.report.float = FloatResult(accuracy=float("nan"), train_loss=loss)
            notes.append(f"{len(splits.train)} train / {len(splits.calibration)} calibration / "
                         f"{len(splits.test)} test samples")
        return model, splits, examples

    def settings(self) -> QuantSettings:
        q = self.recipe.quantization
        return QuantSettings(observer=q.observer, per_channel=q.per_channel)

    def int8_flows(self) -> list[Flow]:
        """The flows of the statically quantized targets: each is calibrated once."""
        return list(dict.fromkeys(t.flow for t in self.targets
                                  if t.is_int8 and self.recipe.mode(t.name) == "static"))

    def dynamic_targets(self) -> list[Target]:
        return [t for t in self.targets if t.is_int8 and self.recipe.mode(t.name) == "dynamic"]

    def prune(self, model: nn.Module, splits: Splits, test: Arrays) -> None:
        config, recipe = self.recipe.prune, self.recipe
        with self.log.stage("prune") as notes:
            names = apply_masks(model, config)
            pruned_accuracy = top1(logits(model, test), test.labels)
            if config.finetune_epochs:
                torch.manual_seed(recipe.seed)
                train(model, splits.train, optimizer=torch.optim.Adam(model.parameters(), lr=config.lr),
                      epochs=config.finetune_epochs, batch_size=recipe.data.batch_size, seed=recipe.seed,
                      progress=self.progress, label="fine-tune after pruning")
                model.eval()
            make_permanent(model, names)
            finetuned = top1(logits(model, test), test.labels)
            self.report.prune = {"method": config.method, "amount": config.amount,
                                 "sparsity": sparsity(model, names),
                                 "accuracy_before": self.report.float.accuracy,
                                 "accuracy_pruned": pruned_accuracy, "accuracy_finetuned": finetuned}
            # Everything after this stage compares with the pruned float model.
            self.report.float.accuracy = finetuned
            notes.append(f"sparsity {self.report.prune['sparsity']['overall']:.2f}, top-1 "
                         f"{pruned_accuracy:.4f} pruned, {finetuned:.4f} fine-tuned")

    def analyse(self, model: nn.Module, splits: Splits, examples: tuple) -> dict[Flow, list[str]]:
        """Sensitivity per layer and accuracy-aware fallback; returns the float layers per flow."""
        q = self.recipe.quantization
        if not (q.sensitivity or q.fallback) or not self.int8_flows():
            return {}
        probe = PtqProbe(model, examples, splits.calibration, stack(splits.calibration),
                         q.calibration_batches, self.recipe.data.batch_size)
        float_layers: dict[Flow, list[str]] = {}
        with self.log.stage("sensitivity") as notes:
            float_accuracy = probe.float_accuracy()
            for flow in self.int8_flows():
                rows = sensitivity(probe, flow, self.settings(), float_accuracy)
                self.report.sensitivity.append({"flow": flow.value, "split": "calibration",
                                                "float_accuracy": float_accuracy, "rows": rows})
                if q.fallback is None:
                    continue
                result = fallback(probe, flow, self.settings(), float_accuracy,
                                  [r["layer"] for r in rows], q.fallback.max_accuracy_drop,
                                  q.fallback.max_float_layers)
                self.report.fallback.append(result)
                float_layers[flow] = result["float_layers"]
                met = "met" if result["met"] else "NOT met, best kept"
                notes.append(f"{flow.value}: float {result['float_layers'] or 'none'}, drop "
                             f"{result['drop_points']:.2f} pts ({met})")
        return float_layers

    def quantize(self, model: nn.Module, splits: Splits, examples: tuple, test: Arrays,
                 float_layers: dict[Flow, list[str]]) -> None:
        """Calibrate, fine-tune and convert once per flow, for the statically quantized targets."""
        recipe, q = self.recipe, self.recipe.quantization
        flows = self.int8_flows()
        quant_flows = {f: flow_for(f, self.settings().with_float_layers(float_layers.get(f, ())))
                       for f in flows}
        prepared: dict[Flow, nn.Module] = {}

        def guarded(stage: str, flow: Flow, work) -> None:
            try:
                work()
            except UserError:
                raise
            except Exception as e:  # noqa: BLE001 - this flow fails, the others go on
                prepared.pop(flow, None)
                for t in self.targets:
                    if t.flow is flow:
                        self.fail(t, f"{stage} ({flow.value}): {describe(e)}")

        if not flows:
            self.log.skipped("calibrate", "no statically quantized int8 target")
        else:
            with self.log.stage("calibrate"):
                for f, qf in quant_flows.items():
                    def work(f=f, qf=qf):
                        prepared[f] = calibrate(qf, model, examples, splits.calibration,
                                                batches=q.calibration_batches,
                                                batch_size=recipe.data.batch_size, qat=q.qat.enabled,
                                                progress=self.progress)
                    guarded("calibrate", f, work)
        if flows and q.qat.enabled:
            with self.log.stage("qat") as notes:
                for f in list(prepared):
                    def work(f=f):
                        loss = finetune(quant_flows[f], prepared[f], splits.train, qat=q.qat,
                                        batch_size=recipe.data.batch_size, seed=recipe.seed,
                                        teacher=model, progress=self.progress)
                        notes.append(f"{f.value} loss {loss:.4f}")
                    guarded("qat", f, work)
        elif flows:
            self.log.skipped("qat", "quantization.qat.enabled = false: post-training quantization")
        if flows:
            with self.log.stage("convert") as notes:
                for f in list(prepared):
                    def work(f=f):
                        qf = quant_flows[f]
                        converted = qf.convert(prepared[f])
                        with qf.engine():
                            ref = logits(converted, test)
                        how = {"mode": "static", "qat": q.qat.enabled, "per_channel": q.per_channel,
                               "observer": "fake-quant" if q.qat.enabled else (q.observer or "histogram"),
                               "float_layers": sorted(qf.settings.float_layers)}
                        for t in self.targets:
                            if t.flow is f and self.recipe.mode(t.name) == "static":
                                self.sources[t.name] = (converted, f"converted PyTorch model ({f.value})", ref)
                                self.quantization[t.name] = how
                        notes.append(f"{f.value} top-1 {top1(ref, test.labels):.4f} in PyTorch")
                    guarded("convert", f, work)

    def quantize_dynamic(self, model: nn.Module, examples: tuple, test: Arrays,
                         float_logits: np.ndarray) -> None:
        targets = self.dynamic_targets()
        if not targets:
            return
        with self.log.stage("quantize-dynamic") as notes:
            for t in targets:
                try:
                    module = dynamic.quantize(t, model, examples)
                    if module is None:  # quantized by its runtime's toolchain after export
                        self.sources[t.name] = (None, "float model (quantized after export)", float_logits)
                    else:
                        with quantized_engine(t.engine) if t.format is Format.TORCHSCRIPT else nullcontext():
                            ref = logits(module, test)
                        self.sources[t.name] = (module, "dynamically quantized PyTorch model", ref)
                        notes.append(f"{t.name} top-1 {top1(ref, test.labels):.4f} in PyTorch")
                except UserError:
                    raise
                except Exception as e:  # noqa: BLE001 - this target fails, the others go on
                    self.fail(t, f"quantize-dynamic: {describe(e)}")
                    continue
                self.quantization[t.name] = {"mode": "dynamic", "qat": False,
                                             "per_channel": self.recipe.quantization.per_channel,
                                             "layers": dynamic.LAYERS[t.format]}

    def export(self, examples: tuple) -> None:
        dest = self.folder.root / "artifacts"
        with self.log.stage("export") as notes:
            for t in self.targets:
                if self.records[t.name].status != "ok":
                    continue
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
                self.folder.record(*made.files)
                self.exported[t.name] = made
                record = self.records[t.name]
                record.path = self.folder.relative(made.path)
                record.files = [self.folder.relative(f) for f in made.files]
                record.sha256 = sha256_file(made.path)
                record.size_bytes = made.size_bytes
                record.details = made.details
                if t.is_int8:
                    record.details["quantization"] = self.quantization[t.name]
                notes.append(f"{t.name} {made.size_bytes / 1e6:.3f} MB")

    def verify(self, tmp: Path, test: Arrays, batch_size: int) -> None:
        inputs = tmp / "test-inputs.npz"
        np.savez(inputs, **test.npz_dict())
        with self.log.stage("verify") as notes, \
                self.progress.task("verify in each runtime", total=len(self.exported)) as advance:
            for name, made in self.exported.items():
                target = get_target(name)
                _, reference_name, reference = self.sources[name]
                try:
                    accuracy, parity = verify(made, target, inputs, test.labels, reference,
                                              reference_name, tmp, batch_size)
                except VerificationFailed as e:
                    self.fail(target, f"verify: {e}")
                else:
                    self.records[name].accuracy, self.records[name].parity = accuracy, parity
                    notes.append(f"{name} {accuracy:.4f}")
                advance()

    def benchmark(self, tmp: Path, examples: tuple) -> None:
        ready = [(get_target(n), made) for n, made in self.exported.items()
                 if self.records[n].status == "ok"]
        if not ready:
            self.log.skipped("benchmark", "no artifact passed verification")
            return
        inputs = tmp / "bench-inputs.npz"
        np.savez(inputs, **{f"input_{i}": x.numpy() for i, x in enumerate(examples)})
        with self.log.stage("benchmark"):
            by_device = benchmark_all(self.devices, ready, inputs, self.progress)
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
    for name, record in records.items():
        twin = records.get(get_target(name).twin)
        if twin is None or twin is record:
            continue
        on_device = {b.device: b for b in twin.benchmarks}
        for bench in record.benchmarks:
            base = on_device.get(bench.device)
            if base is None or not (bench.latency_ms and base.latency_ms and base.latency_ms.p50):
                continue
            rss = bench.peak_rss_mb / base.peak_rss_mb if bench.peak_rss_mb and base.peak_rss_mb else None
            bench.vs_fp32 = {"latency_p50_ratio": bench.latency_ms.p50 / base.latency_ms.p50,
                             "peak_rss_ratio": rss}


def run_recipe(recipe: Recipe, out: Path, *, force: bool = False,
               progress: Progress | None = None, baseline: Report | None = None) -> Report:
    return Pipeline(recipe, Path(out), force=force, progress=progress or Progress(),
                    baseline=baseline).run()
