"""Baseline budgets (`max_regression`), `edgeship gate` and `edgeship compare`, on the stored demo
report (tests/data) and copies of it changed on purpose: pure functions and the real CLI."""

from __future__ import annotations

import doctest
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from edgeship.benchmarks.stats import latency_summary, median_ratio
from edgeship.errors import UserError
from edgeship import regression as expressions
from edgeship.gate.budgets import Outcome, checks, evaluate
from edgeship.recipe import Budget, parse_recipe
from edgeship.report import compare as diff
from edgeship.report import plots
from edgeship.report.load import load_report
from edgeship.report.publish import publish
from edgeship.report.schema import Latency, Report
from support import demo_recipe, run_cli, write_recipe

STORED = Path(__file__).parent / "data" / "report-digits.json"


def stored() -> Report:
    return Report.model_validate(json.loads(STORED.read_text()))


def changed(**artifact_changes) -> Report:
    """The stored report with `target=function(artifact)` applied to a copy."""
    report = stored()
    for target, change in artifact_changes.items():
        change(report.artifact(target.replace("_", "-")))
    return report


def grow(factor: float):
    def change(a):
        a.size_bytes = round(a.size_bytes * factor)
    return change


def slow(factor: float):
    def change(a):
        lat = a.benchmarks[0].latency_ms
        lat.p50, lat.p90, lat.mean = lat.p50 * factor, lat.p90 * factor, lat.mean * factor
    return change


def test_docstring_examples_run():
    for module in (expressions, plots):
        assert doctest.testmod(module).failed == 0


@pytest.mark.parametrize("text, metric, amount, unit", [
    ("median:5%", "median", 5, "%"), ("p90:3%", "p90", 3, "%"), ("mean:5%", "mean", 5, "%"),
    ("size:2%", "size", 2, "%"), ("peak_rss:10%", "peak_rss", 10, "%"),
    ("accuracy:-0.5", "accuracy", -0.5, ""), ("median:0.2ms", "median", 0.2, "ms"),
    ("size:0.01MB", "size", 0.01, "MB"),
])
def test_expressions_parse(text, metric, amount, unit):
    rule = expressions.parse(text)
    assert (rule.metric.value, rule.amount, rule.unit, rule.text) == (metric, amount, unit, text)


@pytest.mark.parametrize("text, why", [
    ("median5%", "not a 'metric:amount' expression"), ("latency:5%", "unknown metric 'latency'"),
    ("accuracy:0.5", "written negative"), ("size:-2%", "not negative"), ("median:2MB", "median takes '%' or 'ms'"),
])
def test_a_malformed_expression_names_the_accepted_forms(text, why):
    with pytest.raises(expressions.ExpressionError) as e:
        expressions.parse(text)
    assert why in str(e.value) and expressions.ACCEPTED_FORMS in str(e.value)


def test_a_malformed_expression_in_a_recipe_has_its_key_path():
    recipe = demo_recipe(budgets=[{"max_size_mb": 1}, {"max_regression": ["size:2%", "median=5%"]}])
    with pytest.raises(UserError) as e:
        parse_recipe(recipe, "r.toml", Path())
    (line,) = str(e.value).splitlines()
    assert line.startswith("r.toml: budgets[1].max_regression: not a 'metric:amount' expression in "
                           "'median=5%'; accepted forms: median:5% or median:0.2ms")


def test_a_budget_of_only_regressions_is_valid_and_the_new_limits_count():
    assert Budget(max_regression=["size:2%"]).limits() == {}
    assert Budget(max_latency_p50_ms=1, min_accuracy=0.9).limits() == {"min_accuracy": 0.9,
                                                                       "max_latency_p50_ms": 1}
    with pytest.raises(ValueError, match="min_accuracy"):
        Budget(min_accuracy=99.5)  # a fraction, like the report's accuracies


