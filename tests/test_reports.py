"""junit.xml, report.html (in a real headless Chromium), the recommendation and report.md, from
the stored demo report (tests/data) with budgets chosen to pass or fail."""

from __future__ import annotations

import json
import re
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from edgeship.gate.budgets import checks, evaluate
from edgeship.pipeline.runfolder import MARKER
from edgeship.recipe import Budget
from edgeship.report.html import html_page
from edgeship.report.junit import junit_xml
from edgeship.gate.recommend import recommend
from edgeship.report.schema import Report
from edgeship.report.writers import append_step_summary, markdown
from browser import chromium, open_page  # noqa: F401  (chromium is a fixture)

STORED = Path(__file__).parent / "data" / "report-digits.json"
TIGHT = [Budget(max_size_mb=0.105, max_latency_p50_ms=0.03), Budget(max_regression=["size:2%"])]


def stored() -> Report:
    return Report.model_validate(json.loads(STORED.read_text()))


def gated(budgets: list[Budget], report: Report | None = None, baseline: Report | None = None) -> Report:
    report = report or stored()
    report.budgets = [b.model_dump(mode="json", exclude_none=True) for b in budgets]
    report.gate = evaluate(budgets, report, baseline)
    report.recommendations = recommend(budgets, report, baseline)
    report.exit_code = 0 if report.gate.passed else 1
    return report


def _junit(budgets: list[Budget], report: Report, baseline: Report | None = None) -> ET.Element:
    return ET.fromstring(junit_xml(report, list(checks(budgets, report, baseline))))


# --- junit.xml ------------------------------------------------------------------------------

def test_junit_counts_match_the_gate():
    report = gated(TIGHT)
    root = _junit(TIGHT, report)
    budgets, artifacts = root.findall("testsuite")
    assert budgets.get("name") == "edgeship.digits-cnn.budgets"
    cases = budgets.findall("testcase")
    # 4 int8 targets × (max_size_mb, max_latency_p50_ms[local], size:2% skipped: no baseline)
    assert len(cases) == int(budgets.get("tests")) == 12
    assert int(budgets.get("failures")) == len(report.gate.violations) == 5
    assert int(budgets.get("skipped")) == 4 and budgets.get("errors") == "0"
    assert [c.find("failure").get("message") for c in cases if c.find("failure") is not None] == \
        [v.message for v in report.gate.violations]
    assert len(artifacts.findall("testcase")) == int(artifacts.get("tests")) == 7 * 2
    assert artifacts.get("failures") == "0"
    totals = {k: sum(int(s.get(k)) for s in (budgets, artifacts)) for k in ("tests", "failures", "errors")}
    assert totals == {k: int(root.get(k)) for k in totals}
    assert root.get("skipped") is None  # junit-10.xsd has no such attribute on <testsuites>
    for element in [root, budgets, artifacts]:
        assert float(element.get("time")) >= 0


def test_a_failing_budget_case_carries_measured_value_and_limit():
    report = gated(TIGHT)
    root = _junit(TIGHT, report)
    case = root.find(".//testcase[@name='max_latency_p50_ms[local] (budgets[0])']"
                     "[@classname='edgeship.digits-cnn.torchscript-qnnpack']")
    failure = case.find("failure")
    p50 = report.artifact("torchscript-qnnpack").benchmarks[0].latency_ms.p50
    assert failure.get("message") == f"torchscript-qnnpack on local: latency p50 {p50:.3f} ms > max_latency_p50_ms 0.03"
    assert failure.get("type") == "max_latency_p50_ms"
    assert f"measured: {p50:g}" in failure.text and "limit: 0.03" in failure.text
    passing = root.find(".//testcase[@classname='edgeship.digits-cnn.onnx-int8']"
                        "[@name='max_latency_p50_ms[local] (budgets[0])']")
    assert [child.tag for child in passing] == ["system-out"]  # the figures, not a verdict
    onnx_p50 = report.artifact("onnx-int8").benchmarks[0].latency_ms.p50
    assert passing.find("system-out").text == f"measured: {onnx_p50:g}\nlimit: at most 0.03"


JUNIT_XSD = Path(__file__).parent / "data" / "junit-10.xsd"  # Jenkins xunit-plugin's, MIT


