"""Budgets against a stored demo report (tests/data): pure, no pipeline run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeship.gate.budgets import evaluate
from edgeship.recipe import Budget
from edgeship.report.schema import Report

STORED = Path(__file__).parent / "data" / "report-digits.json"


@pytest.fixture
def report() -> Report:
    return Report.model_validate(json.loads(STORED.read_text()))


def test_stored_report_passes_generous_budgets(report):
    gate = evaluate([Budget(max_accuracy_drop=1.0, max_size_mb=1.0, max_latency_p90_ms=100)], report)
    assert gate.passed and gate.violations == []


def test_budgets_apply_to_int8_targets_unless_named(report):
    size = {a.target: a.size_bytes / 1e6 for a in report.artifacts}
    limit = max(v for k, v in size.items() if k in ("onnx-int8", "executorch-xnnpack",
                                                     "torchscript-fbgemm", "torchscript-qnnpack"))
    assert evaluate([Budget(max_size_mb=limit)], report).passed  # fp32 twins are not gated
    gate = evaluate([Budget(targets=["onnx-fp32"], max_size_mb=limit)], report)
    (v,) = gate.violations
    assert (v.target, v.limit_name, v.measured) == ("onnx-fp32", "max_size_mb", size["onnx-fp32"])
    assert v.message == f"onnx-fp32: size {size['onnx-fp32']:.3f} MB > max_size_mb {limit:g}"


def test_accuracy_drop_is_in_points(report):
    artifact = report.artifact("torchscript-fbgemm")
    drop = (report.float.accuracy - artifact.accuracy) * 100
    assert drop > 0  # the stored run lost one test image on fbgemm
    budget = Budget(targets=["torchscript-fbgemm"], max_accuracy_drop=drop / 2)
    (v,) = evaluate([budget], report).violations
    assert v.measured == pytest.approx(drop)
    assert evaluate([Budget(targets=["torchscript-fbgemm"], max_accuracy_drop=drop + 1e-9)], report).passed


def test_a_benchmark_that_is_not_valid_cannot_pass_a_latency_budget(report):
    bench = report.artifact("onnx-int8").benchmarks[0]
    bench.valid, bench.invalid_reasons = False, ["3 iterations < min_iterations 100"]
    (v,) = evaluate([Budget(targets=["onnx-int8"], max_latency_p90_ms=1e6)], report).violations
    assert v.message == ("onnx-int8 on local: latency p90 benchmark not valid: "
                         "3 iterations < min_iterations 100")


def test_a_missing_or_failed_measurement_is_a_violation(report):
    gate = evaluate([Budget(targets=["onnx-int8"], devices=["rpi5"], max_latency_p90_ms=10)], report)
    (v,) = gate.violations
    assert v.device == "rpi5" and "not measured: benchmark missing" in v.message
    artifact = report.artifact("executorch-xnnpack")
    artifact.status, artifact.accuracy, artifact.size_bytes = "failed", None, None
    messages = [v.message for v in evaluate([Budget(max_accuracy_drop=1, max_size_mb=1)], report).violations]
    assert messages == ["executorch-xnnpack: accuracy drop not measured: the artifact failed",
                        "executorch-xnnpack: size not measured: the artifact failed"]


def test_docstring_examples_run():
    import doctest

    from edgeship import config
    from edgeship.gate import decide

    for module in (config, decide):
        assert doctest.testmod(module).failed == 0


def test_a_run_with_no_device_fails_every_per_device_limit_by_name(report):
    """`devices = []`: there is no benchmark row to check, yet a latency or RSS budget was set;
    nobody measured the figure, so it is a violation, never a silent pass."""
    report.devices = []
    for artifact in report.artifacts:
        artifact.benchmarks = []
    budget = Budget(targets=["onnx-int8"], max_size_mb=1, max_latency_p90_ms=10, max_peak_rss_mb=500,
                    max_regression=["median:5%"])
    gate = evaluate([budget], report)
    assert [(v.limit_name, v.device, v.measured) for v in gate.violations] == \
        [("max_latency_p90_ms", None, None), ("max_peak_rss_mb", None, None)]
    assert gate.violations[0].message == (
        "onnx-int8: latency p90 not measured: the run has no device to measure it on (recipe "
        "`devices` is empty); budgets[0].max_latency_p90_ms 10")
    assert evaluate([Budget(targets=["onnx-int8"], max_size_mb=1)], report).passed  # not per device


def test_a_run_on_emulated_devices_only_fails_a_latency_limit_saying_so(report):
    from edgeship.devices.profile import load_profile
    from edgeship.report.schema import DeviceFacts

    report.devices = [DeviceFacts.model_validate(load_profile("arm64-emulated").model_dump())]
    for artifact in report.artifacts:
        artifact.benchmarks = []
    gate = evaluate([Budget(targets=["onnx-int8"], max_latency_p90_ms=10)], report)
    assert [v.message for v in gate.violations] == [
        "onnx-int8: latency p90 not measured: the run has no device to measure it on (its devices "
        "are emulated: arm64-emulated; an emulator's timings are not valid); "
        "budgets[0].max_latency_p90_ms 10"]
