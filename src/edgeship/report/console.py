"""What edgeship prints on the console: a run's results table, and the verdict, the same after
`edgeship run` and `edgeship gate` (each budget violated, the recommendation per device, the
gate's word with the exit code)."""

from __future__ import annotations

import dataclasses

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.errors import ExitCode
from edgeship.gate.budgets import Check, Outcome
from edgeship.report.findings import said
from edgeship.report.schema import Report
from edgeship.report.writers import (between_processes, emulated_lines, float_line, headers, machines, profiles,
                                     rows)


def check_line(check: Check) -> str:
    """One check as `gate -v` lists it: outcome, where, the figure and its limit."""
    where = check.target + (f" on {check.device}" if check.device else "")
    if check.outcome is Outcome.SKIPPED:
        return f"skipped {where} {check.limit_name}: {check.message}"
    measured = "not measured" if check.measured is None else f"{check.measured:.4g}"
    sign = "≤" if check.upper else "≥"
    return f"{check.outcome.value:7} {where} {check.limit_name}: {measured} (limit {sign} {check.limit:g})"


def gate_json(report: Report, checks: list[Check], summary: str) -> dict:
    """`gate --json`: the verdict, every check with its outcome, the recommendations."""
    return {"passed": report.gate.passed if report.gate else None, "exit_code": report.exit_code,
            "summary": summary,
            "violations": [v.model_dump() for v in report.gate.violations] if report.gate else [],
            "checks": [{**dataclasses.asdict(c), "outcome": c.outcome.value} for c in checks],
            "recommendations": [r.model_dump() for r in report.recommendations]}


def print_verdict(report: Report, console: Console, summary: str | None = None) -> None:
    """Nothing for a report that was not gated. `summary`: one line said before the verdict (what
    `edgeship gate` checked)."""
    if report.gate is None:
        return
    for v in report.gate.violations:
        console.print(f"[red]budget violated:[/] {escape(v.message)}", highlight=False, soft_wrap=True)
    for r in report.recommendations:
        console.print(f"[bold]recommendation[/] {escape(r.statement)}", highlight=False, soft_wrap=True)
    if summary is not None:
        console.print(escape(summary), highlight=False, soft_wrap=True)
    word = "[green]PASSED[/]" if report.gate.passed else "[red]FAILED[/]"
    console.print(f"gate {word} · exit code {report.exit_code}{ExitCode.beside_verdict(report.exit_code)}")


# Under this many columns the one table (14 columns, about 160 wide) is printed as two: what
# each artifact is (one row per target) and how fast it runs (one row per target and device).
ONE_TABLE_WIDTH = 160
SPEED_COLUMNS = ("target", "device", "p50 ms", "p90 ms", "p50 vs fp32", "peak RSS MB", "status")
TEXT_COLUMNS = ("target", "precision", "device", "status")


def _table(title: str, all_headers: list[str], all_rows: list[list[str]], keep: list[int],
           compact: bool) -> Table:
    style = dict(box=box.SIMPLE_HEAD, collapse_padding=True, pad_edge=False) if compact else {}
    table = Table(title=title, title_justify="left", **style)
    for i in keep:
        h, text = all_headers[i], all_headers[i] in TEXT_COLUMNS
        # a narrow terminal wraps the figures' headers, never cuts a target's name or a status
        table.add_column(escape(h), justify="left" if text else "right", no_wrap=text,
                         min_width=max([len(r[i]) for r in all_rows] + [len(h)]) if text else None)
    for r in all_rows:
        table.add_row(*(escape(r[i]) for i in keep))
    return table


def print_tables(report: Report, console: Console) -> None:
    # Rich reads markup in titles and cells: user text (the recipe name, errors) is escaped.
    title, table_headers, table_rows = f"edgeship · {escape(report.recipe_name)}", headers(report), rows(report)
    if console.width >= ONE_TABLE_WIDTH:
        console.print(_table(title, table_headers, table_rows, list(range(len(table_headers))), False))
        return
    speed = [i for i, h in enumerate(table_headers) if h in SPEED_COLUMNS]
    quality = [i for i, h in enumerate(table_headers) if i not in speed or h == "target"]
    first = list({r[0]: r for r in table_rows}.values())  # the artifact's figures, once per target
    console.print(_table(f"{title} · artifacts", table_headers, first, quality, True))
    console.print(_table(f"{title} · on the devices", table_headers, table_rows, speed, True))


def print_console(report: Report, console: Console) -> None:
    """A run's results: the table(s), the findings under them, failed artifacts, the verdict."""
    print_tables(report, console)
    for label, line in said(report):
        console.print(f"[yellow]{label}:[/] {escape(line)}", highlight=False)
    for line in machines(report):
        console.print(f"measured on {escape(line)}", highlight=False, soft_wrap=True)
    for line in between_processes(report):
        console.print(f"between processes: {escape(line)}", highlight=False, soft_wrap=True)
    for line in profiles(report):
        console.print(f"profile: {escape(line)}", highlight=False, soft_wrap=True)
    for line in emulated_lines(report):
        console.print(f"on ARM (emulated): {escape(line)}", highlight=False, soft_wrap=True)
    if report.float:
        console.print(escape(float_line(report)), highlight=False)
        if report.float.warning:
            console.print(f"[yellow]warning:[/] {escape(report.float.warning)}", highlight=False)
    for a in report.artifacts:
        if a.status != "ok":
            console.print(f"[yellow]{escape(a.target)} failed:[/] {escape(a.error)}", highlight=False)
    print_verdict(report, console)
