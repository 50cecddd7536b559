"""`edgeship bench MODEL`'s results as the console's table and report.md."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.errors import ExitCode
from edgeship.report.markdown import md_text
from edgeship.report.schema import ModelBenchReport
from edgeship.report.writers import machines_of, profile_line

TOP_OPS = 10


def top_ops(report: ModelBenchReport) -> list[list[str]]:
    """The first input set's most time-consuming ops: name, op type, kernel, ms a run, share."""
    prof = report.runs[0].benchmark.profile if report.runs else None
    if not prof or "error" in prof:
        return []
    total = prof["ms_per_run"] or 1.0
    return [[o["name"], o["op"] or "", o["kernel"] or "", f"{o['ms']:.4f}",
             f"{o['ms'] / total:.0%}" + (" (in delegate)" if o.get("nested") else "")]
            for o in prof["ops"][:TOP_OPS]]


OP_HEADERS = ["op", "type", "kernel", "ms a run", "share"]

HEADERS = ["inputs", "p50 ms", "p90 ms", "p99 ms", "load ms", "first ms", "peak RSS MB",
           "iterations", "status"]


def _f(value: float | None, spec: str = ".3f") -> str:
    return "—" if value is None else f"{value:{spec}}"


def rows(report: ModelBenchReport) -> list[list[str]]:
    out = []
    for run in report.runs:
        b, lat = run.benchmark, run.benchmark.latency_ms
        status = b.status if b.status != "ok" or b.valid is not False else "not valid"
        out.append([" ".join(run.inputs), _f(lat and lat.p50), _f(lat and lat.p90), _f(lat and lat.p99),
                    _f(b.load_ms, ".1f"), _f(b.first_inference_ms, ".2f"), _f(b.peak_rss_mb, ".0f"),
                    _f(b.iterations, "d"), status])
    return out


def problems(report: ModelBenchReport) -> list[str]:
    """What a row's status cannot say: why a run was skipped or failed, budgets it broke."""
    out = [f"{' '.join(r.inputs)}: {r.benchmark.status}: {r.benchmark.error}"
           for r in report.runs if r.benchmark.error]
    out += [v.message for v in report.gate.violations]
    if report.limits_not_checked:
        out.append(f"not checked on a bare model file (they need the float model or a baseline): "
                   f"{', '.join(report.limits_not_checked)}")
    return out


def title(report: ModelBenchReport) -> str:
    return (f"edgeship bench · {report.model} ({report.format}, {report.size_bytes / 1e6:.3f} MB) "
            f"on {report.device} · inputs from {report.inputs_from}")


def print_model_bench(report: ModelBenchReport, console: Console) -> None:
    table = Table(title=escape(title(report)), title_justify="left")
    for h in HEADERS:
        table.add_column(escape(h), justify="left" if h in ("inputs", "status") else "right")
    for row in rows(report):
        table.add_row(*map(escape, row))
    console.print(table)
    for line in machines_of(b for r in report.runs for b in [r.benchmark]):
        console.print(f"measured on {escape(line)}", highlight=False, soft_wrap=True)
    for line in filter(None, (profile_line(" ".join(r.inputs), r.benchmark) for r in report.runs)):
        console.print(f"profile: {escape(line)}", highlight=False, soft_wrap=True)
    if top_ops(report):
        ops = Table(title="top ops (first input set)", title_justify="left")
        for h in OP_HEADERS:
            ops.add_column(h, justify="left" if h in ("op", "type", "kernel") else "right")
        for row in top_ops(report):
            ops.add_row(*map(escape, row))
        console.print(ops)
    for line in problems(report):
        console.print(f"[yellow]{escape(line)}[/]", highlight=False, soft_wrap=True)
    if report.limits:
        word = "[green]PASSED[/]" if report.gate.passed else "[red]FAILED[/]"
        console.print(f"budgets {word} · exit code {report.exit_code}{ExitCode.beside_verdict(report.exit_code)}")


def markdown(report: ModelBenchReport) -> str:
    lines = [f"# {md_text(title(report))}", ""]
    lines += ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(map(md_text, row)) + " |" for row in rows(report)]
    lines += [""] + [f"- measured on {md_text(line)}" for line in
                     machines_of(r.benchmark for r in report.runs)]
    lines += [f"- profile: {md_text(line)}" for line in
              (profile_line(" ".join(r.inputs), r.benchmark) for r in report.runs) if line]
    if top_ops(report):
        lines += ["", "| " + " | ".join(OP_HEADERS) + " |", "|" + "---|" * len(OP_HEADERS)]
        lines += ["| " + " | ".join(map(md_text, row)) + " |" for row in top_ops(report)] + [""]
    lines += [f"- ⚠️ {md_text(line)}" for line in problems(report)]
    if report.limits:
        lines += ["", f"**Budgets: {'PASSED' if report.gate.passed else 'FAILED'}** · exit code "
                      f"{report.exit_code}"]
    return "\n".join(lines).rstrip() + "\n"
