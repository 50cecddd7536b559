"""A target that cannot be built, or an artifact that answers NaN, is recorded with the reason;
the other targets go on; the run exits 3."""

from __future__ import annotations

from support import demo_recipe, run_cli, write_recipe

MODELS = '''
import torch
from torch import nn

class BranchyNet(nn.Module):
    """Data-dependent control flow: tracing keeps one branch, torch.export refuses it."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        x = torch.flatten(x, 1)
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)

class NanNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc(x) / (x.sum(dim=1, keepdim=True) - x.sum(dim=1, keepdim=True))

class HalvesNet(nn.Module):
    """An `if` on tensor values that real samples take both ways: top half of the digit brighter
    than the bottom half, or not. Tracing keeps the branch of the example input."""
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)
    def forward(self, x):
        x = torch.flatten(x, 1)
        if x[:, :32].sum() > x[:, 32:].sum():
            return self.fc(x)
        return -self.fc(x)

def branchy():
    return BranchyNet()

def halves():
    return HalvesNet()

def nan_net():
    return NanNet()
'''


def _recipe(tmp_path, factory: str, targets: list[str]) -> dict:
    (tmp_path / "models.py").write_text(MODELS)
    recipe = demo_recipe(targets=targets, fp32_twins=False, budgets=[])
    recipe["model"] = {"factory": f"models.py:{factory}",
                       "example_inputs": [{"shape": [1, 1, 8, 8]}], "train": {"epochs": 1}}
    recipe["data"]["kwargs"] = {"limit": 64}
    return recipe


def test_export_failure_is_recorded_and_other_targets_go_on(tmp_path):
    recipe = _recipe(tmp_path, "branchy", ["torchscript-fp32", "executorch-fp32"])
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 3, result.stderr[-2000:]
    artifacts = {a["target"]: a for a in result.report()["artifacts"]}
    assert artifacts["torchscript-fp32"]["status"] == "ok"
    assert artifacts["torchscript-fp32"]["benchmarks"][0]["status"] == "ok"
    failed = artifacts["executorch-fp32"]
    assert failed["status"] == "failed" and failed["path"] is None
    assert failed["error"].startswith("export: ")
    assert "data-dependent" in failed["error"].lower() or "guard" in failed["error"].lower(), failed["error"]
    assert "executorch-fp32 failed: export:" in result.stdout


def test_nan_outputs_fail_verification(tmp_path):
    recipe = _recipe(tmp_path, "nan_net", ["onnx-fp32"])
    recipe["model"].pop("train")
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 3
    (artifact,) = result.report()["artifacts"]
    assert artifact["status"] == "failed"
    assert artifact["error"] == "verify: NaN or Inf in the outputs of 64 of 64 test samples"
    assert artifact["benchmarks"] == []



def test_a_twin_that_does_not_answer_as_the_float_model_fails_verification(tmp_path):
    """Tracing baked in one branch: the TorchScript twin runs, but answers unlike the float model
    on every sample that takes the other branch. It fails with its figures, is not benchmarked and
    not recommended. (torch.export, under the ONNX exporter, refuses the `if` outright.)"""
    recipe = _recipe(tmp_path, "halves", ["torchscript-fp32", "onnx-fp32"])
    recipe["model"].pop("train")
    recipe["data"]["kwargs"] = {"limit": 200}
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 3, result.stderr[-2000:]
    report = result.report()
    artifacts = {a["target"]: a for a in report["artifacts"]}
    traced = artifacts["torchscript-fp32"]
    assert traced["status"] == "failed" and traced["benchmarks"] == []
    assert traced["error"].startswith("verify: does not answer as the float model it was exported "
                                      "from: top-1 agreement 0."), traced["error"]
    assert "(at least 0.99 expected of an fp32 export)" in traced["error"]
    assert artifacts["onnx-fp32"]["error"].startswith("export: ")
    assert [r["target"] for r in report["recommendations"]] == [None]


def test_a_float_model_at_chance_is_warned_about_before_quantization(tmp_path):
    """An untrained model answers at chance: every artifact matches it, the gate may pass, and
    quantization would get the blame; the run says so in the console, report.json and report.md."""
    recipe = demo_recipe(targets=["torchscript-fp32"], fp32_twins=False, budgets=[])
    recipe["model"].pop("train")
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-2000:]
    warning = result.report()["float"]["warning"]
    assert warning.startswith("the float model answers near chance: top-1 0."), warning
    assert "it has not learned the task" in warning
    assert f"warning: {warning}" in " ".join(result.stdout.split())
    assert warning in (tmp_path / "run" / "report.md").read_text()


def test_a_trained_float_model_gets_no_warning(tmp_path):
    recipe = demo_recipe(targets=["torchscript-fp32"], fp32_twins=False, budgets=[])
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-2000:]
    assert result.report()["float"]["accuracy"] > 0.9
    assert result.report()["float"]["warning"] is None
