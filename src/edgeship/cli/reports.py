"""`edgeship gate` and `edgeship compare`: verdicts on reports already written, no re-run."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from edgeship.cli.common import BaselineOption, JsonOption, Verbosity, app, print_json, stdout, verbosity
from edgeship.errors import ExitCode, UserError
from edgeship.gate.regate import regate
from edgeship.regression import parse as parse_regression
from edgeship.report import compare as diff
from edgeship.report import compare_view
from edgeship.report.console import check_line, gate_json, print_verdict
from edgeship.report.load import load_report


@app.command()
def gate(report_path: Annotated[Path, typer.Argument(metavar="REPORT", help="report.json of a run.")],
         baseline: BaselineOption = None,
         recipe: Annotated[Path | None, typer.Option(
             "--recipe", metavar="RECIPE",
             help="Take the budgets from this recipe instead of the report's own.")] = None,
         write: Annotated[bool, typer.Option(
             "--write", help="Rewrite REPORT and the report.md, junit.xml and report.html beside "
                             "it with the new verdict.")] = False,
         as_json: JsonOption = False) -> None:
    """Re-evaluate budgets on an existing report without re-running anything (-v lists every
    check)."""
    report = load_report(report_path)
    old = load_report(baseline) if baseline else None
    result = regate(report, recipe, old)
    written = _write(result, report_path, old) if write else []
    if as_json:
        print_json(gate_json(result.report, result.decision.checks, result.summary)
                   | {"written": [str(p) for p in written]})
        raise typer.Exit(result.report.exit_code)
    if verbosity() >= Verbosity.VERBOSE:
        for check in result.decision.checks:
            stdout.print(escape(check_line(check)), highlight=False, soft_wrap=True)
    print_verdict(result.report, stdout, result.summary)
    for path in written:
        stdout.print(f"wrote {path}", highlight=False, markup=False)
    raise typer.Exit(result.report.exit_code)


def _write(result, report_path: Path, baseline) -> list[Path]:
    from edgeship.pipeline.runfolder import note_rewritten
    from edgeship.report.publish import publish  # matplotlib, for report.html

    decision = result.decision
    written = publish(result.report, decision.checks, decision.budgets, report_path.parent,
                      json_name=report_path.name, baseline=baseline)
    note_rewritten(written)  # a run folder's marker keeps recognising its reports
    return written


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
                                 "or json.")] = CompareFormat.TEXT,
            as_json: JsonOption = False) -> None:
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
    if as_json or output is CompareFormat.JSON:
        sys.stdout.write(compare_view.as_json(comparison, checks))
    elif output is CompareFormat.MD:
        sys.stdout.write(compare_view.markdown(comparison, checks))
    else:
        compare_view.print_text(comparison, checks, Console(width=None if sys.stdout.isatty() else 100),
                                f"edgeship compare · A {a} → B {b}")
    failed = compare_view.failed_lines(checks)
    raise typer.Exit(ExitCode.BUDGET_FAILED if failed else ExitCode.PASSED)
