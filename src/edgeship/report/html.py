"""report.html: one self-contained page. Plots are PNGs in data URIs, the style is inline, and a
Content-Security-Policy forbids any load from elsewhere: the page opens the same offline.
Every text that comes from the report is escaped."""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

from edgeship.fileio import write_atomic
from edgeship.gate.recommend import devices
from edgeship.recipe import Budget
from edgeship.report import plots
from edgeship.report.analysis import (fallback_lines, prune_line, qat_lines, sensitivity_headers,
                                      sensitivity_rows)
from edgeship.report.schema import Report
from edgeship.report.writers import (between_processes, float_line, headers, int8_slower, machines,
                                     mostly_float, profiles, rows)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px auto; max-width: 1320px; color: #222; }
h1 { margin-bottom: 4px; } h2 { margin-top: 32px; border-bottom: 1px solid #ddd; }
.verdict { display: inline-block; padding: 6px 14px; border-radius: 4px; color: #fff; font-weight: bold; }
.passed { background: #2e7d32; } .failed { background: #c62828; } .broken { background: #ef6c00; }
ul.violations li { color: #b71c1c; } ul.warnings li { color: #e65100; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td.text { text-align: left; }
tr.bad td { background: #fdecea; }
img { max-width: 100%; display: block; margin: 12px 0; border: 1px solid #eee; }
.muted { color: #777; font-size: 12px; }
"""

_TEXT_COLUMNS = {"target", "precision", "device", "status", "detail"}


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _table(headers: list[str], body: list[list[str]], bad: list[bool] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    lines = []
    for i, row in enumerate(body):
        cells = "".join(f'<td class="text">{_e(c)}</td>' if headers[j] in _TEXT_COLUMNS or j == 0
                        else f"<td>{_e(c)}</td>" for j, c in enumerate(row))
        css = ' class="bad"' if bad and bad[i] else ""
        lines.append(f"<tr{css}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(lines)}</tbody></table>"


def _img(png: bytes | None, alt: str) -> str:
    if png is None:
        return f'<p class="muted">{_e(alt)}: nothing measured to plot.</p>'
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{_e(alt)}" src="data:image/png;base64,{data}">'


def _summary(report: Report) -> list[str]:
    out = [f"<h1>edgeship: {_e(report.recipe_name)}</h1>"]
    gate = report.gate
    if gate is None:
        out.append('<p><span class="verdict broken">NOT GATED</span></p>')
    else:
        css, word = ("passed", "PASSED") if gate.passed else \
            ("failed", f"FAILED: {len(gate.violations)} budget violations")
        out.append(f'<p><span class="verdict {css}">Gate {_e(word)}</span> '
                   f"exit code {report.exit_code}</p>")
        if gate.violations:
            items = "".join(f"<li>{_e(v.message)}</li>" for v in gate.violations)
            out.append(f'<ul class="violations">{items}</ul>')
    failed = [a for a in report.artifacts if a.status != "ok"]
    items = [f"<li>{_e(report.float.warning)}</li>"] if report.float and report.float.warning else []
    items += [f"<li><code>{_e(a.target)}</code> {_e(a.status)}: {_e(a.error)}</li>" for a in failed]
    items += [f"<li>{_e(line)}</li>" for line in int8_slower(report) + mostly_float(report)]
    if items:
        out.append(f'<ul class="warnings">{"".join(items)}</ul>')
    if report.recommendations:
        out.append("<h2>Recommendation</h2><ul>")
        out += [f"<li>{_e(r.statement)}</li>" for r in report.recommendations]
        out.append("</ul>")
    return out


def _pareto(report: Report) -> str:
    items = []
    for device in devices(report):
        front = plots.pareto_front(plots.points(report, device), report.metric.higher_is_better)
        if front:
            items.append(f"<li>{_e(device)}: {_e(', '.join(front))}</li>")
    if not items:
        return ""
    return ("<p>On the Pareto front of accuracy and p50 latency (no other artifact is both faster "
            f"and more accurate), fastest first, circled in green:</p><ul>{''.join(items)}</ul>")


def _list(title: str, lines: list[str]) -> list[str]:
    return [f"<h2>{_e(title)}</h2>", "<ul>", *(f"<li>{_e(line)}</li>" for line in lines), "</ul>"]


def _analyses(report: Report) -> list[str]:
    """QAT's trajectory, pruning, fallback, sensitivity: the sections a run has."""
    parts = _list("Quantization-aware training", qat) if (qat := qat_lines(report)) else []
    if report.prune is not None:
        parts += ["<h2>Pruning</h2>", f"<p>{_e(prune_line(report))}</p>"]
    if report.fallback:
        parts += _list("Accuracy-aware fallback", fallback_lines(report))
    if report.sensitivity:
        parts += ["<h2>Sensitivity per layer</h2><p class=\"muted\">post-training int8 on the "
                  "calibration split, worst first</p>", _table(sensitivity_headers(report), sensitivity_rows(report))]
    return parts


def html_page(report: Report, budgets: list[Budget]) -> str:
    parts = _summary(report)
    float_text = f" · {float_line(report)}" if report.float else ""
    statuses = [r[-1] for r in rows(report)]
    parts += [f"<h2>Results</h2><p class=\"muted\">{_e(len(report.artifacts))} artifacts{_e(float_text)}</p>",
              _table(headers(report), rows(report), [s != "ok" for s in statuses])]
    parts += ["<h2>Accuracy vs latency</h2>", _pareto(report),
              _img(plots.accuracy_vs_latency(report, budgets), "accuracy vs p50 latency per device"),
              "<h2>Latency distribution</h2>",
              _img(plots.latency_distribution(report), "latency distribution per artifact"),
              "<h2>Size against the fp32 twin</h2>",
              _img(plots.size_vs_twin(report, budgets), "size per target against its fp32 twin")]
    parts += _analyses(report)
    parts += _list("Where the time goes (per-op profiles)", found) if (found := profiles(report)) else []
    parts += _list("Devices as measured", seen + between_processes(report)) if (seen := machines(report)) else []
    if report.budgets:
        parts += ["<h2>Budgets</h2>", "<ol start=\"0\">"]
        parts += [f"<li><code>{_e(json.dumps(b))}</code></li>" for b in report.budgets]
        parts.append("</ol>")
    parts += ["<h2>Stages</h2>",
              _table(["stage", "status", "seconds", "detail"],
                     [[s.name, s.status, f"{s.seconds:.2f}", s.detail] for s in report.stages])]
    env = report.environment
    versions = " · ".join(f"{k} {v}" for k, v in env.items() if not isinstance(v, dict))
    host = env.get("host", {})
    parts.append(f'<p class="muted">edgeship {_e(report.edgeship_version)} · {_e(versions)} · host '
                 f'{_e(host.get("cpu"))} ({_e(host.get("arch"))}, {_e(host.get("cores"))} cores, int8 '
                 f'ISA {_e(" ".join(host.get("int8_isa") or []) or "—")}) · '
                 f"recipe sha256 {_e(report.recipe_sha256)}</p>")
    body = "\n".join(p for p in parts if p)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
            f"<title>edgeship: {_e(report.recipe_name)}</title>\n<style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")


def write_html(report: Report, budgets: list[Budget], path: Path) -> None:
    write_atomic(path, html_page(report, budgets))
