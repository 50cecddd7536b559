"""A Comparison (report/compare.py) as text tables, Markdown or JSON: `edgeship compare --format`.

Two tables, so that each fits a 100-column terminal: one row per target (size, accuracy) and one
per target and device (latency, the test of its change, RSS)."""

from __future__ import annotations

import dataclasses
import json

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from edgeship.gate.budgets import Check, Outcome
from edgeship.report.compare import Change, Comparison, DeviceDiff, notes
from edgeship.report.markdown import md_text

LEGEND = ("latency: median B/A with its 95% bootstrap interval from the raw samples; slower or "
          "faster when the whole interval is past 1 and the median moved 3% or more, else no change "
          "(the interval covers the spread within each run; two runs differ by up to ~2.5%)")


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else f"{value:{spec}}"


def _pair(change: Change, spec: str) -> str:
    return f"{_num(change.a, spec)} → {_num(change.b, spec)}"


def _ratio(change: Change) -> str:
    return "—" if change.ratio is None else f"{change.ratio:.3f}x"


def target_headers(comparison: Comparison) -> list[str]:
    metric = comparison.metrics[1]
    return ["target", "size bytes A → B", "size B/A", f"{metric.label} A → B",
            f"better by ({metric.short_unit})"]


def target_rows(comparison: Comparison) -> list[list[str]]:
    metric, out = comparison.metrics[1], []
    for t in comparison.targets:
        better = None if t.accuracy.delta is None else -metric.worsening(t.accuracy.a, t.accuracy.b)
        out.append([t.target, _pair(t.size_bytes, "d"), _ratio(t.size_bytes),
                    f"{metric.format(t.accuracy.a)} → {metric.format(t.accuracy.b)}",
                    metric.format_drop(better)])
    return out


DEVICE_HEADERS = ["target", "device", "p50 ms A → B", "p50 B/A, 95% CI", "latency", "p90 B/A",
                  "RSS B/A"]


def _test(d: DeviceDiff) -> list[str]:
    if d.p50_test is None:
        return [_ratio(d.p50_ms), "— (no samples)"]
    return [f"{d.p50_test.ratio:.3f}x {d.p50_test.interval()}", d.p50_test.verdict]


def device_rows(comparison: Comparison) -> list[list[str]]:
    return [[t.target, d.device, _pair(d.p50_ms, ".3f"), *_test(d), _ratio(d.p90_ms),
             _ratio(d.peak_rss_mb)] for t in comparison.targets for d in t.devices]


def failed_lines(checks: list[Check]) -> list[str]:
    return [c.message for c in checks if c.outcome is Outcome.FAILED]


def _md_table(headers: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(md_text, headers)) + " |", "|" + "---|" * len(headers)]
    return lines + ["| " + " | ".join(map(md_text, row)) + " |" for row in rows]


def markdown(comparison: Comparison, checks: list[Check]) -> str:
    a_name, b_name = comparison.recipe_names
    lines = [f"# edgeship compare: {md_text(a_name)} → {md_text(b_name)}", ""]
    lines += _md_table(target_headers(comparison), target_rows(comparison)) + [""]
    lines += _md_table(DEVICE_HEADERS, device_rows(comparison)) + ["", md_text(LEGEND), ""]
    lines += [f"- note: {md_text(n)}" for n in notes(comparison)]
    lines += [f"- ❌ {md_text(m)}" for m in failed_lines(checks)]
    return "\n".join(lines).rstrip() + "\n"


def as_json(comparison: Comparison, checks: list[Check]) -> str:
    data = dataclasses.asdict(comparison)
    data["metrics"] = [m.model_dump() for m in comparison.metrics]
    for target, t in zip(data["targets"], comparison.targets, strict=True):
        for device, d in zip(target["devices"], t.devices, strict=True):
            device["verdict"] = d.verdict
    data["notes"] = notes(comparison)
    data["checks"] = [{"target": c.target, "device": c.device, "limit": c.limit_name,
                       "passed": c.passed, "message": c.message} for c in checks]
    return json.dumps(data, indent=2, default=_plain) + "\n"


def _plain(value: object) -> object:
    """JSON for what asdict leaves: pydantic models (metrics)."""
    return value.model_dump() if hasattr(value, "model_dump") else str(value)


def _table(title: str, headers: list[str], rows: list[list[str]]) -> Table:
    table = Table(title=escape(title), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  collapse_padding=True, pad_edge=False)
    for h in headers:
        table.add_column(escape(h), justify="left" if h in ("target", "device", "latency") else "right",
                         no_wrap=True)
    for row in rows:
        table.add_row(*map(escape, row))
    return table


def print_text(comparison: Comparison, checks: list[Check], console: Console, title: str) -> None:
    console.print(_table(title, target_headers(comparison), target_rows(comparison)))
    console.print(_table("per device", DEVICE_HEADERS, device_rows(comparison)))
    for note in notes(comparison):
        console.print(f"note: {escape(note)}", highlight=False)
    console.print(escape(LEGEND), highlight=False)
    for line in failed_lines(checks):
        console.print(f"[red]regression:[/] {escape(line)}", highlight=False)
    if checks:
        failed = len(failed_lines(checks))
        verdict = f"{failed} of {len(checks)} checks FAILED" if failed else f"all {len(checks)} checks passed"
        console.print(f"--fail-on: {verdict}", highlight=False)
