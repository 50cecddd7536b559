"""`edgeship bench MODEL --device NAME`: a model file made by anything, measured on a device by
the same runner and transports as the pipeline's artifacts, once per input shape (batch sweep),
with budgets from the command line. Exit codes as everywhere: 1 a budget failed, 2 bad input, 3
the runtime failed on the file or the device could not run it."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from edgeship.devices.profile import BenchmarkSettings, DeviceProfile
from edgeship.devices.transports import RunnerCall, RunnerFailed, transport_for
from edgeship.environment import environment
from edgeship.errors import ExitCode, UserError
from edgeship.fileio import sha256_file, write_atomic
from edgeship.formats.model_file import InputSpec, ModelFile, random_inputs
from edgeship.gate.file_budgets import BENCHMARK_LIMITS
from edgeship.pipeline.benchmark import measured
from edgeship.report.junit import model_bench_junit
from edgeship.report.samples import samples_name, take_samples
from edgeship.report.schema import Benchmark, Gate, ModelBenchReport, ModelRun, Violation
from edgeship.version import __version__

def user_inputs(path: Path, model: ModelFile) -> list[np.ndarray]:
    """Arrays from an .npz: by the model's input names where they match, else in file order."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError) as e:
        raise UserError(f"--inputs {path}: not an .npz numpy can read ({e})") from None
    names = [i.name for i in model.inputs or []]
    if names and set(names) <= set(arrays):
        return [arrays[n] for n in names]
    if not arrays:
        raise UserError(f"--inputs {path}: holds no arrays")
    return list(arrays.values())


def input_sets(model: ModelFile, given: list[list[InputSpec]], batch_sizes: list[int]
               ) -> list[list[InputSpec]]:
    """The sets to measure: each --input set (else the file's own inputs), once per batch size."""
    sets = given or ([model.inputs] if model.inputs else [])
    if not sets:
        raise UserError(f"{model.path}: cannot tell its inputs ({model.why_no_inputs}); give them with "
                        f"--input NAME:1x3x224x224:float32 (once per input) or --inputs data.npz")
    if batch_sizes:
        sets = [[s.batched(b) for s in specs] for specs in sets for b in batch_sizes]
    return [specs for i, specs in enumerate(sets) if specs not in sets[:i]]  # each set measured once


def _skip_reason(profile: DeviceProfile, model: ModelFile) -> str | None:
    if model.format not in profile.runtimes:
        return (f"device {profile.name} has no {model.format.value} runtime (profile runtimes: "
                f"{', '.join(r.value for r in profile.runtimes)})")
    return None


def _npz(arrays: list[np.ndarray], folder: Path, index: int) -> Path:
    path = folder / f"inputs-{index}.npz"
    np.savez(path, **{f"input_{i}": a for i, a in enumerate(arrays)})
    return path


def run_model_bench(model: ModelFile, profile: DeviceProfile, settings: BenchmarkSettings,
                    arrays_sets: list[tuple[list[str], list[np.ndarray]]], workdir: Path,
                    engine: str | None) -> list[ModelRun]:
    """One benchmark per input set, on the device; a device without the runtime is skipped
    before anything is copied."""
    reason = _skip_reason(profile, model)
    if reason:
        return [ModelRun(inputs=shapes, benchmark=Benchmark(device=profile.name, status="skipped",
                                                            error=reason)) for shapes, _ in arrays_sets]
    transport, runs = transport_for(profile), []
    args = settings.runner_args() + (("--engine", engine) if engine else ())
    try:
        for index, (shapes, arrays) in enumerate(arrays_sets):
            call = RunnerCall("bench", model.path, model.files, _npz(arrays, workdir, index), args,
                              timeout_seconds=settings.timeout_seconds)
            try:
                bench = measured(profile.name, transport, call, settings)
            except RunnerFailed as e:
                bench = Benchmark(device=profile.name, status=e.status, error=str(e))
            runs.append(ModelRun(inputs=shapes, benchmark=bench))
    finally:
        transport.close()
    return runs