def test_absolute_p50_and_min_accuracy():
    report = stored()
    fbgemm = report.artifact("torchscript-fbgemm")
    p50 = fbgemm.benchmarks[0].latency_ms.p50
    gate = evaluate([Budget(targets=["torchscript-fbgemm"], min_accuracy=0.995,
                            max_latency_p50_ms=p50 * 0.9)], report)
    assert [v.message for v in gate.violations] == [
        f"torchscript-fbgemm: accuracy {fbgemm.accuracy:.4f} < min_accuracy 0.995",
        f"torchscript-fbgemm on local: latency p50 {p50:.3f} ms > max_latency_p50_ms {p50 * 0.9:g}"]
    assert evaluate([Budget(min_accuracy=0.99, max_latency_p50_ms=1)], report).passed


def test_a_model_made_larger_is_flagged_by_size_regression():
    budget = Budget(max_regression=["size:2%"])
    gate = evaluate([budget], changed(onnx_int8=grow(1.10)), baseline=stored())
    (v,) = gate.violations
    old = stored().artifact("onnx-int8").size_bytes
    assert (v.target, v.limit_name, v.baseline) == ("onnx-int8", "size:2%", old)
    assert v.measured == round(old * 1.1) and v.limit == pytest.approx(old * 1.02)
    assert v.message == f"onnx-int8: size {round(old * 1.1)} bytes is +10.0% vs baseline {old} bytes > size:2%"


def test_the_same_report_is_not_flagged_against_itself():
    budget = Budget(max_regression=["median:5%", "p90:3%", "mean:5%", "size:2%", "peak_rss:10%",
                                    "accuracy:-0.5", "median:0.001ms"])
    found = list(checks([budget], stored(), stored()))
    assert len(found) == 4 * 7 and all(c.outcome is Outcome.PASSED for c in found)
    assert evaluate([budget], stored(), stored()).passed


def test_latency_regression_message():
    report = changed(onnx_int8=slow(1.071))

    def p50(r: Report) -> float:
        return r.artifact("onnx-int8").benchmarks[0].latency_ms.p50

    new, old = p50(report), p50(stored())
    (v,) = evaluate([Budget(targets=["onnx-int8"], max_regression=["median:5%"])], report, stored()).violations
    assert v.message == f"onnx-int8 on local: median {new:.3f} ms is +7.1% vs baseline {old:.3f} ms > median:5%"
    budget = Budget(targets=["onnx-int8"], max_regression=["median:0.001ms"])
    (v,) = evaluate([budget], report, stored()).violations
    assert v.message.endswith(f"ms is +{new - old:.3f} ms vs baseline {old:.3f} ms > median:0.001ms")


def test_accuracy_regression_in_points():
    def lose(a):
        a.accuracy -= 0.006  # 0.6 points
    report = changed(executorch_xnnpack=lose)
    (v,) = evaluate([Budget(max_regression=["accuracy:-0.5"])], report, stored()).violations
    assert v.message == ("executorch-xnnpack: accuracy 0.9900 is -0.60 points vs baseline 0.9960 "
                         "< accuracy:-0.5")
    assert evaluate([Budget(max_regression=["accuracy:-0.7"])], report, stored()).passed


def test_without_a_baseline_regressions_are_skipped_not_violated():
    budget = Budget(max_regression=["size:2%"])
    assert evaluate([budget], changed(onnx_int8=grow(2.0))).passed
    assert {c.outcome for c in checks([budget], stored())} == {Outcome.SKIPPED}


def test_a_baseline_of_another_model_names_the_mismatch():
    other = stored()
    other.recipe_name = "mobilenet"
    with pytest.raises(UserError) as e:
        evaluate([Budget(max_size_mb=1)], stored(), other)
    assert str(e.value) == ("the baseline report does not match this one: it is a report of recipe "
                            "'mobilenet', this one of 'digits-cnn'")


def test_a_baseline_without_the_targets_or_devices_names_them():
    old = stored()
    old.artifacts = [a for a in old.artifacts if a.target != "onnx-int8"]
    old.artifact("executorch-xnnpack").benchmarks[0].device = "rpi5"
    with pytest.raises(UserError) as e:
        evaluate([Budget(max_regression=["median:5%"])], stored(), old)
    message = str(e.value)
    assert "no artifact for target onnx-int8 (it has: torchscript-fbgemm" in message
    assert "no benchmark of executorch-xnnpack on device local" in message
    assert len(message.splitlines()) == 1


