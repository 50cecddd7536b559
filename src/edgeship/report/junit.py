"""junit.xml: what a CI system shows as tests. Two suites:

- `edgeship.<recipe>.budgets`: one test case per budget check (budget × target × device × limit),
  classname `edgeship.<recipe>.<target>`, name `<limit>[<device>]` (`max_latency_p90_ms[local]`,
  `median:5%[local]`, `max_size_mb`); a failed check is a <failure> whose message is the
  violation's, carrying the measured value and the limit; a regression limit with no baseline is
  <skipped>. Its failure count is the gate's violation count.
- `edgeship.<recipe>.artifacts`: per artifact, one case `export+verify` (a failed artifact is a
  <failure> with the reason), and one `benchmark[<device>]` per benchmark (failed, crashed or timed
  out: <error>; skipped: <skipped>).

The layout is the common JUnit one that Jenkins, GitLab and GitHub reporters read, valid against
Jenkins xunit's junit-10.xsd (tests/data; no `skipped` on <testsuites>, which that schema
rejects): testsuites > testsuite (tests, failures, errors, skipped, time) > testcase. Every case,
passing ones too, carries what was measured in <system-out> (a check's measured value and
limit, a benchmark's p50/p90, an artifact's size and metric), so CI shows the figures beside the
verdict.
"""

from __future__ import annotations

import platform
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from edgeship.fileio import write_atomic
from edgeship.gate.budgets import Check, Outcome
from edgeship.gate.file_budgets import BENCHMARK_LIMITS
from edgeship.report.schema import Artifact, Benchmark, ModelBenchReport, Report


# Characters XML 1.0 forbids even escaped (C0 controls but tab and newlines, lone surrogates,
# U+FFFE/U+FFFF): ElementTree writes them as they are, and no XML parser reads the file then.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """`text` with each character XML cannot hold written as its code (`\\x1b`)."""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 0x100
                        else f"\\u{ord(m.group()):04x}", text)


def _element(parent: ET.Element, tag: str, **attributes: str) -> ET.Element:
    return ET.SubElement(parent, tag, {k: xml_text(v) for k, v in attributes.items()})


@dataclass
class _Case:
    classname: str
    name: str
    kind: str = "passed"  # passed, failure, error, skipped
    message: str = ""
    detail: str = ""
    type: str = ""
    seconds: float = 0.0
    out: str = ""  # the figures behind the verdict, as <system-out>


def _check_figures(check: Check) -> str:
    measured = "not measured" if check.measured is None else f"{check.measured:g}"
    word = "at most" if check.upper else "at least"
    lines = [f"measured: {measured}", f"limit: {word} {check.limit:g}"]
    return "\n".join(lines + ([f"baseline: {check.baseline:g}"] if check.baseline is not None else []))


def _check_case(recipe: str, check: Check, several_budgets: bool) -> _Case:
    name = check.limit_name + (f"[{check.device}]" if check.device else "")
    if several_budgets:
        name += f" (budgets[{check.budget}])"
    case = _Case(f"edgeship.{recipe}.{check.target}", name, out=_check_figures(check))
    if check.outcome is Outcome.SKIPPED:
        case.kind, case.message = "skipped", check.message
    elif check.outcome is Outcome.FAILED:
        measured = "not measured" if check.measured is None else f"{check.measured:g}"
        detail = [check.message, f"measured: {measured}", f"limit: {check.limit:g}"]
        if check.baseline is not None:
            detail.append(f"baseline: {check.baseline:g}")
        case.kind, case.message, case.type = "failure", check.message, check.limit_name
        case.detail = "\n".join(detail + [f"budget: budgets[{check.budget}]"])
    return case


def _artifact_figures(artifact: Artifact, report: Report) -> str:
    lines = [f"size bytes: {artifact.size_bytes}"] if artifact.size_bytes else []
    if artifact.accuracy is not None:  # the recipe's metric, whatever its name
        lines.append(f"{report.metric.name}: {artifact.accuracy:g}")
    return "\n".join(lines)


def benchmark_figures(b: Benchmark) -> str:
    if not b.latency_ms:
        return ""
    lat = b.latency_ms
    lines = [f"p50 ms: {lat.p50:g}", f"p90 ms: {lat.p90:g}", f"iterations: {b.iterations}"]
    return "\n".join(lines + ([f"peak RSS MB: {b.peak_rss_mb:g}"] if b.peak_rss_mb else []))


def _artifact_cases(report: Report) -> list[_Case]:
    cases = []
    for a in report.artifacts:
        classname = f"edgeship.{report.recipe_name}.{a.target}"
        case = _Case(classname, "export+verify", out=_artifact_figures(a, report))
        if a.status != "ok":
            case.kind, case.type, case.message = "failure", a.status, f"{a.target} {a.status}: {a.error}"
        cases.append(case)
        for b in a.benchmarks:
            case = _Case(classname, f"benchmark[{b.device}]", seconds=b.seconds or 0.0,
                         out=benchmark_figures(b))
            if b.status == "skipped":
                case.kind, case.message = "skipped", b.error or "skipped"
            elif b.status != "ok":
                case.kind, case.type = "error", b.status
                case.message = f"{a.target} on {b.device}: benchmark {b.status}: {b.error}"
            cases.append(case)
    return cases