@pytest.mark.parametrize("budgets", [[Budget(max_size_mb=1)], TIGHT], ids=["passing", "failing"])
def test_junit_validates_against_jenkins_schema_and_parses_with_junitparser(budgets, tmp_path):
    import junitparser
    import xmlschema

    report = gated(budgets)
    report.recipe_name = "<script>alert(1)</script> | [/] \x07\x1b"  # control characters too
    path = tmp_path / "junit.xml"
    path.write_text(junit_xml(report, list(checks(budgets, report, None))))
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(path))
    xml = junitparser.JUnitXml.fromfile(str(path))
    cases = [case for suite in xml for case in suite]
    failed = [c for c in cases if c.result and isinstance(c.result[0], junitparser.Failure)]
    assert len(failed) == len(report.gate.violations) == (0 if report.gate.passed else 5)
    passed = [c for c in cases if c.is_passed and "benchmark[" in c.name]
    assert passed and all("p50 ms: " in c.system_out for c in passed)
    assert "\\x07\\x1b" in path.read_text()  # written as their codes, not raw


def test_junit_names_with_one_budget_and_a_baseline():
    budgets = [Budget(max_latency_p90_ms=100, max_regression=["median:5%"])]
    report = gated(budgets, baseline=stored())
    names = {c.get("name") for c in _junit(budgets, report, stored()).iter("testcase")
             if c.get("classname") == "edgeship.digits-cnn.onnx-int8"}
    assert names == {"max_latency_p90_ms[local]", "median:5%[local]", "export+verify", "benchmark[local]"}


def test_junit_failed_artifact_and_benchmark():
    report = stored()
    a = report.artifact("executorch-xnnpack")
    a.status, a.error, a.benchmarks = "failed", "export: Unsupported op <aten::foo> & co", []
    b = report.artifact("onnx-fp32").benchmarks[0]
    b.status, b.error = "timeout", "no result in 120 s"
    report = gated([Budget(max_size_mb=1)], report)
    root = _junit([Budget(max_size_mb=1)], report)
    artifacts = root.findall("testsuite")[1]
    assert (artifacts.get("failures"), artifacts.get("errors")) == ("1", "1")
    failure = root.find(".//testcase[@classname='edgeship.digits-cnn.executorch-xnnpack'][@name='export+verify']/failure")
    assert failure.get("message") == "executorch-xnnpack failed: export: Unsupported op <aten::foo> & co"
    error = root.find(".//testcase[@classname='edgeship.digits-cnn.onnx-fp32'][@name='benchmark[local]']/error")
    assert error.get("type") == "timeout" and "no result in 120 s" in error.get("message")


# --- recommendation and report.md ----------------------------------------------------------

def test_recommendation_is_the_fastest_artifact_meeting_every_budget():
    (r,) = recommend([Budget(max_size_mb=0.2)], stored())
    assert (r.device, r.target, r.meeting, r.candidates) == ("local", "executorch-xnnpack", 4, 7)
    # fp32 twins count once a budget names them, and must fit it too
    (r,) = recommend([Budget(max_latency_p50_ms=0.026)], stored())
    assert r.target == "executorch-xnnpack"
    (r,) = recommend([Budget(max_accuracy_drop=0.1, max_latency_p50_ms=1)], stored())
    assert r.target == "executorch-xnnpack" and r.meeting == 6  # fbgemm lost 0.2 points


def test_no_artifact_meets_every_budget_names_the_closest():
    (r,) = recommend([Budget(max_size_mb=0.1, max_latency_p50_ms=0.01)], stored())
    assert r.target is None and r.meeting == 0
    assert r.closest.target == "torchscript-qnnpack" and r.closest.limit_name == "max_size_mb"
    assert r.closest.excess == pytest.approx(102381 / 1e5 - 1)
    assert r.statement == ("local: no artifact meets every budget; the closest to it: torchscript-qnnpack: "
                           "size 0.102 MB > max_size_mb 0.1 (2.4% past its limit)")


def test_markdown_puts_violations_first_then_the_recommendation(tmp_path, monkeypatch):
    report = gated(TIGHT)
    text = markdown(report)
    assert text.index("❌ torchscript-fbgemm: size 0.108 MB > max_size_mb 0.105") < \
        text.index("**Recommendation**") < text.index("| target |")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(summary))
    append_step_summary(report)
    assert summary.read_text() == "earlier step\n" + text + "\n"


# --- report.html ----------------------------------------------------------------------------

def test_html_escapes_text_and_loads_nothing_from_elsewhere():
    report = stored()
    report.recipe_name = "<script>alert(1)</script>"
    report.artifact("onnx-int8").status, report.artifact("onnx-int8").error = "failed", "bad <op> & \"q\""
    page = html_page(gated([Budget(max_size_mb=1)], report), [Budget(max_size_mb=1)])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "bad &lt;op&gt; &amp; &#34;q&#34;" in page  # Jinja2's autoescape
    assert not re.search(r"(src|href)=\"(?!data:image/png;base64,)", page)
    assert page.count('<img alt="') == 3


