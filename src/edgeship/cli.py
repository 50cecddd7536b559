"""The `edgeship` command. Exit codes: 0 passed, 1 a budget failed, 2 bad input,
3 a device or runtime failure, or a crash."""

from __future__ import annotations

import logging
import os
import platform
import signal
import sys
import tempfile
import time
import traceback
import warnings
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from edgeship.devices.profile import load_profile, shipped_profiles
from edgeship.errors import (RUN_FOLDER_NOTE, STAGE_NOTE, TARGET_NOTE, EdgeshipError, ExitCode,
                             Interrupted, UserError, noted)
from edgeship.fileio import write_atomic
from edgeship.gate.regate import regate
from edgeship.regression import parse as parse_regression
from edgeship.progress import Progress
from edgeship.recipe import load_recipe, parse_recipe_text
from edgeship.report import compare as diff
from edgeship.report import compare_view
from edgeship.report.console import print_console, print_verdict
from edgeship.report.load import load_report
from edgeship.report.pytest_json import write_pytest_benchmark
from edgeship.targets import TARGETS
from edgeship.version import __version__

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Ship a float PyTorch model as gated int8 artifacts.")
devices_app = typer.Typer(no_args_is_help=True, help="Device profiles: list, show, check.")
app.add_typer(devices_app, name="devices")

# CI logs are not terminals: rich would wrap the results table at 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 200)  # the results table: 14 columns
stderr = Console(stderr=True)

OutOption = Annotated[Path, typer.Option("--out", "-o", help="Run folder to write artifacts and reports to.")]
ForceOption = Annotated[bool, typer.Option("--force", help=(
    "Replace an earlier run in --out: deletes only the files edgeship wrote that are unchanged "
    "since; stops (exit 2) when a file edgeship did not write, or one changed since, lies where "
    "the run writes. Other files in --out are left alone."))]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]
NoCacheOption = Annotated[bool, typer.Option("--no-cache", help="Redo every stage; do not reuse "
                                             "the stage cache in --out (it is still refreshed).")]

DEMO_RECIPE = "digits_cnn.toml"


def demo_recipe_text() -> str:
    return (resources.files("edgeship.examples") / "recipes" / DEMO_RECIPE).read_text()


BaselineOption = Annotated[Path | None, typer.Option(
    "--baseline", help="report.json of an earlier run: the budgets' max_regression limits "
                       "(median:5%, size:2%, accuracy:-0.5 …) compare with it.")]


CRASH_LOG = "edgeship-crash.log"
# Set (to anything but "" or "0") to have a crash's traceback on stderr as well as in its log.
DEBUG_ENV = "EDGESHIP_DEBUG"


def _run(recipe, out: Path, force: bool, quiet: bool, baseline: Path | None = None,
         no_cache: bool = False) -> None:
    try:
        _run_and_print(recipe, out, force, quiet, baseline, no_cache)
    except Exception as e:
        if not isinstance(e, EdgeshipError):
            e.add_note(f"{RUN_FOLDER_NOTE}{out}")
        raise


def _run_and_print(recipe, out: Path, force: bool, quiet: bool, baseline: Path | None,
                   no_cache: bool) -> None:
    from edgeship.pipeline.run import run_recipe  # torch: loaded by the commands that need it

    old = load_report(baseline) if baseline else None
    quiet_third_party()
    report = run_recipe(recipe, out, force=force, progress=Progress(stderr, enabled=not quiet),
                        baseline=old, use_cache=not no_cache)
    print_console(report, stdout)
    stdout.print(f"reports: {out / 'report.json'} · {out / 'report.md'} · {out / 'junit.xml'} · "
                 f"{out / 'report.html'}", highlight=False, markup=False)
    raise typer.Exit(report.exit_code)


@app.command()
def run(recipe: Annotated[Path, typer.Argument(help="Recipe TOML file.")],
        out: OutOption = Path("edgeship-run"), force: ForceOption = False,
        quiet: QuietOption = False, baseline: BaselineOption = None,
        no_cache: NoCacheOption = False) -> None:
    """Run the pipeline a recipe describes: quantize, export, verify, benchmark, gate, report.
    Run again into the same --out, an unchanged recipe resumes from the stage cache."""
    _run(load_recipe(recipe), out, force, quiet, baseline, no_cache)


@app.command()
def gate(report_path: Annotated[Path, typer.Argument(metavar="REPORT", help="report.json of a run.")],
         baseline: BaselineOption = None,
         recipe: Annotated[Path | None, typer.Option(
             "--recipe", help="Take the budgets from this recipe instead of the report's own.")] = None,
         write: Annotated[bool, typer.Option(
             "--write", help="Rewrite REPORT and the report.md, junit.xml and report.html beside "
                             "it with the new verdict.")] = False) -> None:
    """Re-evaluate budgets on an existing report without re-running anything."""
    from edgeship.report.publish import publish  # matplotlib, for report.html

    report = load_report(report_path)
    old = load_report(baseline) if baseline else None
    result = regate(report, recipe, old)
    print_verdict(result.report, stdout, result.summary)
    if write:
        decision = result.decision
        from edgeship.pipeline.runfolder import note_rewritten

        written = publish(result.report, decision.checks, decision.budgets, report_path.parent,
                          json_name=report_path.name)
        note_rewritten(written)  # a run folder's marker keeps recognising its reports
        for path in written:
            stdout.print(f"wrote {path}", highlight=False, markup=False)
    raise typer.Exit(result.report.exit_code)