def with_samples(report: Report, seed: int = 0, n: int = 20_000) -> Report:
    """Raw samples for each benchmark of a report that has none (the stored one predates them),
    shaped like a runner's: a narrow peak at the p50 and a few multi-millisecond outliers."""
    rng = np.random.default_rng(seed)
    for bench in (b for a in report.artifacts for b in a.benchmarks if b.latency_ms):
        samples = bench.latency_ms.p50 * rng.lognormal(0, 0.05, n)
        samples[rng.choice(n, 40, replace=False)] += rng.uniform(4, 8, 40)
        bench.samples_ms = samples.tolist()
        bench.latency_ms = Latency(**latency_summary(bench.samples_ms))
    return report


def shift(ms: float = 0.0, factor: float = 1.0):
    """A change of an artifact: every latency sample times `factor`, plus `ms`."""
    def change(a):
        bench = a.benchmarks[0]
        bench.samples_ms = [s * factor + ms for s in bench.samples_ms]
        bench.latency_ms = Latency(**latency_summary(bench.samples_ms))
    return change


def sampled(seed: int = 0, **artifact_changes) -> Report:
    report = with_samples(stored(), seed)
    for target, change in artifact_changes.items():
        change(report.artifact(target.replace("_", "-")))
    return report


def test_the_latency_test_reads_the_samples_not_the_stdev():
    # The case: 0.2 ms added to each sample of one artifact. Forty outliers make the
    # stdev larger than the whole shift; the old rule (|Δp50| > max stdev) called it noise.
    a, b = sampled(0), sampled(1, torchscript_fbgemm=shift(ms=0.2), onnx_int8=grow(1.10))
    by_target = {t.target: t for t in diff.compare(a, b).targets}
    fbgemm = by_target["torchscript-fbgemm"].devices[0]
    assert fbgemm.p50_ms.delta == pytest.approx(0.2, rel=0.02)
    assert b.artifact("torchscript-fbgemm").benchmarks[0].latency_ms.stdev > 0.2
    assert fbgemm.verdict == "slower" and fbgemm.p50_test.low > 5
    assert by_target["onnx-int8"].devices[0].verdict == "no change"  # only the size changed
    ten = diff.compare(a, sampled(1, executorch_xnnpack=shift(factor=1.10))).targets
    xnnpack = next(t for t in ten if t.target == "executorch-xnnpack").devices[0]
    assert xnnpack.verdict == "slower" and 1.09 < xnnpack.p50_test.low < 1.10 < xnnpack.p50_test.high
    faster = diff.compare(a, sampled(1, executorch_xnnpack=shift(factor=0.9))).targets
    assert next(t for t in faster if t.target == "executorch-xnnpack").devices[0].verdict == "faster"
    same = diff.compare(a, a).targets
    assert {d.verdict for t in same for d in t.devices} == {"no change"}


def test_a_change_under_three_percent_is_no_change_however_sure():
    # Two runs of the same artifacts differ by up to ~2.5% on one host (the demo twice, 5 Dec
    # 2026), with intervals that exclude 1: a 2% shift is real within the runs and still noise
    # between them.
    a = sampled(0)
    shifted = diff.compare(a, sampled(1, executorch_xnnpack=shift(factor=1.02))).targets
    xnnpack = next(t for t in shifted if t.target == "executorch-xnnpack").devices[0]
    assert xnnpack.p50_test.low > 1.01 and xnnpack.verdict == "no change"
    four = diff.compare(a, sampled(1, executorch_xnnpack=shift(factor=1.04))).targets
    assert next(t for t in four if t.target == "executorch-xnnpack").devices[0].verdict == "slower"


def test_no_samples_no_verdict():
    comparison = diff.compare(stored(), changed(torchscript_fbgemm=slow(2.0)))
    fbgemm = next(t for t in comparison.targets if t.target == "torchscript-fbgemm").devices[0]
    assert fbgemm.p50_ms.ratio == pytest.approx(2.0) and fbgemm.verdict is None


