"""`edgeship bench`: any model file measured on a device (the runner and transports of `run`),
or a run's benchmarks converted to pytest-benchmark JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgeship.cli.common import Verbosity, app, stdout, verbosity
from edgeship.cli.common import opt as _opt
from edgeship.devices.profile import load_profile
from edgeship.errors import UserError
from edgeship.quiet import quiet_libraries_for_good
from edgeship.report.load import load_report
from edgeship.report.pytest_json import write_pytest_benchmark


def _LimitOption(name: str, what: str, unit: str):  # noqa: N802 - used as a type
    return Annotated[float | None, _opt(name, metavar=unit, help=f"Budget: exit 1 above this {what}.")]


P50Limit = _LimitOption("--max-latency-p50-ms", "p50", "MS")
P90Limit = _LimitOption("--max-latency-p90-ms", "p90", "MS")
RssLimit = _LimitOption("--max-peak-rss-mb", "peak RSS", "MB")


@app.command()
def bench(path: Annotated[Path, typer.Argument(
              metavar="MODEL|REPORT", help="A model file to measure on --device (.onnx with its "
              "external data, .pte, TorchScript .pt), made by anything; or a run's report.json to "
              "convert with --benchmark-json.")],
          benchmark_json: Annotated[Path | None, _opt("--benchmark-json", metavar="PATH", help=(
              "REPORT: write its benchmarks here in pytest-benchmark's JSON schema (read by "
              "`pytest-benchmark compare` and --benchmark-compare)."))] = None,
          save_data: Annotated[bool, _opt("--benchmark-save-data", help="With --benchmark-json: "
                                          "also write every raw sample (stats.data).")] = False,
          device: Annotated[str, _opt("--device", help="MODEL: a device profile's name or .toml.")] = "local",
          inputs: Annotated[list[str] | None, _opt("--input", metavar="NAME:1x3x224x224:float32", help=(
              "MODEL: an input's shape and dtype, once per input, in order; a name given again "
              "starts another set (a shape sweep); default: the file's own metadata (ONNX, ExecuTorch).") )] = None,
          inputs_npz: Annotated[Path | None, _opt("--inputs", metavar="NPZ", help="MODEL: real inputs, "
                                "one array per input (by input name, else in order).")] = None,
          batch_sizes: Annotated[str | None, _opt("--batch-sizes", metavar="1,4,8", help="MODEL: measure "
                                 "once per batch size (the inputs' first dimension).")] = None,
          engine: Annotated[str | None, _opt("--engine", metavar="ENGINE", help=(
              "MODEL: torch quantized engine for a quantized TorchScript file (fbgemm, qnnpack)."))] = None,
          out: Annotated[Path, _opt("--out", "-o", help="MODEL: folder for the reports.")] = Path("edgeship-bench"),
          budgets: Annotated[Path | None, _opt("--budgets", metavar="TOML", help=(
              "MODEL: a recipe's budgets tables (or a TOML with only those): their size, latency "
              "and peak-RSS limits for this device and the file's format; exit 1 when broken."))] = None,
          max_latency_p50_ms: P50Limit = None, max_latency_p90_ms: P90Limit = None,
          max_peak_rss_mb: RssLimit = None,
          profile: Annotated[bool, _opt("--profile", help=(
              "MODEL: also time each op on the device, in a process of its own."))] = False) -> None:
    """Measure any model file on a device (the runner and transports of `run`), or export a run's
    benchmarks as pytest-benchmark JSON."""
    if path.suffix == ".json":
        _bench_json(path, benchmark_json, save_data)
        return
    if benchmark_json is not None:
        raise UserError(f"--benchmark-json converts a report.json; {path} is a model file")
    limits = {k: v for k, v in [("max_latency_p50_ms", max_latency_p50_ms), ("max_latency_p90_ms",
              max_latency_p90_ms), ("max_peak_rss_mb", max_peak_rss_mb)] if v is not None}
    _bench_model(path, device, inputs or [], inputs_npz, batch_sizes, engine, out, limits, budgets, profile)


def _bench_json(report_path: Path, benchmark_json: Path | None, save_data: bool) -> None:
    if benchmark_json is None:
        raise UserError(f"{report_path}: a report.json is converted with --benchmark-json PATH")
    count = write_pytest_benchmark(load_report(report_path), benchmark_json, with_data=save_data)
    stdout.print(f"wrote {count} benchmarks to {benchmark_json}", highlight=False, soft_wrap=True,
                 markup=False)


def _batch_sizes(text: str | None) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",")] if text else []
    except ValueError:
        sizes = [0]
    if any(s < 1 for s in sizes):
        raise UserError(f"--batch-sizes {text!r}: positive integers separated by commas, e.g. 1,4,8")
    return sizes


def _bench_model(path: Path, device: str, inputs: list[str], inputs_npz: Path | None,
                 batch_sizes: str | None, engine: str | None, out: Path, limits: dict,
                 budgets: Path | None, profile_ops: bool) -> None:
    from edgeship.formats.model_file import open_model_file, parse_input_sets
    from edgeship.pipeline.model_bench import bench_model_file, write_report
    from edgeship.report import model_bench_html, model_bench_view

    if engine not in (None, "fbgemm", "qnnpack"):
        raise UserError(f"--engine {engine!r}: fbgemm or qnnpack")
    given = parse_input_sets(inputs)
    sizes = _batch_sizes(batch_sizes)
    profile = load_profile(device)
    if verbosity() < Verbosity.DEBUG:  # before the ExecuTorch runtime reads a .pte's metadata (it loads torchao)
        quiet_libraries_for_good()
    model = open_model_file(path)
    limits, not_checked = _budget_limits(budgets, profile.name, model.format, limits)
    settings = profile.benchmark.model_copy(update={"profile": profile.benchmark.profile or profile_ops})
    report = bench_model_file(model, profile, settings, given=given, inputs_npz=inputs_npz,
                              batch_sizes=sizes, engine=engine, limits=limits,
                              not_checked=not_checked)
    out.mkdir(parents=True, exist_ok=True)
    written = write_report(report, out, model_bench_view.markdown(report), model_bench_html.html_page(report))
    model_bench_view.print_model_bench(report, stdout)
    stdout.print(f"reports: {' · '.join(map(str, written))}", highlight=False, markup=False)
    raise typer.Exit(report.exit_code)


def _budget_limits(path: Path | None, device: str, fmt, given: dict) -> tuple[dict, list[str]]:
    """--budgets' limits for this device and format, tightened by the command line's."""
    from edgeship.gate.file_budgets import file_limits, read_budgets, tightest

    if path is None:
        return given, []
    limits, not_checked = file_limits(read_budgets(path), device, fmt)
    return tightest(limits, given), not_checked