class CompareFormat(str, Enum):
    TEXT = "text"
    MD = "md"
    JSON = "json"


@app.command()
def compare(a: Annotated[Path, typer.Argument(metavar="A", help="report.json before.")],
            b: Annotated[Path, typer.Argument(metavar="B", help="report.json after.")],
            fail_on: Annotated[list[str] | None, typer.Option(
                "--fail-on", metavar="EXPR",
                help="Exit 1 when B regressed past this against A, by the gate's max_regression "
                     "rules: median:5%, p90:0.2ms, size:2%, peak_rss:10%, accuracy:-0.5. "
                     "Repeatable.")] = None,
            output: Annotated[CompareFormat, typer.Option(
                "--format", help="text (tables), md (Markdown, e.g. for $GITHUB_STEP_SUMMARY) "
                                 "or json.")] = CompareFormat.TEXT) -> None:
    """What changed from report A to report B: sizes, accuracies, latencies per device (B/A),
    and whether each latency changed, tested on the runs' raw samples."""
    for text in fail_on or []:
        try:
            parse_regression(text)
        except ValueError as e:
            raise UserError(f"--fail-on: {e}") from None
    old, new = load_report(a), load_report(b)
    comparison = diff.compare(old, new)
    checks = diff.regressions(old, new, fail_on) if fail_on else []
    if output is CompareFormat.JSON:
        sys.stdout.write(compare_view.as_json(comparison, checks))
    elif output is CompareFormat.MD:
        sys.stdout.write(compare_view.markdown(comparison, checks))
    else:
        compare_view.print_text(comparison, checks, Console(width=None if sys.stdout.isatty() else 100),
                                f"edgeship compare · A {a} → B {b}")
    failed = compare_view.failed_lines(checks)
    raise typer.Exit(ExitCode.BUDGET_FAILED if failed else ExitCode.PASSED)


def _opt(*names: str, help: str, metavar: str | None = None):  # noqa: A002 - typer's word
    return typer.Option(*names, help=help, metavar=metavar)




def _LimitOption(name: str, what: str):  # noqa: N802 - used as a type
    return Annotated[float | None, _opt(name, help=f"Budget: exit 1 above this {what}.")]


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
          engine: Annotated[str | None, _opt("--engine", help=(
              "MODEL: torch quantized engine for a quantized TorchScript file (fbgemm, qnnpack)."))] = None,
          out: Annotated[Path, _opt("--out", "-o", help="MODEL: folder for the reports.")] = Path("edgeship-bench"),
          budgets: Annotated[Path | None, _opt("--budgets", metavar="TOML", help=(
              "MODEL: a recipe's budgets tables (or a TOML with only those): their size, latency "
              "and peak-RSS limits for this device and the file's format; exit 1 when broken."))] = None,
          max_latency_p50_ms: _LimitOption("--max-latency-p50-ms", "p50") = None,
          max_latency_p90_ms: _LimitOption("--max-latency-p90-ms", "p90") = None,
          max_peak_rss_mb: _LimitOption("--max-peak-rss-mb", "peak RSS") = None,
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
    quiet_third_party()  # before the ExecuTorch runtime reads a .pte's metadata (it loads torchao)
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


@app.command()
def demo(out: OutOption = Path("edgeship-demo"), force: ForceOption = False,
         quiet: QuietOption = False, no_cache: NoCacheOption = False,
         print_recipe: Annotated[bool, typer.Option("--print-recipe", help="Print the built-in "
                                                    "recipe (to copy and edit) and exit.")] = False) -> None:
    """Run the full pipeline on the built-in example: a digits CNN to every int8 target."""
    if print_recipe:
        sys.stdout.write(demo_recipe_text())
        return

    _run(parse_recipe_text(demo_recipe_text(), f"<built-in {DEMO_RECIPE}>", Path.cwd()), out, force,
         quiet, no_cache=no_cache)


@devices_app.command("list")
def devices_list() -> None:
    """The device profiles shipped with edgeship."""
    for name in sorted(shipped_profiles()):
        profile = load_profile(name)
        stdout.print(f"{name:12} {profile.transport.kind:6} {profile.arch:8} {profile.description}",
                     highlight=False, markup=False)


@devices_app.command("show")
def devices_show(name: Annotated[str, typer.Argument(help="Profile name or path to a .toml.")]) -> None:
    """A device profile, validated, with its defaults filled in."""
    stdout.print_json(load_profile(name).model_dump_json())