def test_the_exact_bootstrap_of_the_median_matches_resampling():
    """The interval drawn from the exact distribution of a resample's median agrees with plain
    resampling (scipy's bootstrap, percentile method) on skewed data of an odd and an even size."""
    rng = np.random.default_rng(7)
    for n in (401, 400):
        a, b = rng.lognormal(0, 0.3, n), 1.05 * rng.lognormal(0, 0.3, n)
        ours = median_ratio(a, b)
        theirs = scipy_stats.bootstrap((a, b), lambda x, y: np.median(y) / np.median(x),
                                       method="percentile", n_resamples=20_000, random_state=1,
                                       vectorized=False).confidence_interval
        assert ours.low == pytest.approx(theirs.low, abs=0.01)
        assert ours.high == pytest.approx(theirs.high, abs=0.01)
        assert ours.ratio == pytest.approx(np.median(b) / np.median(a))


def test_compare_notes_what_the_table_cannot_show():
    b = stored()
    b.recipe_name = "other"
    b.artifacts = [a for a in b.artifacts if a.target != "onnx-fp32"]
    b.artifact("onnx-int8").status = "failed"
    assert diff.notes(diff.compare(stored(), b)) == [
        "the reports are of different recipes: A 'digits-cnn', B 'other'", "onnx-fp32 is only in A",
        "onnx-int8 is ok in A and failed in B"]


# --- through the real CLI -------------------------------------------------------------------

def _write(tmp_path: Path, report: Report, name: str) -> Path:
    path = tmp_path / name
    path.write_text(report.model_dump_json(indent=1))
    return path


def test_cli_gate_on_the_stored_report_passes(tmp_path):
    result = run_cli("gate", str(STORED))
    assert result.code == 0, result.stderr
    assert "no budgets in the report: nothing to check" in result.stdout
    assert "gate PASSED · exit code 0" in result.stdout


def test_cli_gate_with_a_tight_recipe_fails_and_writes_nothing(tmp_path):
    before = STORED.read_bytes()
    recipe = write_recipe(tmp_path, demo_recipe(budgets=[{"max_size_mb": 0.105}]))
    result = run_cli("gate", str(STORED), "--recipe", str(recipe))
    assert result.code == 1, result.stderr
    assert "budget violated: onnx-int8: size 0.107 MB > max_size_mb 0.105" in result.stdout
    assert "gate FAILED · exit code 1" in result.stdout
    assert STORED.read_bytes() == before


def test_cli_gate_uses_the_reports_own_budgets_and_write_rewrites(tmp_path):
    report = stored()
    report.budgets = [{"max_regression": ["size:2%"]}]
    path = _write(tmp_path, report, "report.json")
    baseline = _write(tmp_path, changed(), "old.json")
    assert run_cli("gate", str(path), "--baseline", str(baseline)).code == 0
    bigger = changed(onnx_int8=grow(1.10))
    bigger.budgets = report.budgets
    path = _write(tmp_path, bigger, "report.json")
    result = run_cli("gate", str(path), "--baseline", str(baseline), "--write")
    assert result.code == 1, result.stderr
    assert "onnx-int8: size" in result.stdout and "> size:2%" in result.stdout
    written = json.loads(path.read_text())
    assert written["gate"]["passed"] is False and written["exit_code"] == 1
    assert "size:2%" in (tmp_path / "junit.xml").read_text()
    assert (tmp_path / "report.html").read_text().startswith("<!DOCTYPE html>")


@pytest.mark.parametrize("content, expected", [
    ('{"name": "package.json"}', "not an edgeship report: it has no edgeship_version"),
    ("[1, 2", "not an edgeship report: not valid JSON"),
    ('{"edgeship_version": "7.0.0"}', "report of edgeship 7.0.0, incompatible with this edgeship"),
    ('{"edgeship_version": "0.1.0", "recipe_name": 3}', "not a valid edgeship report: "),
])
def test_cli_gate_rejects_what_is_not_an_edgeship_report(tmp_path, content, expected):
    path = tmp_path / "other.json"
    path.write_text(content)
    result = run_cli("gate", str(path))
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: ") and expected in line, line


def test_cli_baseline_of_another_model_exits_2(tmp_path):
    other = stored()
    other.recipe_name = "mobilenet"
    result = run_cli("gate", str(STORED), "--baseline", str(_write(tmp_path, other, "old.json")))
    assert result.code == 2
    assert "recipe 'mobilenet', this one of 'digits-cnn'" in result.stderr


