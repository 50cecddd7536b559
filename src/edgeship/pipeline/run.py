"""The pipeline: load → float eval → calibrate → [QAT] → convert → export → verify → benchmark →
gate → report. Each stage is timed; a target or flow that fails is recorded and the others go on;
bad input stops the run before any work with one line per problem."""

from __future__ import annotations

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
from edgeship.errors import ExitCode, UserError
from edgeship.exporters.base import ExportedArtifact, export_atomically, exporter_for
from edgeship.fileio import sha256_file
from edgeship.gate.budgets import evaluate
from edgeship.pipeline.evaluate import logits, top1
from edgeship.pipeline.flows import flow_for
from edgeship.pipeline.load import check_fit, example_inputs, fill_examples, load_data, load_model
from edgeship.pipeline.benchmark import benchmark_all
from edgeship.pipeline.quantize import calibrate, finetune
from edgeship.pipeline.runfolder import RunFolder
from edgeship.pipeline.stages import StageLog
from edgeship.pipeline.training import train
from edgeship.pipeline.verify import VerificationFailed, verify
from edgeship.progress import Progress
from edgeship.recipe import Recipe
from edgeship.report.schema import Artifact, FloatResult, Report
from edgeship.report.writers import write_json, write_markdown
from edgeship.targets import Flow, Target, get_target, with_twins


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

    def __init__(self, recipe: Recipe, out: Path, *, force: bool, progress: Progress) -> None:
        self.recipe = recipe
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
                             devices=[_device_facts(p, s) for p, s in self.devices])
        self.records = {t.name: Artifact(target=t.name, format=t.format.value, engine=t.engine,
                                         precision=t.precision.value,
                                         flow=t.flow.value if t.flow else None, status="ok")
                        for t in self.targets}
        self.exported: dict[str, ExportedArtifact] = {}
        self.converted: dict[Flow, nn.Module] = {}

    def fail(self, target: Target, why: str) -> None:
        record = self.records[target.name]
        if record.status == "ok":
            record.status, record.error = "failed", why

    def run(self) -> Report:
        started = time.perf_counter()
        model, splits, examples = self.load()
        test = stack(splits.test)
        with self.log.stage("evaluate-float") as notes:
            float_logits = logits(model, test)
            self.report.float.accuracy = top1(float_logits, test.labels)
            notes.append(f"top-1 {self.report.float.accuracy:.4f} on {len(test)} test samples")
        references = self.quantize(model, splits, examples, test)
        references[None] = ("float model", float_logits)
        self.export(model, references, examples)
        with tempfile.TemporaryDirectory(prefix="edgeship-") as tmp:
            self.verify(Path(tmp), test, references, batch_size=examples[0].shape[0])
            self.benchmark(Path(tmp), examples)
        with self.log.stage("gate") as notes:
            self.report.artifacts = list(self.records.values())
            self.report.gate = evaluate(list(self.recipe.budgets), self.report)
            notes.append(f"{len(self.report.gate.violations)} violations")
        with self.log.stage("report"):
            self.report.exit_code = self.exit_code()
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

    def quantize(self, model: nn.Module, splits: Splits, examples: tuple,
                 test: Arrays) -> dict[Flow | None, tuple[str, np.ndarray]]:
        """Calibrate, fine-tune and convert once per flow; returns each flow's reference logits."""
        recipe, q = self.recipe, self.recipe.quantization
        flows = list(dict.fromkeys(t.flow for t in self.targets if t.is_int8))
        quant_flows = {f: flow_for(f) for f in flows}
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
            self.log.skipped("calibrate", "no int8 target")
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
                                        progress=self.progress)
                        notes.append(f"{f.value} loss {loss:.4f}")
                    guarded("qat", f, work)
        elif flows:
            self.log.skipped("qat", "quantization.qat.enabled = false: post-training quantization")
        references: dict[Flow | None, tuple[str, np.ndarray]] = {}
        if flows:
            with self.log.stage("convert") as notes:
                for f in list(prepared):
                    def work(f=f):
                        qf = quant_flows[f]
                        self.converted[f] = qf.convert(prepared[f])
                        with qf.engine():
                            ref = logits(self.converted[f], test)
                        references[f] = (f"converted PyTorch model ({f.value})", ref)
                        notes.append(f"{f.value} top-1 {top1(ref, test.labels):.4f} in PyTorch")
                    guarded("convert", f, work)
        return references

    def export(self, model: nn.Module, references: dict, examples: tuple) -> None:
        dest = self.folder.root / "artifacts"
        with self.log.stage("export") as notes:
            for t in self.targets:
                if self.records[t.name].status != "ok":
                    continue
                module = self.converted[t.flow] if t.is_int8 else model
                try:
                    made = export_atomically(exporter_for(t.format), module, examples, t, dest)
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
                notes.append(f"{t.name} {made.size_bytes / 1e6:.3f} MB")

    def verify(self, tmp: Path, test: Arrays, references: dict, batch_size: int) -> None:
        inputs = tmp / "test-inputs.npz"
        np.savez(inputs, **test.npz_dict())
        with self.log.stage("verify") as notes, \
                self.progress.task("verify in each runtime", total=len(self.exported)) as advance:
            for name, made in self.exported.items():
                target = get_target(name)
                reference_name, reference = references[target.flow]
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

    def exit_code(self) -> int:
        broken = any(a.status != "ok" or any(b.status not in ("ok", "skipped") for b in a.benchmarks)
                     for a in self.report.artifacts)
        if broken:
            return ExitCode.DEVICE_FAILURE
        return ExitCode.PASSED if self.report.gate.passed else ExitCode.BUDGET_FAILED

    def write_reports(self) -> None:
        root = self.folder.root
        write_json(self.report, root / "report.json")
        write_markdown(self.report, root / "report.md")
        self.folder.record(root / "report.json", root / "report.md")


def run_recipe(recipe: Recipe, out: Path, *, force: bool = False,
               progress: Progress | None = None) -> Report:
    return Pipeline(recipe, Path(out), force=force, progress=progress or Progress()).run()
