"""Post-training quantization alone (QAT off), through the Python API; and a budget that fails."""

from __future__ import annotations

import edgeship
from edgeship.recipe import parse_recipe
from support import demo_recipe, run_cli, write_recipe


def test_ptq_keeps_accuracy_within_a_point(tmp_path):
    data = demo_recipe(targets=["torchscript-fbgemm", "onnx-int8"])
    data["quantization"]["qat"]["enabled"] = False
    recipe = parse_recipe(data, "ptq", tmp_path)
    report = edgeship.run(recipe, tmp_path / "run", quiet=True)
    assert report.exit_code == 0, report.gate
    stages = {s.name: s for s in report.stages}
    assert stages["qat"].status == "skipped"
    assert "post-training quantization" in stages["qat"].detail
    for name in ("torchscript-fbgemm", "onnx-int8"):
        artifact = report.artifact(name)
        assert (report.float.accuracy - artifact.accuracy) * 100 <= 1.0, (name, artifact.accuracy)
    assert sorted(a.target for a in report.artifacts) == [
        "onnx-fp32", "onnx-int8", "torchscript-fbgemm", "torchscript-fp32"]


def test_a_tightened_budget_fails_with_exit_1_and_names_the_violation(tmp_path):
    data = demo_recipe(targets=["onnx-int8"], fp32_twins=False,
                       budgets=[{"devices": ["local"], "max_latency_p90_ms": 0.0001},
                                {"max_size_mb": 0.5}])
    data["quantization"]["qat"]["enabled"] = False
    result = run_cli("run", str(write_recipe(tmp_path, data)), out=tmp_path / "run")
    assert result.code == 1, result.stderr[-2000:]
    gate = result.report()["gate"]
    assert gate["passed"] is False
    (violation,) = gate["violations"]
    assert violation["target"] == "onnx-int8" and violation["device"] == "local"
    assert violation["limit_name"] == "max_latency_p90_ms" and violation["limit"] == 0.0001
    assert violation["measured"] > 0.0001
    assert violation["message"].startswith("onnx-int8 on local: latency p90 ")
    assert violation["message"].endswith(" ms > max_latency_p90_ms 0.0001")
    assert f"budget violated: {violation['message']}" in result.stdout
    md = (result.out / "report.md").read_text()
    assert "**Gate: FAILED (1 budget violations)**" in md
    assert f"- ❌ {violation['message']}" in md