def test_the_check_itself_sees_a_broken_image_and_a_console_error(chromium, tmp_path):
    page = ('<!DOCTYPE html><html><head><meta http-equiv="Content-Security-Policy" content="'
            "default-src 'none'; img-src data:\"><title>t</title></head><body>"
            '<img alt="broken" src="data:image/png;base64,AAAA"><img alt="remote" src="http://example.invalid/a.png">'
            "<script>undefinedFunction()</script></body></html>")
    title, console = open_page(chromium, page, tmp_path)
    assert title == 'IMAGES 2 BAD ["broken","remote"]'
    assert any("Uncaught ReferenceError" in line for line in console)
    assert any("violates the following Content Security Policy" in line for line in console)


@pytest.mark.parametrize("budgets", [[], TIGHT], ids=["stored", "tight"])
def test_report_html_renders_in_chromium(chromium, tmp_path, budgets):
    baseline = stored() if budgets else None
    report = gated(budgets, baseline=baseline)
    page = html_page(report, budgets, baseline)
    title, console = open_page(chromium, page, tmp_path)
    assert title == "IMAGES 3 BAD []", title
    assert console == []
    if budgets:
        assert "Gate FAILED: 5 budget violations" in page
        # per artifact and device, the change against the baseline (no samples stored: untested)
        assert "<h2>Against the baseline</h2>" in page and page.count("<td class=\"text\">not tested</td>") == 7
        assert page.count('<tr class="bad">') >= 4  # the rows over budget
    else:
        assert "Against the baseline" not in page


# --- the real pipeline ----------------------------------------------------------------------

@pytest.mark.slow
def test_a_run_writes_junit_and_html_and_a_tightened_gate_fails(demo_run, tmp_path):
    """The demo run passes with its own budgets; its report re-gated with a tightened size budget
    fails with exit 1 and names the violation in the console, report.md and junit.xml."""
    from support import demo_recipe, run_cli, write_recipe

    assert demo_run.code == 0, demo_run.stderr
    out = demo_run.out
    report = demo_run.report()
    assert report["budgets"] == demo_recipe()["budgets"]
    assert [r["device"] for r in report["recommendations"]] == ["local"]
    root = ET.fromstring((out / "junit.xml").read_text())
    assert root.get("failures") == "0" and int(root.get("tests")) > 0
    import xmlschema
    xmlschema.XMLSchema(str(JUNIT_XSD)).validate(str(out / "junit.xml"))
    page = (out / "report.html").read_text()
    # accuracy vs latency, the ECDF of the raw samples, size, QAT's epochs
    assert page.count('src="data:image/png;base64,') == 4
    assert '<img alt="latency ECDF on local"' in page and '<img alt="the metric after each QAT epoch' in page
    assert "<h2>Load, first inference, memory</h2>" in page and "RSS growth MB" in page
    assert "<h2>What each runtime runs (ONNX ops, XNNPACK delegation)</h2>" in page and "QuantizeLinear" in page
    assert "max_latency_p90_ms 20 ms is a p90 limit, not drawn on this p50 axis" in page
    assert "<h2>Where the time goes (per-op profiles)</h2>" in page and "QLinearConv" in page
    assert "<h2>Devices as measured</h2>" in page and "int8 ISA" in page
    recorded = json.loads((out / MARKER).read_text())["files"]
    assert {"junit.xml", "report.html", "report.samples.npz"} <= set(recorded)
    assert (out / "report.samples.npz").stat().st_size > 10_000
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    sizes = [a["size_bytes"] for a in report["artifacts"] if a["precision"] == "int8"]
    limit = min(sizes) / 1e6 * 0.999
    tight = write_recipe(tmp_path, demo_recipe(budgets=[{"max_size_mb": limit}]))
    result = run_cli("gate", str(copy / "report.json"), "--recipe", str(tight), "--write")
    assert result.code == 1, result.stderr
    smallest = min(report["artifacts"], key=lambda a: a["size_bytes"])["target"]
    assert f"budget violated: {smallest}: size" in result.stdout
    assert f"❌ {smallest}: size" in (copy / "report.md").read_text()
    failures = [f.get("message") for f in ET.fromstring((copy / "junit.xml").read_text()).iter("failure")]
    assert len(failures) == len(sizes) and any(m.startswith(f"{smallest}: size") for m in failures)
    # gate --write rewrote the samples beside the report: compare reads them, the same samples
    same = run_cli("compare", str(out / "report.json"), str(copy / "report.json"), "--format", "json")
    verdicts = [d["verdict"] for t in json.loads(same.stdout)["targets"] for d in t["devices"]]
    assert verdicts == ["no change"] * 7, same.stdout[-2000:]


