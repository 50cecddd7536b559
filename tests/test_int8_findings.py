"""The `int8 worse:` line: an int8 artifact notably worse than the float model is said under the
table even when no budget gates accuracy (a run without budgets once passed an artifact 88 points
below float); and the `int8 bigger:` line. Pure: the stored demo report (tests/data) with its
figures changed."""

from __future__ import annotations

from html import escape
from pathlib import Path

import pytest
from rich.console import Console

from edgeship.gate.budgets import evaluate
from edgeship.recipe import Budget
from edgeship.report.console import print_console
from edgeship.report.html import html_page
from edgeship.report.load import load_report
from edgeship.report.schema import MetricInfo, Report
from edgeship.report.findings import int8_better, int8_bigger, int8_worse
from edgeship.report.writers import markdown

STORED = Path(__file__).parent / "data" / "report-digits.json"


@pytest.fixture
def report() -> Report:
    report = load_report(STORED)
    report.float.accuracy = 0.9457
    report.artifact("torchscript-fbgemm").accuracy = 0.0604  # what torch 2.13's int8 PReLU gave
    return report


def test_an_int8_artifact_far_below_float_is_said_in_every_report(report):
    (line,) = int8_worse(report)  # the other int8 artifacts are 0.9960: better than float
    assert line == ("torchscript-fbgemm is 88.53 points worse than the float model (accuracy 0.0604 vs "
                    "0.9457); no budget limits it: max_accuracy_drop would gate on it")
    assert report.gate.passed and report.exit_code == 0  # said, not gated: exit 1 is a budget's
    assert f"- ⚠️ {line}" in markdown(report).splitlines()
    console = Console(record=True, width=400)
    print_console(report, console)
    assert f"int8 worse: {line}" in console.export_text().splitlines()
    assert escape(line) in html_page(report, [])


def test_a_point_or_less_is_what_int8_costs_and_is_not_said(report):
    report.artifact("torchscript-fbgemm").accuracy = 0.9357  # 1.00 point
    assert int8_worse(report) == []
    report.artifact("torchscript-fbgemm").accuracy = 0.9356
    assert [line.split(" is ")[0] for line in int8_worse(report)] == ["torchscript-fbgemm"]


def test_fp32_artifacts_and_failed_ones_are_not_said(report):
    report.artifact("onnx-fp32").accuracy = 0.10
    report.artifact("onnx-int8").accuracy = None  # failed: its error is said elsewhere
    assert [line.split(" is ")[0] for line in int8_worse(report)] == ["torchscript-fbgemm"]


@pytest.mark.parametrize("budget, said", [
    (Budget(max_accuracy_drop=1.0), False),  # the gate names the violation
    (Budget(max_accuracy_drop=95.0), False),  # passed: the user chose the limit
    (Budget(min_accuracy=0.05), False),
    (Budget(targets=["torchscript-fbgemm"], max_size_mb=100.0), True),  # limits size, not accuracy
    (Budget(targets=["onnx-int8"], max_accuracy_drop=1.0), True),  # another target's
])
def test_an_accuracy_budget_on_the_target_speaks_instead(report, budget, said):
    report.budgets = [budget.model_dump(mode="json", exclude_none=True)]
    report.gate = evaluate([budget], report)
    assert bool(int8_worse(report)) is said


def test_other_metrics_are_said_past_a_tenth_of_floats_value(report):
    report.metric = MetricInfo(name="mse", higher_is_better=False, drop_scale=1.0)
    report.float.accuracy = 0.0200
    for a in report.artifacts:
        a.accuracy = 0.0210  # 5% worse: int8's usual cost
    report.artifact("executorch-xnnpack").accuracy = 0.0260
    (line,) = int8_worse(report)
    assert line.startswith("executorch-xnnpack is 30% worse than the float model (mse 0.026 vs 0.02); ")


def test_an_int8_artifact_larger_than_its_fp32_twin_is_said(report):
    assert int8_bigger(report) == []  # the stored run's int8 artifacts are a third of fp32's size
    fp32 = report.artifact("executorch-fp32").size_bytes
    report.artifact("executorch-xnnpack").size_bytes = int(fp32 * 1.66)
    (line,) = int8_bigger(report)
    assert line == (f"executorch-xnnpack is 1.66x the size of executorch-fp32 ({fp32 * 1.66 / 1e6:.3f} vs "
                    f"{fp32 / 1e6:.3f} MB)")
    assert f"- ⚠️ {line}" in markdown(report).splitlines()
    console = Console(record=True, width=400)
    print_console(report, console)
    assert f"int8 bigger: {line}" in console.export_text().splitlines()


def _history(shipped_epoch: int) -> dict:
    epochs = [{"epoch": e, "accuracy": 0.70 + 0.05 * e} for e in range(3)]
    return {"split": "calibration", "epochs": epochs, "shipped": "qat", "shipped_epoch": shipped_epoch}


def test_int8_after_qat_far_above_an_under_trained_float_model_is_said(report):
    report.float.accuracy = 0.6962  # a video net trained too briefly; QAT went on training it
    for a in report.artifacts:
        a.accuracy = 0.6962
    fine_tuned = report.artifact("onnx-int8")
    fine_tuned.accuracy = 0.8310
    fine_tuned.details["quantization"] = {"qat_history": _history(shipped_epoch=2)}
    (line,) = int8_better(report)
    assert line.startswith("onnx-int8 is 13.48 points better than the float model (accuracy 0.8310 vs 0.6962): "
                           "QAT's fine-tune improved the model itself")
    calibrated = report.artifact("executorch-xnnpack")  # not fine-tuned: a gain is no sign of it
    calibrated.accuracy = 0.8310
    calibrated.details["quantization"] = {"qat_history": _history(shipped_epoch=0)}
    assert [line.split(" is ")[0] for line in int8_better(report)] == ["onnx-int8"]
    assert f"- ⚠️ {line}" in markdown(report).splitlines()


@pytest.mark.parametrize(("batch_norms", "said"), [(3, True), (0, False), (None, True)])
def test_stale_batch_norm_statistics_are_named_only_for_a_model_with_batch_norm(report, batch_norms, said):
    report.float.accuracy, report.float.batch_norms = 0.6962, batch_norms
    fine_tuned = report.artifact("onnx-int8")
    fine_tuned.accuracy = 0.8310
    fine_tuned.details["quantization"] = {"qat_history": _history(shipped_epoch=2)}
    (line,) = int8_better(report)
    assert ("batch-norm running statistics" in line) is said
    assert line.endswith("under-trained (model.train)") is not said


def test_the_recommendation_leaves_out_an_artifact_notably_worse_than_float(report):
    from edgeship.gate.recommend import recommend

    p50 = {a.target: a.benchmarks[0].latency_ms.p50 for a in report.artifacts}
    fastest = min(p50, key=p50.get)
    report.artifact(fastest).accuracy = 0.0604
    report.artifact("torchscript-fbgemm").accuracy = 0.9457 if fastest != "torchscript-fbgemm" else 0.0604
    (chosen,) = recommend([], report)
    assert chosen.target != fastest and chosen.target is not None, chosen
    assert chosen.statement.endswith(f"measured; not {fastest}, 88.53 points worse than the float model)")
    for a in report.artifacts:  # every int8 one, and the fp32 ones gone too: nothing to ship
        a.accuracy = 0.0604
    report.artifacts = [a for a in report.artifacts if a.precision == "int8"]
    (none,) = recommend([], report)
    assert none.target is None and none.statement.startswith("local: no artifact to ship; not ")