def gate(runs: list[ModelRun], limits: dict[str, float], size_bytes: int) -> Gate:
    """Every limit on every run (a run that measured nothing violates each), and the file's size."""
    violations = []
    if "max_size_mb" in limits and size_bytes / 1e6 > limits["max_size_mb"]:
        violations.append(Violation(
            budget=0, target="model", limit_name="max_size_mb", limit=limits["max_size_mb"],
            measured=size_bytes / 1e6,
            message=f"size MB {size_bytes / 1e6:.3f} > max_size_mb {limits['max_size_mb']:g}"))
    for run in runs:
        where = f"{run.benchmark.device} {' '.join(run.inputs)}"
        for name in (n for n in limits if n in BENCHMARK_LIMITS):
            what, read = BENCHMARK_LIMITS[name]
            value = read(run.benchmark) if run.benchmark.status == "ok" else None
            if value is None or value > limits[name]:
                shown = "not measured" if value is None else f"{value:.3f}"
                violations.append(Violation(budget=0, target="model", device=run.benchmark.device,
                                            limit_name=name, limit=limits[name], measured=value,
                                            message=f"{where}: {what} {shown} > {name} {limits[name]:g}"))
    return Gate(passed=not violations, violations=violations)


def exit_code(runs: list[ModelRun], verdict: Gate) -> int:
    if any(r.benchmark.status not in ("ok", "skipped") for r in runs):
        return ExitCode.DEVICE_FAILURE
    return ExitCode.PASSED if verdict.passed else ExitCode.BUDGET_FAILED


def make_report(model: ModelFile, inputs_from: str, device: str, runs: list[ModelRun],
                limits: dict[str, float], not_checked: list[str]) -> ModelBenchReport:
    verdict = gate(runs, limits, model.size_bytes)
    return ModelBenchReport(
        edgeship_version=__version__, model=str(model.path), format=model.format.value,
        sha256=sha256_file(model.path), size_bytes=model.size_bytes, inputs_from=inputs_from,
        device=device, environment=environment(), runs=runs, limits=limits, limits_not_checked=not_checked, gate=verdict,
        exit_code=exit_code(runs, verdict))


def write_report(report: ModelBenchReport, folder: Path, markdown: str, html: str) -> list[Path]:
    """report.json (the raw samples beside it in report.samples.npz), report.md, report.html
    and junit.xml, atomically."""
    stored = report.model_copy(deep=True)
    samples = take_samples((f"run{i}", run.benchmark) for i, run in enumerate(stored.runs))
    paths = [folder / "report.json", folder / "report.md", folder / "junit.xml", folder / "report.html"]
    if samples is not None:
        stored.samples_file = samples_name(paths[0].name)
        paths.append(folder / stored.samples_file)
        write_atomic(paths[-1], samples)
    write_atomic(paths[0], stored.model_dump_json(indent=2) + "\n")
    write_atomic(paths[1], markdown)
    write_atomic(paths[2], model_bench_junit(report))
    write_atomic(paths[3], html)
    return paths


def bench_model_file(model: ModelFile, profile: DeviceProfile, settings: BenchmarkSettings, *,
                     given: list[list[InputSpec]], inputs_npz: Path | None, batch_sizes: list[int],
                     engine: str | None, limits: dict[str, float],
                     not_checked: list[str] = ()) -> ModelBenchReport:
    """The whole command but its printing: inputs (from --inputs, --input or the file's metadata,
    random where not given), a benchmark per input set on the device, the budgets' verdict."""
    if inputs_npz is not None:
        arrays = user_inputs(inputs_npz, model)
        sets = [([f"{a.dtype.name}[{'x'.join(map(str, a.shape))}]" for a in arrays], arrays)]
        source = f"--inputs {inputs_npz}"
    else:
        sets = [([str(s) for s in specs], random_inputs(specs)) for specs in
                input_sets(model, given, batch_sizes)]
        source = "--input" if given else "the file's metadata"
    with tempfile.TemporaryDirectory(prefix="edgeship-bench-") as tmp:
        runs = run_model_bench(model, profile, settings, sets, Path(tmp), engine)
    return make_report(model, source, profile.name, runs, limits, list(not_checked))