def test_cli_compare(tmp_path):
    b = _write(tmp_path, changed(onnx_int8=grow(1.10)), "b.json")
    result = run_cli("compare", str(STORED), str(b))
    assert result.code == 0, result.stderr
    line = next(x for x in result.stdout.splitlines() if "onnx-int8 " in x)
    size = stored().artifact("onnx-int8").size_bytes
    assert f"{size} → {round(size * 1.1)}" in line and "1.100x" in line
    rows = [x for x in result.stdout.splitlines() if " local " in x]
    assert len(rows) == 7 and all("— (no samples)" in x for x in rows)  # the stored one has none
    assert run_cli("compare", str(STORED), str(tmp_path / "missing.json")).code == 2


def _published(folder: Path, report: Report, name: str) -> Path:
    folder.mkdir(exist_ok=True)
    return publish(report, [], [], folder, json_name=name)[0]


def test_cli_compare_fails_on_a_regression_the_samples_show(tmp_path):
    a = _published(tmp_path, sampled(0), "a.json")
    slower = _published(tmp_path, sampled(1, torchscript_fbgemm=shift(ms=0.2)), "b.json")
    result = run_cli("compare", str(a), str(slower), "--fail-on", "median:5%")
    assert result.code == 1, result.stdout + result.stderr
    rows = {x.split()[0]: x.split() for x in result.stdout.splitlines() if " local " in x}
    assert rows["torchscript-fbgemm"][5:7] == ["5.614x", "5.608–5.619"]  # 0.043 → 0.243 ms
    assert rows["torchscript-fbgemm"][7] == "slower"
    assert "regression: torchscript-fbgemm on local: median 0.24" in result.stdout
    same = run_cli("compare", str(a), str(a), "--fail-on", "median:5%")
    assert same.code == 0, same.stdout + same.stderr
    rows = [x for x in same.stdout.splitlines() if " local " in x]
    assert len(rows) == 7 and all("no change" in x for x in rows)
    assert "--fail-on: all 7 checks passed" in same.stdout


def test_cli_compare_fits_100_columns_and_speaks_md_and_json(tmp_path):
    a_report, b_report = sampled(0), sampled(1, executorch_xnnpack=shift(factor=1.10))
    for report in (a_report, b_report):  # the longest device name shipped
        report.devices = [report.devices[0].model_copy(update={"name": "android-arm64"})]
        for artifact in report.artifacts:
            artifact.benchmarks[0].device = "android-arm64"
    a, b = _published(tmp_path, a_report, "a.json"), _published(tmp_path, b_report, "b.json")
    env_columns = run_cli("compare", str(a), str(b), "--fail-on", "median:5%")
    assert env_columns.code == 1
    lines = env_columns.stdout.splitlines()
    table = [x for x in lines if x.startswith(("torchscript", "onnx", "executorch"))]
    assert len(table) == 14 and max(map(len, table)) <= 100 and "…" not in env_columns.stdout
    md = run_cli("compare", str(a), str(b), "--format", "md")
    assert md.code == 0 and "| executorch-xnnpack | android-arm64 | " in md.stdout
    assert "| slower |" in md.stdout and md.stdout.startswith("# edgeship compare: digits-cnn")
    data = json.loads(run_cli("compare", str(a), str(b), "--format", "json", "--fail-on",
                              "median:5%").stdout)
    xnnpack = next(t for t in data["targets"] if t["target"] == "executorch-xnnpack")["devices"][0]
    assert xnnpack["verdict"] == "slower" and 1.09 < xnnpack["p50_test"]["low"] < 1.10
    assert [c["target"] for c in data["checks"] if not c["passed"]] == ["executorch-xnnpack"]


def test_cli_compare_refuses_a_bad_fail_on_expression(tmp_path):
    result = run_cli("compare", str(STORED), str(STORED), "--fail-on", "median:fast")
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --fail-on: not a 'metric:amount' expression in 'median:fast'")


