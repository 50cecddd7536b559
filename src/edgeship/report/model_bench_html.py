"""report.html of `edgeship bench MODEL`: one self-contained page from a Jinja2 template with
autoescaping on (every text that came from the user or the device is escaped by the engine, not
by hand), plots as PNG data URIs, and html.py's Content-Security-Policy and style."""

from __future__ import annotations

from edgeship.report.html import CSP, STYLE, TEMPLATES, b64
from edgeship.report.model_bench_view import HEADERS, OP_HEADERS, problems, rows, top_ops
from edgeship.report.sample_plots import input_sweep, latency_ecdf
from edgeship.report.schema import ModelBenchReport
from edgeship.report.writers import machines_of, profile_line

def _plots(report: ModelBenchReport) -> list[dict]:
    measured = [(" ".join(r.inputs), r.benchmark) for r in report.runs
                if r.benchmark.status == "ok" and r.benchmark.latency_ms]
    sweep = input_sweep([(label, b.latency_ms.p50, b.latency_ms.p90) for label, b in measured],
                        "p50 and p90 per input set")
    ecdf = latency_ecdf([(label, b.samples_ms) for label, b in measured],
                        f"latency of every timed run on {report.device}")
    plots = [{"title": "Latency distribution (every timed run)", "data": b64(ecdf)}]
    if len(report.runs) > 1:
        plots.insert(0, {"title": "Input sweep", "data": b64(sweep)})
    return plots


def html_page(report: ModelBenchReport) -> str:
    """The page; `report` still holds its raw samples (write_report takes them out of a copy)."""
    table = rows(report)
    return TEMPLATES.get_template("model_bench.html.j2").render(
        report=report, csp=CSP, style=STYLE, problems=problems(report), headers=HEADERS,
        rows=[{"cells": row, "bad": row[-1] != "ok"} for row in table], plots=_plots(report),
        profile_lines=[line for r in report.runs if (line := profile_line(" ".join(r.inputs), r.benchmark))],
        top_ops=top_ops(report), op_headers=OP_HEADERS,
        machines=machines_of(r.benchmark for r in report.runs))
