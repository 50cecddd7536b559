"""report.json and report.md from one Report, and the results table they and the console show."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from edgeship.errors import ExitCode
from edgeship.fileio import write_atomic
from edgeship.report.analysis import analysis_markdown
from edgeship.report.findings import latency_ratio, said, size_ratio, twin_benchmark, twin_of
from edgeship.report.markdown import md_code, md_text
from edgeship.report.schema import Artifact, Benchmark, EmulatedCheck, Report
from edgeship.targets import get_target


def _fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "—" if value is None else f"{value:{spec}}{suffix}"


def _temperatures(state: dict) -> str:
    celsius = state.get("celsius") or {}
    return f"{max(celsius.values()):.0f} °C" if celsius else "—"


def machines(report: Report) -> list[str]:
    """One line per device the benchmarks ran on, as its runner saw it: what explains the numbers.
    `local: AMD EPYC 7B13 (x86_64, 2 cores), int8 ISA avx2; ran on cpus 0,1; hottest zone — → —`"""
    return machines_of(b for a in report.artifacts for b in a.benchmarks)


def machines_of(benchmarks: Iterable[Benchmark]) -> list[str]:
    out, seen = [], set()
    for bench in (b for b in benchmarks if b.system):
        if bench.device in seen:
            continue
        seen.add(bench.device)
        m = bench.system
        governors = sorted(set((m.get("before") or {}).get("governor", {}).values()))
        out.append(f"{bench.device}: {m.get('cpu')} ({m.get('arch')}, {m.get('cores')} cores), int8 ISA "
                   f"{' '.join(m.get('int8_isa') or []) or 'none'}; "
                   f"ran on cpus {','.join(map(str, m.get('cpus') or [])) or '?'}; governor "
                   f"{'/'.join(governors) or '—'}; hottest zone {_temperatures(m.get('before') or {})} → "
                   f"{_temperatures(m.get('after') or {})}")
    return out


def between_processes(report: Report) -> list[str]:
    """With benchmark repetitions: each process's median beside the others', per artifact and device.
    `onnx-int8 on local: p50 of 3 processes 0.041 0.043 0.046 ms, spread 12.2% (max/min - 1)`"""
    out = []
    for a in report.artifacts:
        for b in a.benchmarks:
            medians = b.process_p50_ms or []
            if len(medians) > 1 and min(medians) > 0:
                spread = (max(medians) / min(medians) - 1) * 100
                out.append(f"{a.target} on {b.device}: p50 of {len(medians)} processes "
                           f"{' '.join(f'{m:.3f}' for m in medians)} ms, spread {spread:.1f}% (max/min - 1)")
    return out


def profile_line(what: str, bench: Benchmark, top: int = 4) -> str | None:
    """`onnx-int8 on local: ops 0.021 ms of p50 0.029 ms (72%; the rest: the runtime's own work
    per call); QLinearConv 61%, DequantizeLinear 14%, ...` from a benchmark's per-op profile."""
    prof = bench.profile
    if not prof:
        return None
    if "error" in prof:
        return f"{what}: no profile: {prof['error']}"
    total, p50 = prof["ms_per_run"], bench.latency_ms.p50 if bench.latency_ms else None
    share = ""
    if p50:
        why = ("the rest: the runtime's own work per call" if total <= p50 else
               "profiling adds its own cost to each op, which shows on ops this small")
        share = f" vs p50 {p50:.3f} ms unprofiled ({total / p50:.0%}; {why})"
    types = ", ".join(f"{name} {ms / total:.0%}" for name, ms in list(prof["ms_by_op_type"].items())[:top]
                      if total > 0)
    return f"{what}: ops {total:.3f} ms a run{share}; {types}"