def test_samples_live_beside_the_report(tmp_path):
    report = sampled(0)
    path = _published(tmp_path, report, "report.json")
    stored_json = json.loads(path.read_text())
    assert stored_json["samples_file"] == "report.samples.npz"
    assert all(b["samples_ms"] == [] and b["samples_key"] for a in stored_json["artifacts"]
               for b in a["benchmarks"])
    assert path.stat().st_size < 40_000  # 7 x 20,000 samples are in the archive
    again = load_report(path)
    for before, after in zip(report.artifacts, again.artifacts, strict=True):
        assert after.benchmarks[0].samples_ms == before.benchmarks[0].samples_ms
    (tmp_path / "report.samples.npz").unlink()  # a report copied without its samples: no verdict
    assert load_report(path).artifacts[0].benchmarks[0].samples_ms == []


@pytest.mark.parametrize("damage, expected", [
    (lambda p: p.write_bytes(b"not a zip"), "report.samples.npz: not a samples archive numpy can read"),
    (lambda p: np.savez(p, other=np.ones(3)), "report.samples.npz: has no samples 'a0b0'"),
])
def test_a_damaged_samples_file_is_bad_input(tmp_path, damage, expected):
    path = _published(tmp_path, sampled(0), "report.json")
    damage(tmp_path / "report.samples.npz")
    result = run_cli("compare", str(path), str(path))
    assert result.code == 2, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert expected in line, line


def test_a_samples_file_outside_the_reports_folder_is_refused(tmp_path):
    report = stored()
    report.samples_file = "../elsewhere.npz"
    result = run_cli("gate", str(_write(tmp_path, report, "report.json")))
    assert result.code == 2
    assert "samples_file '../elsewhere.npz': must name a file beside the report" in result.stderr


def _stored_with(change) -> str:
    data = json.loads(STORED.read_text())
    change(data)
    return json.dumps(data)


def _set(path: str, value):
    """A change of the stored report's JSON: `artifacts.0.size_bytes` set to `value`."""
    def change(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[int(last) if last.isdigit() else last] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (_set("artifacts.2.size_bytes", 10**400),
     "artifacts[2].size_bytes: an integer of 1329 bits, not a finite number within ±2^63"),
    (_set("artifacts.0.accuracy", "NaN"), "artifacts[0].accuracy: nan, not a finite number"),
    (_set("artifacts.0.benchmarks.0.latency_ms.p50", float("inf")),
     "artifacts[0].benchmarks[0].latency_ms.p50: inf, not a finite number"),
    (_set("artifacts.1.target", "onnx-int4"), "artifacts[1].target: unknown target 'onnx-int4'; known: "),
    (_set("float", [{"accuracy": 0.9}]), "float: Input should be a valid dictionary"),
])
@pytest.mark.parametrize("command", ["gate", "compare"])
def test_cli_rejects_reports_no_edgeship_wrote_in_one_line(tmp_path, change, expected, command):
    path = tmp_path / "crafted.json"
    path.write_text(_stored_with(change))
    args = ("gate", str(path)) if command == "gate" else ("compare", str(STORED), str(path))
    result = run_cli(*args)
    assert result.code == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: {path}: not a valid edgeship report: ") and expected in line, line


def test_cli_gate_refuses_a_budget_on_a_target_the_report_lacks(tmp_path):
    report = stored()
    report.artifacts = [a for a in report.artifacts if a.target != "executorch-xnnpack"]
    path = _write(tmp_path, report, "report.json")
    recipe = write_recipe(tmp_path, demo_recipe(budgets=[{"targets": ["executorch-xnnpack"],
                                                          "max_size_mb": 1}]))
    result = run_cli("gate", str(path), "--recipe", str(recipe))
    assert result.code == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (
        f"error: recipe {recipe}: budgets[0].targets: 'executorch-xnnpack' not in the report; its "
        "targets: torchscript-fbgemm, torchscript-qnnpack, onnx-int8, torchscript-fp32, onnx-fp32, "
        "executorch-fp32")


def test_cli_gate_refuses_a_budget_on_a_device_the_report_lacks(tmp_path):
    recipe = write_recipe(tmp_path, demo_recipe(budgets=[{"devices": ["rpi5"], "max_latency_p90_ms": 1}]))
    result = run_cli("gate", str(STORED), "--recipe", str(recipe))
    assert result.code == 2, result.stdout + result.stderr
    assert result.stderr.strip() == (f"error: recipe {recipe}: budgets[0].devices: 'rpi5' not in the "
                                     "report; its devices: local")
