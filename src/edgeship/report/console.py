"""What edgeship prints on the console: a run's results table, and the verdict, the same after
`edgeship run` and `edgeship gate` (each budget violated, the recommendation per device, the
gate's word with the exit code)."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.report.schema import Report
from edgeship.report.writers import (between_processes, float_line, headers, int8_slower, machines,
                                     mostly_float, profiles, rows)


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
    console.print(f"gate {word} · exit code {report.exit_code}")


def print_console(report: Report, console: Console) -> None:
    """A run's results: the table, int8 slower than fp32, failed artifacts, the verdict."""
    # Rich reads markup in titles and cells: user text (the recipe name, errors) is escaped.
    table = Table(title=f"edgeship · {escape(report.recipe_name)}", title_justify="left")
    table_rows = rows(report)
    for i, h in enumerate(headers(report)):
        text = h in ("target", "precision", "device", "status")
        # a narrow terminal wraps the figures' headers, never cuts a target's name
        table.add_column(escape(h), justify="left" if text else "right", no_wrap=text,
                         min_width=max([len(r[i]) for r in table_rows] + [len(h)]) if text else None)
    for r in table_rows:
        table.add_row(*map(escape, r))
    console.print(table)
    for line in int8_slower(report):
        console.print(f"[yellow]int8 slower:[/] {escape(line)}", highlight=False)
    for line in mostly_float(report):
        console.print(f"[yellow]mostly float:[/] {escape(line)}", highlight=False)
    for line in machines(report):
        console.print(f"measured on {escape(line)}", highlight=False, soft_wrap=True)
    for line in between_processes(report):
        console.print(f"between processes: {escape(line)}", highlight=False, soft_wrap=True)
    for line in profiles(report):
        console.print(f"profile: {escape(line)}", highlight=False, soft_wrap=True)
    if report.float:
        console.print(escape(float_line(report)), highlight=False)
        if report.float.warning:
            console.print(f"[yellow]warning:[/] {escape(report.float.warning)}", highlight=False)
    for a in report.artifacts:
        if a.status != "ok":
            console.print(f"[yellow]{escape(a.target)} failed:[/] {escape(a.error)}", highlight=False)
    print_verdict(report, console)