@devices_app.command("check")
def devices_check(name: Annotated[str, typer.Argument(help="Profile name or path to a .toml.")]) -> None:
    """Connect to a device: what it has (Python, CPU, memory, runtimes) and what each target lacks."""
    from edgeship.devices.transports import transport_for  # torch, through the format specs

    profile = load_profile(name)
    transport = transport_for(profile)
    try:
        facts = transport.check()  # RunnerFailed (a DeviceError, exit 3) when unreachable
    finally:
        transport.close()
    memory = f"{facts['memory_mb']} MB" if facts["memory_mb"] else "unknown"
    stdout.print(f"{profile.name}: Python {facts['python']} ({facts['executable']}), "
                 f"{facts['system']} {facts['machine']}, {facts['cpu_count']} CPUs "
                 f"({facts['cpu'] or 'model unknown'}), memory {memory}, int8 ISA "
                 f"{' '.join(facts.get('int8_isa') or []) or 'none'}", highlight=False, markup=False)
    for package, version in facts["packages"].items():
        error = facts["import_errors"].get(package)
        stdout.print(f"  {package:12} {version or 'missing' + (f' ({error})' if error else '')}",
                     highlight=False, markup=False)
    if facts["torch_quantized_engines"]:
        stdout.print(f"  torch quantized engines: {', '.join(facts['torch_quantized_engines'])}",
                     highlight=False, markup=False)
    for target, missing in facts["targets"].items():
        declared = TARGETS[target].format in profile.runtimes
        note = "" if declared else " (not in the profile's runtimes)"
        state = "ready" if not missing else "missing " + ", ".join(missing)
        stdout.print(f"  {target:20} {state}{note}", highlight=False, markup=False)


def quiet_third_party() -> None:
    """The CLI shows edgeship's own findings; the libraries' notices of their own deprecations
    (torch.ao FX, quantized tensors, pytree) and optional-kernel loading drown them."""
    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for message in (".*reduce_range will be deprecated.*", ".*quantized tensor creation functions.*",
                    "Exporting a model while it is in training mode.*"):
        warnings.filterwarnings("ignore", message=message)
    import torch  # noqa: F401 - torch configures its loggers on import: quiet them after that

    for name in ("torch", "torchao", "executorch"):
        logging.getLogger(name).setLevel(logging.ERROR)


def crash_log_path(e: BaseException) -> Path:
    """In the run folder when the crash happened in a run whose folder edgeship has claimed (its
    marker is there: a folder of the user's own gets no file from us); else a new file in the
    temporary directory ($TMPDIR), named by the time and the process."""
    from edgeship.pipeline.runfolder import MARKER

    folder = noted(e, RUN_FOLDER_NOTE)
    if folder is not None and (Path(folder) / MARKER).is_file():
        return Path(folder) / CRASH_LOG
    return _temporary_log_path()


def _temporary_log_path() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"edgeship-crash-{stamp}-{os.getpid()}.log"


def write_crash_log(e: BaseException) -> Path | None:
    """The full traceback (with the stage, target and run folder notes) and what ran; None when
    no place would take it."""
    text = "".join([f"edgeship {__version__} · Python {platform.python_version()} · "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S %z')}\n",
                    f"command: {' '.join(sys.argv)}\n\n", *traceback.format_exception(e)])
    path = crash_log_path(e)
    for place in dict.fromkeys([path, _temporary_log_path()]):  # a run folder gone read-only
        try:
            write_atomic(place, text)
            return place
        except OSError:
            continue
    return None


def crash_line(e: BaseException, log: Path | None) -> str:
    """One line: where (stage, target), what, and where the traceback is."""
    where = [f"{k} {v}" for k, v in (("stage", noted(e, STAGE_NOTE)), ("target", noted(e, TARGET_NOTE)))
             if v is not None]
    first = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    what = f"{type(e).__name__}: {first}" if first else type(e).__name__
    told = f"the traceback is in {log}" if log else "the traceback is above (no place to log it)"
    return (f"error: edgeship crashed{' in ' + ', '.join(where) if where else ''} ({what}); {told}. "
            f"Exit code {ExitCode.DEVICE_FAILURE}")


def report_crash(e: BaseException) -> int:
    """A bug of edgeship's, or of a library under it: one line on stderr, the traceback in a log
    file (and on stderr too with EDGESHIP_DEBUG=1), and exit 3, never 1 ("a budget failed")."""
    log = write_crash_log(e)
    if log is None or os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        traceback.print_exception(e)
    sys.stderr.write(crash_line(e, log) + "\n")
    return ExitCode.DEVICE_FAILURE


def _interrupted(signum: int, frame: object) -> None:
    # Not KeyboardInterrupt: click turns that into "Aborted!" and exit code 1, "a budget failed"
    raise Interrupted("interrupted (Ctrl-C); what was whole is kept: the same command resumes")


def main() -> None:
    previous = signal.signal(signal.SIGINT, _interrupted)
    try:
        app()  # click's own usage errors exit 2; typer.Exit carries the run's exit code
    except (EdgeshipError, Interrupted) as e:
        for line in str(e).splitlines():  # plain text: no markup, no wrapping, one line each
            sys.stderr.write(f"error: {line}\n")
        sys.exit(e.exit_code)
    except Exception as e:  # noqa: BLE001 - every crash: one line, a log, exit 3
        sys.exit(report_crash(e))
    finally:
        signal.signal(signal.SIGINT, previous)  # main() called in-process (tests) leaves it as found


if __name__ == "__main__":
    main()