# --- the console ------------------------------------------------------------------------------

def test_the_run_table_fits_100_columns_and_marks_rows_over_budget():
    """A 100-column terminal gets two tables that fit, nothing cut to `…`; a row whose artifact
    broke a budget says so in its status, in the console, report.md and report.html alike."""
    import io

    from rich.console import Console

    from edgeship.report.console import print_console

    report = gated(TIGHT)
    buffer = io.StringIO()
    print_console(report, Console(file=buffer, width=100, color_system=None))
    text = buffer.getvalue()
    tables = text.split("float accuracy")[0]  # the verdict's sentences below are soft-wrapped
    assert max(len(line) for line in tables.splitlines()) <= 100 and "…" not in tables, tables
    over = {v.target for v in report.gate.violations}
    for line in text.splitlines():
        if line.strip().split(" ")[0] in over and "local" in line:
            assert line.rstrip().endswith("over budget"), line
    assert "onnx-fp32            local" in text and "over budget" not in [
        line for line in text.splitlines() if line.strip().startswith("onnx-fp32")][-1]
    assert "| over budget |" in markdown(report)
    assert "<td class=\"text\">over budget</td>" in html_page(report, TIGHT)
    wide = io.StringIO()
    print_console(report, Console(file=wide, width=200, color_system=None))
    assert "· artifacts" not in wide.getvalue()  # one table where it fits


# --- the plots' text --------------------------------------------------------------------------

def _overlapping_texts(fig) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of `fig` (titles, tick labels, axis labels, legend
    entries) whose drawn bounding boxes intersect."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()
             and t.get_figure() is not None]
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    return [(a, b) for i, (a, box_a) in enumerate(boxes) for b, box_b in boxes[i + 1:]
            if box_a.width and box_b.width and box_a.overlaps(box_b)]


@pytest.mark.parametrize("budgets", [[], TIGHT, [Budget(max_latency_p90_ms=20, min_accuracy=0.9)]],
                         ids=["none", "tight", "demo"])
def test_accuracy_vs_latency_labels_never_overlap(budgets):
    """Seven artifacts, six of them at one accuracy and within 0.1 ms (the demo's case that
    printed six labels over each other), with budget lines in and off the scale."""
    from edgeship.report.plots import accuracy_vs_latency_figure

    report = gated(budgets)
    fig, notes = accuracy_vs_latency_figure(report, budgets)
    assert _overlapping_texts(fig) == []
    low, high = fig.axes[0].get_xlim()
    p50s = [b.latency_ms.p50 for a in report.artifacts for b in a.benchmarks]
    assert fig.axes[0].get_xscale() == "log" and low < min(p50s) and high < 10 * max(p50s)
    if budgets and budgets[0].max_latency_p90_ms:
        assert notes == ["local: max_latency_p90_ms 20 ms is a p90 limit, not drawn on this p50 axis",
                         "local: min_accuracy 0.9 (90 as plotted) is off the scale"]
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert sum(text.startswith(("torchscript-", "onnx-", "executorch-")) for text in legend) == 7


def test_the_check_for_overlap_sees_overlapping_labels():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.annotate("torchscript-fbgemm", (0.5, 0.5))
    ax.annotate("torchscript-qnnpack", (0.5, 0.5))
    assert _overlapping_texts(fig) == [("torchscript-fbgemm", "torchscript-qnnpack")]
    plt.close(fig)


def test_latency_ecdf_tick_labels_never_overlap():
    """The demo's spread: 0.02 to 0.7 ms over seven artifacts, where matplotlib's own log labels
    (3×10⁻², 4×10⁻², ...) printed over each other."""
    from edgeship.report.sample_plots import latency_ecdf_figure

    rng = np.random.default_rng(0)
    series = [(f"artifact-{i}", list(low * (1 + rng.exponential(0.3, 500))))
              for i, low in enumerate([0.021, 0.028, 0.042, 0.049, 0.061, 0.13, 0.146])]
    fig = latency_ecdf_figure(series, "latency of every timed run on local")
    assert fig.axes[0].get_xscale() == "log" and _overlapping_texts(fig) == []


def test_the_qat_plot_of_a_flat_accuracy_stays_at_or_below_100():
    import matplotlib.pyplot as plt

    from edgeship.report.sample_plots import qat_history_figure

    fig = qat_history_figure([("fx-fbgemm", [(0, 99.5), (1, 99.5), (2, 99.5)], 0)], "accuracy", 100.0)
    low, high = fig.axes[0].get_ylim()
    assert 98.5 <= low < 99.5 < high <= 100.2  # matplotlib alone drew 95.5 to 103.5
    plt.close(fig)
