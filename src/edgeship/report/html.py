"""report.html: one self-contained page, rendered by Jinja2 with autoescaping from
templates/report.html.j2 (every text from the report is escaped by the engine). Plots are PNGs
in data URIs, the style is inline, and a Content-Security-Policy forbids any load from
elsewhere: the page opens the same offline."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from jinja2 import Environment, PackageLoader, select_autoescape

from edgeship.errors import ExitCode
from edgeship.fileio import write_atomic
from edgeship.gate.recommend import devices
from edgeship.recipe import Budget
from edgeship.report import plots, sample_plots
from edgeship.report.analysis import (fallback_lines, prune_line, qat_lines, sensitivity_headers,
                                      sensitivity_rows)
from edgeship.report.compare import compare
from edgeship.report.findings import said
from edgeship.report.schema import QatHistory, Report
from edgeship.report.writers import (between_processes, emulated_lines, float_line, headers, machines, profiles,
                                     rows)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1320px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.verdict { display: inline-block; padding: 6px 14px; border-radius: 4px; color: #fff; font-weight: bold; }
.passed { background: #2e7d32; } .failed { background: #c62828; } .broken { background: #ef6c00; }
ul.violations li { color: #b71c1c; } ul.warnings li { color: #e65100; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } .text { text-align: left; }
tr.bad td { background: #fdecea; }
img { max-width: 100%; display: block; margin: 12px 0; border: 1px solid #eee; }
.muted { color: #777; font-size: 12px; }
"""

# report.html and `bench MODEL`'s page: one environment, autoescaping every .j2 template
TEMPLATES = Environment(loader=PackageLoader("edgeship.report", "templates"),
                        autoescape=select_autoescape(["html", "j2"]), trim_blocks=True, lstrip_blocks=True)
_TEXT_COLUMNS = {"target", "precision", "device", "status", "detail", "stage", "verdict", "ops"}


def _table(table_headers: list[str], body: list[list[str]], bad: list[bool] | None = None) -> dict:
    return {"headers": table_headers, "text": {0} | {i for i, h in enumerate(table_headers) if h in _TEXT_COLUMNS},
            "rows": [{"cells": row, "bad": bool(bad and bad[i])} for i, row in enumerate(body)]}


def b64(png: bytes | None) -> str | None:
    return base64.b64encode(png).decode("ascii") if png else None


def _warnings(report: Report) -> list[str]:
    out = [report.float.warning] if report.float and report.float.warning else []
    out += [f"{a.target} {a.status}: {a.error}" for a in report.artifacts if a.status != "ok"]
    return out + [line for _, line in said(report)]


def _latency_plots(report: Report) -> list[tuple[str, str | None]]:
    """An ECDF of the raw samples per device; the summary plot where the samples are gone."""
    out = []
    for device in devices(report):
        series = [(a.target, b.samples_ms) for a in report.artifacts for b in a.benchmarks
                  if b.device == device and b.status == "ok" and b.samples_ms]
        if series:
            png = sample_plots.latency_ecdf(series, f"latency of every timed run on {device}")
            out.append((f"latency ECDF on {device}", b64(png)))
    return out or [("latency distribution per artifact", b64(plots.latency_distribution(report)))]


def _qat_plot(report: Report) -> str | None:
    flows = {}
    for a in report.artifacts:
        found = (a.details.get("quantization") or {}).get("qat_history")
        if found is not None and a.flow not in flows:
            history = QatHistory.model_validate(found)
            flows[a.flow] = (a.flow, [(e.epoch, report.metric.shown(e.accuracy)) for e in history.epochs],
                             history.shipped_epoch)
    ceiling = 100.0 if report.metric.drop_scale == 100 else None  # accuracy, shown in percent
    return b64(sample_plots.qat_history(list(flows.values()), report.metric.label, ceiling))


def _process(report: Report) -> dict | None:
    body = [[a.target, b.device, f"{b.load_ms:.1f}" if b.load_ms is not None else "—",
             f"{b.first_inference_ms:.2f}" if b.first_inference_ms is not None else "—",
             f"{b.peak_rss_mb:.0f}" if b.peak_rss_mb is not None else "—",
             f"{b.rss_delta_mb:+.1f}" if b.rss_delta_mb is not None else "—"]
            for a in report.artifacts for b in a.benchmarks if b.status == "ok"]
    return _table(["target", "device", "load ms", "first inference ms", "peak RSS MB", "RSS growth MB"],
                  body) if body else None


