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
    # one line naming the user's line and the fix; torch's graph dumps go to a log in the run folder
    line = next(i for i, text in enumerate(MODELS.splitlines(), 1) if "if x.sum() > 0" in text)
    assert failed["error"].startswith(f"export: {tmp_path / 'models.py'}:{line} in forward: "
                                      "`if x.sum() > 0:` decides on a tensor's values"), failed["error"]
    assert "torch.cond" in failed["error"]
    assert "executorch-fp32 failed: export:" in result.stdout
    assert "def forward(self" not in result.stderr
    assert "def forward(self" in (tmp_path / "run" / "edgeship-torch.log").read_text()


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


SOFTMAX_MODEL = '''
from torch import nn
from edgeship.examples.digits import cnn


def probabilities():
    return nn.Sequential(cnn(), nn.Softmax(dim=1))
'''


def test_a_model_answering_probabilities_trained_on_cross_entropy_is_warned_about(tmp_path):
    """A softmax in forward(): cross_entropy applies its own log-softmax, so training fits the
    softmax of probabilities; the float model still learns, slowly, and the run says why."""
    (tmp_path / "models.py").write_text(SOFTMAX_MODEL)
    recipe = demo_recipe(targets=["torchscript-fp32"], fp32_twins=False, budgets=[], devices=[])
    recipe["model"]["factory"] = "models.py:probabilities"
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-2000:]
    float_ = result.report()["float"]
    assert float_["warning"].startswith("the model answers probabilities (its outputs are >= 0 and sum to 1 "
                                        "per sample), and cross_entropy"), float_
    assert float_["train_loss"] > 1.0  # the same CNN on logits ends below 0.01
    assert f"warning: {float_['warning']}" in " ".join(result.stdout.split())


def test_a_failure_is_described_by_its_innermost_cause_without_terminal_colours():
    from edgeship.pipeline.stages import describe

    try:
        try:
            raise LookupError("No ONNX function found for aten._adaptive_avg_pool3d")
        except LookupError as cause:
            raise RuntimeError("Failed to convert. \x1b[96mThis is step 3/3\x1b[0m of exporting") from cause
    except RuntimeError as e:
        said = describe(e)
    assert said == ("LookupError: No ONNX function found for aten._adaptive_avg_pool3d "
                    "(raised as RuntimeError: Failed to convert)")
    assert "\x1b" not in describe(ValueError("\x1b[31mred\x1b[0m"))


def test_fx_tracing_control_flow_names_the_users_line():
    import torch
    from torch import nn

    from edgeship.pipeline.stages import describe

    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:
                return x
            return -x

    try:
        torch.fx.symbolic_trace(Branchy())
    except Exception as e:  # noqa: BLE001 - torch.fx's TraceError
        said = describe(e)
    assert said.startswith(f"{__file__}:") and " in forward: `if x.sum() > 0:` decides on a tensor's values" in said
    assert "(TraceError); rewrite it with torch.cond" in said


def test_an_int8_artifact_unlike_its_quantized_model_fails_with_its_figures():
    import numpy as np
    import pytest
    from torch import nn

    from edgeship.pipeline.values import Source
    from edgeship.pipeline.verify import VerificationFailed, check_parity
    from edgeship.report.schema import Parity
    from edgeship.targets import get_target

    def source(int8_reference: bool) -> Source:
        return Source(nn.Identity(), None, "converted PyTorch model (fx-fbgemm)", np.zeros((4, 3)), "k",
                      int8_reference=int8_reference)

    broken = Parity(reference="converted PyTorch model (fx-fbgemm)", top1_agreement=0.62, max_abs_error=7.5)
    with pytest.raises(VerificationFailed, match=r"top-1 agreement 0.6200 \(at least 0.9 expected"):
        check_parity(get_target("torchscript-fbgemm"), source(True), broken)
    # quantized at export from the float model (onnx-int8): the accuracy budgets judge it
    check_parity(get_target("onnx-int8"), source(False), broken)
    check_parity(get_target("torchscript-fbgemm"), source(True), broken.model_copy(update={"top1_agreement": 0.996}))