def profiles(report: Report) -> list[str]:
    """A profile line per profiled benchmark; for an int8 one, the op types where it spends more
    than its fp32 twin on the same device."""
    out = []
    for a in report.artifacts:
        for b in a.benchmarks:
            line = profile_line(f"{a.target} on {b.device}", b)
            if line is None:
                continue
            twin = twin_benchmark(report.artifacts, a, b)
            if twin and twin.profile and "error" not in twin.profile and "error" not in b.profile:
                theirs = twin.profile["ms_by_op_type"]
                more = sorted(((ms - theirs.get(op, 0.0), op) for op, ms in b.profile["ms_by_op_type"].items()),
                              reverse=True)
                more = [f"{op} +{ms * 1e3:.1f} us" for ms, op in more[:3] if ms > 0]
                line += f"; more than {twin_of(report.artifacts, a).target}: {', '.join(more) or 'none'}"
            out.append(line)
    return out


def _int8_cell(a: Artifact) -> str:
    if a.precision != "int8" or a.int8_share is None:
        return ""
    share = a.int8_share.macs_fraction
    return "?" if share is None else f"{share:.0%}" if share < 0.995 or share == 1 else ">99%"


def _over_budget(report: Report, target: str, device: str) -> bool:
    """A violation of this artifact on this device, or of the artifact itself (size, accuracy)."""
    return report.gate is not None and any(
        v.target == target and v.device in (None, device) for v in report.gate.violations)


def rows(report: Report) -> list[list[str]]:
    """One row per artifact and device: the table both the console and report.md show."""
    float_acc = report.float.accuracy if report.float else None
    metric = report.metric
    out = []
    for a in report.artifacts:
        drop = None if a.accuracy is None or float_acc is None else metric.worsening(float_acc, a.accuracy)
        ratio = size_ratio(report, a)
        common = [
            a.target, a.precision_shown, _int8_cell(a),
            _fmt(a.size_bytes / 1e6 if a.size_bytes else None, ".3f"),
            _fmt(ratio, ".2f", "x") if ratio else "",
            metric.format(a.accuracy), metric.format_drop(drop) if a.precision == "int8" and drop is not None else "",
            _fmt(a.parity.top1_agreement, ".4f") if a.parity and a.parity.top1_agreement is not None else "—",
        ]
        benches = a.benchmarks or [Benchmark(device="—", status=a.status, error=a.error)]
        for b in benches:
            lat = b.latency_ms
            speed = latency_ratio(report, a, b)
            status = a.status if a.status != "ok" else b.status
            if status == "ok" and b.valid is False:
                status = "not valid"
            if status == "ok" and _over_budget(report, a.target, b.device):
                status = "over budget"
            out.append(common + [
                b.device, _fmt(lat.p50 if lat else None, ".3f"), _fmt(lat.p90 if lat else None, ".3f"),
                _fmt(speed, ".2f", "x") if speed else "", _fmt(b.peak_rss_mb, ".0f"), status,
            ])
    return out


HEADERS = ["target", "precision", "int8 MACs", "size MB", "vs fp32", "accuracy", "drop pts", "top1 agree",
           "device", "p50 ms", "p90 ms", "p50 vs fp32", "peak RSS MB", "status"]


def headers(report: Report) -> list[str]:
    """HEADERS, with the accuracy columns named for the report's metric (top1: as always)."""
    metric = report.metric
    if metric.name == "top1":
        return HEADERS
    named = {"accuracy": metric.name, "drop pts": f"worse by ({metric.short_unit})"}
    return [named.get(h, h) for h in HEADERS]


def float_line(report: Report) -> str | None:
    """`float accuracy 0.9940` (top1), `float perplexity 12.31`: the float model's figure."""
    if report.float is None:
        return None
    return f"float {report.metric.label} {report.metric.format(report.float.accuracy)}"


def write_json(report: Report, path: Path) -> None:
    write_atomic(path, report.model_dump_json(indent=2) + "\n")