def _graphs(report: Report) -> dict | None:
    """Per artifact: the ONNX op counts, or what XNNPACK took and what it left to portable kernels."""
    body = []
    for a in report.artifacts:
        ops, delegation = a.details.get("onnx_ops"), a.details.get("delegation")
        if ops:
            body.append([a.target, "—", "—", ", ".join(f"{k} {v}" for k, v in sorted(ops.items()))])
        elif delegation:
            body.append([a.target, str(delegation.get("delegated_nodes")), str(delegation.get("non_delegated_nodes")),
                         ", ".join(f"{k} {v}" for k, v in sorted((delegation.get("delegated_ops") or {}).items()))])
    return _table(["target", "delegated nodes", "left to portable kernels", "ops"], body) if body else None


def _baseline(report: Report, baseline: Report | None) -> dict | None:
    if baseline is None:
        return None
    body = []
    for t in compare(baseline, report).targets:
        for d in t.devices:
            test = d.p50_test
            interval = f"{test.ratio:.3f}x ({test.low:.3f}–{test.high:.3f})" if test else (
                f"{d.p50_ms.ratio:.3f}x" if d.p50_ms.ratio else "—")
            body.append([t.target, d.device, _ms(d.p50_ms.a), _ms(d.p50_ms.b), interval, d.verdict or "not tested"])
    return _table(["target", "device", "p50 ms before", "p50 ms now", "B/A (95% CI)", "verdict"], body,
                  [row[-1] == "slower" for row in body])


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _pareto(report: Report) -> list[str]:
    out = []
    for device in devices(report):
        front = plots.pareto_front(plots.points(report, device), report.metric.higher_is_better)
        if front:
            out.append(f"{device}: {', '.join(front)}")
    return out


def _footer(report: Report) -> str:
    env = report.environment
    versions = " · ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, dict))
    host = env.get("host", {})
    return (f"edgeship {report.edgeship_version} · {versions} · host {host.get('cpu')} ({host.get('arch')}, "
            f"{host.get('cores')} cores, int8 ISA {' '.join(host.get('int8_isa') or []) or '—'}) · "
            f"recipe sha256 {report.recipe_sha256}")


def _context(report: Report, budgets: list[Budget], baseline: Report | None) -> dict:
    statuses = [r[-1] for r in rows(report)]
    accuracy, notes = plots.accuracy_vs_latency(report, budgets)
    return dict(
        report=report, csp=CSP, style=STYLE, warnings=_warnings(report), metric_label=report.metric.label,
        exit_meaning=ExitCode.beside_verdict(report.exit_code),
        float_text=float_line(report) if report.float else "",
        results=_table(headers(report), rows(report), [s != "ok" for s in statuses]),
        baseline=_baseline(report, baseline), pareto=_pareto(report), plot_notes=notes,
        plots={"accuracy": b64(accuracy), "latency": _latency_plots(report), "qat": _qat_plot(report),
               "size": b64(plots.size_vs_twin(report, budgets))},
        process=_process(report), qat=qat_lines(report),
        prune=prune_line(report) if report.prune is not None else "",
        fallback=fallback_lines(report) if report.fallback else [],
        sensitivity=_table(sensitivity_headers(report), sensitivity_rows(report)) if report.sensitivity else None,
        graphs=_graphs(report), profiles=profiles(report), emulated=emulated_lines(report), machines=machines(report) + between_processes(report),
        budgets=[json.dumps(b) for b in report.budgets or []],
        stages=_table(["stage", "status", "seconds", "detail"],
                      [[s.name, s.status, f"{s.seconds:.2f}", s.detail] for s in report.stages]),
        footer=_footer(report))


def html_page(report: Report, budgets: list[Budget], baseline: Report | None = None) -> str:
    """The page; `report` still holds its raw samples (publish takes them out of a copy)."""
    return TEMPLATES.get_template("report.html.j2").render(**_context(report, budgets, baseline))


def write_html(report: Report, budgets: list[Budget], path: Path, baseline: Report | None = None) -> None:
    write_atomic(path, html_page(report, budgets, baseline))