def _suite(parent: ET.Element, name: str, cases: list[_Case], seconds: float) -> None:
    count = {k: sum(c.kind == k for c in cases) for k in ("failure", "error", "skipped")}
    suite = _element(parent, "testsuite", name=name, tests=str(len(cases)),
                     failures=str(count["failure"]), errors=str(count["error"]),
                     skipped=str(count["skipped"]), time=f"{seconds:.3f}", hostname=platform.node(),
                     timestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"))
    for c in cases:
        element = _element(suite, "testcase", classname=c.classname, name=c.name,
                           time=f"{c.seconds:.3f}")
        if c.kind != "passed":
            child = _element(element, c.kind, message=c.message)
            if c.type:
                child.set("type", xml_text(c.type))
            if c.detail:
                child.text = xml_text(c.detail)
        if c.out:
            _element(element, "system-out").text = xml_text(c.out)


def junit_xml(report: Report, checks: list[Check]) -> str:
    """The junit.xml text of a report and every budget check made on it (gate.budgets.checks)."""
    several = len({c.budget for c in checks}) > 1
    budget_cases = [_check_case(report.recipe_name, c, several) for c in checks]
    artifact_cases = _artifact_cases(report)
    cases = budget_cases + artifact_cases
    root = ET.Element("testsuites", name=xml_text(f"edgeship.{report.recipe_name}"), tests=str(len(cases)),
                      failures=str(sum(c.kind == "failure" for c in cases)),
                      errors=str(sum(c.kind == "error" for c in cases)),
                      time=f"{report.wall_seconds or 0.0:.3f}")
    gate_seconds = next((s.seconds for s in report.stages if s.name == "gate"), 0.0)
    bench_seconds = sum(c.seconds for c in artifact_cases)
    _suite(root, f"edgeship.{report.recipe_name}.budgets", budget_cases, gate_seconds)
    _suite(root, f"edgeship.{report.recipe_name}.artifacts", artifact_cases, bench_seconds)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: Report, checks: list[Check], path: Path) -> None:
    write_atomic(path, junit_xml(report, checks))


def _limit_case(report: ModelBenchReport, case_name: str, name: str, limit: float, where: str,
                measured: float | None) -> _Case:
    """A budget's case: failed when a violation of `name` whose message starts with `where`."""
    shown = "not measured" if measured is None else f"{measured:g}"
    case = _Case(f"edgeship.bench.{Path(report.model).name}", case_name,
                 out=f"measured: {shown}\nlimit: at most {limit:g}")
    broken = next((v for v in report.gate.violations if v.limit_name == name
                   and v.message.startswith(where)), None)
    if broken is not None:
        case.kind, case.type, case.message = "failure", name, broken.message
        case.detail = f"{broken.message}\nlimit: {limit:g}"
    return case


def model_bench_junit(report: ModelBenchReport) -> str:
    """junit.xml of `edgeship bench MODEL`: one suite, per input set a `benchmark[<device>]` case
    (error when the runtime failed, skipped when the device lacks it) and a case per command-line
    budget (failure when violated or not measured)."""
    model = Path(report.model).name
    cases = []
    for run in report.runs:
        b, shapes = run.benchmark, " ".join(run.inputs)
        case = _Case(f"edgeship.bench.{model}", f"benchmark[{b.device}] {shapes}", seconds=b.seconds or 0.0,
                     out=benchmark_figures(b))
        if b.status == "skipped":
            case.kind, case.message = "skipped", b.error or "skipped"
        elif b.status != "ok":
            case.kind, case.type, case.message = "error", b.status, f"{model} on {b.device}: {b.error}"
        cases.append(case)
        for name, limit in report.limits.items():
            if name in BENCHMARK_LIMITS:
                measured = BENCHMARK_LIMITS[name][1](b) if b.status == "ok" else None
                cases.append(_limit_case(report, f"{name}[{b.device}] {shapes}", name, limit,
                                         f"{b.device} {shapes}:", measured))
    if "max_size_mb" in report.limits:
        cases.append(_limit_case(report, "max_size_mb", "max_size_mb", report.limits["max_size_mb"], "",
                                 report.size_bytes / 1e6))
    root = ET.Element("testsuites", name=xml_text(f"edgeship.bench.{model}"), tests=str(len(cases)),
                      failures=str(sum(c.kind == "failure" for c in cases)),
                      errors=str(sum(c.kind == "error" for c in cases)),
                      time=f"{sum(c.seconds for c in cases):.3f}")
    _suite(root, f"edgeship.bench.{model}", cases, sum(c.seconds for c in cases))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