def markdown(report: Report) -> str:
    lines = [f"# edgeship: {md_text(report.recipe_name)}", ""]
    gate = report.gate
    if gate is not None:
        verdict = "PASSED" if gate.passed else f"FAILED ({len(gate.violations)} budget violations)"
        lines += [f"**Gate: {verdict}** · exit code {report.exit_code}{ExitCode.beside_verdict(report.exit_code)}", ""]
        lines += [f"- ❌ {md_text(v.message)}" for v in gate.violations]
        lines += [""] if gate.violations else []
    failed = [a for a in report.artifacts if a.status != "ok"]
    lines += [f"- ⚠️ {md_code(a.target)} failed: {md_text(a.error)}" for a in failed] + ([""] if failed else [])
    if report.recommendations:
        lines += ["**Recommendation**", ""] + [f"- {md_text(r.statement)}" for r in report.recommendations] + [""]
    if report.float:
        what = md_text(report.metric.label)
        lines += [f"Float {what}: **{report.metric.format(report.float.accuracy)}**", ""]
        lines += [f"- ⚠️ {md_text(report.float.warning)}", ""] if report.float.warning else []
    lines += ["| " + " | ".join(map(md_text, headers(report))) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(map(md_text, r)) + " |" for r in rows(report)]
    found = [line for _, line in said(report)]  # said plainly, under the table
    lines += ([""] + [f"- ⚠️ {md_text(line)}" for line in found]) if found else []
    lines += [""] + analysis_markdown(report)
    lines += ["| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {md_text(s.name)} | {md_text(s.status)} | {s.seconds:.2f} |" for s in report.stages]
    env = report.environment
    host = env.get("host", {})
    lines += ["", md_text(f"torch {env.get('torch')} · executorch {env.get('executorch')} · "
                          f"onnxruntime {env.get('onnxruntime')} · host {host.get('cpu')}, int8 ISA "
                          f"{' '.join(host.get('int8_isa') or []) or '—'}"), ""]
    lines += [f"- measured on {md_text(line)}" for line in machines(report)]
    lines += [f"- between processes: {md_text(line)}" for line in between_processes(report)]
    lines += [f"- profile: {md_text(line)}" for line in profiles(report)]
    lines += [f"- on ARM (emulated): {md_text(line)}" for line in emulated_lines(report)]
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(report: Report, path: Path) -> None:
    write_atomic(path, markdown(report))


def append_step_summary(report: Report) -> None:
    """Append report.md to the file GitHub Actions shows as the step summary, when it is set."""
    summary = os.environ.get("GITHUB_STEP_SUMMARY")
    if summary:
        with open(summary, "a", encoding="utf-8") as f:
            f.write(markdown(report) + "\n")


def emulated_figures(c: EmulatedCheck) -> str:
    """`top-1 agreement with x86 1.0000, 3 of 1280 outputs differ (3 by one step), max abs 0.0312`,
    or the status and why for a check that did not answer."""
    if c.status != "ok":
        return f"{c.status}: {c.error}"
    agreement = "" if c.top1_agreement is None else f"top-1 agreement with x86 {c.top1_agreement:.4f}, "
    steps = "" if c.one_step_outputs is None else f" ({c.one_step_outputs} by one step)"
    return f"{agreement}{c.differing_outputs} of {c.outputs} outputs differ{steps}, max abs {c.max_abs_error:.3g}"


def emulated_lines(report: Report) -> list[str]:
    """Per artifact and emulated device, its answers on ARM against its answers here (x86), and
    against the reference: `onnx-int8 on arm64-emulated (cortex-a76): top-1 agreement with x86
    1.0000, 3 of 1280 outputs differ (3 by one step), max abs 0.0312 (128 samples); top-1
    agreement with the reference 0.9922`."""
    out = []
    for a in report.artifacts:
        for c in a.emulated:
            line = f"{a.target} on {c.device} ({c.cpu}): {emulated_figures(c)}"
            if c.status == "ok":
                line += f" ({c.samples} samples)"
                if c.reference_top1_agreement is not None:
                    line += f"; top-1 agreement with the reference {c.reference_top1_agreement:.4f}"
            out.append(line)
    return out
