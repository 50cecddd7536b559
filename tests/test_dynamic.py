"""Dynamic quantization (int8 weights, activations quantized at run time) on every target, chosen
per target in the recipe; refused before any training for a model it cannot help."""

from __future__ import annotations

import pytest

import edgeship
from edgeship.errors import UserError
from edgeship.recipe import parse_recipe
from support import demo_recipe

MODELS = '''
from torch import nn

def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
'''


def _recipe(tmp_path, **quantization) -> dict:
    (tmp_path / "models.py").write_text(MODELS)
    data = demo_recipe(budgets=[{"max_accuracy_drop": 1.0}])
    data["model"] = {"factory": "models.py:mlp", "example_inputs": [{"shape": [1, 1, 8, 8]}],
                     "train": {"epochs": 5, "lr": 0.003}}
    data["quantization"] = quantization
    return data


@pytest.mark.slow
def test_dynamic_int8_on_every_target_and_static_beside_it(tmp_path):
    data = _recipe(tmp_path, mode="dynamic", modes={"torchscript-qnnpack": "static"},
                   calibration_batches=2, qat={"enabled": False}, float_layers=["3"])
    report = edgeship.run(parse_recipe(data, "dyn", tmp_path), tmp_path / "run", quiet=True)
    assert report.exit_code == 0, (report.gate, [a.error for a in report.artifacts])
    modes = {a.target: a.details["quantization"]["mode"] for a in report.artifacts if a.precision == "int8"}
    assert modes == {"torchscript-fbgemm": "dynamic", "torchscript-qnnpack": "static",
                     "onnx-int8": "dynamic", "executorch-xnnpack": "dynamic"}
    stages = {s.name: s for s in report.stages}
    assert stages["quantize-dynamic"].status == "ok" and stages["calibrate"].status == "ok"
    for target in modes:
        artifact = report.artifact(target)
        assert (report.float.accuracy - artifact.accuracy) * 100 <= 1.0, target
    assert report.artifact("onnx-int8").parity.reference == "float model (quantized after export)"
    per_channel = {t: report.artifact(t).details["quantization"]["per_channel"] for t in modes}
    assert per_channel == {"torchscript-fbgemm": False, "torchscript-qnnpack": True, "onnx-int8": False,
                           "executorch-xnnpack": True}  # dynamic paths: their runtime's default
    kept = {t: report.artifact(t).details["quantization"]["float_layers_recipe"] for t in modes}
    assert kept == dict.fromkeys(modes, ["3"])  # the classifier, float in every mode
    onnx_ops = report.artifact("onnx-int8").details["onnx_ops"]
    assert onnx_ops["DynamicQuantizeLinear"] == 1 and onnx_ops["MatMulInteger"] == 1 and "QuantizeLinear" not in onnx_ops
    delegated = report.artifact("executorch-xnnpack").details["delegation"]["delegated_ops"]
    assert delegated["aten_linear_default"] == 2  # both run by XNNPACK, one of them float
    assert delegated["quantized_decomposed_choose_qparams_tensor"] == 1  # run-time activation ranges
    for target in modes:
        share = report.artifact(target).int8_share
        assert 0.5 < share.macs_fraction < 1.0, (target, share)  # the classifier: 1,280 of 9,472 MACs
        assert "named in the recipe's quantization.float_layers" in str(share.float_ops), (target, share)
    # the PyTorch reference answers at the artifact's batch (1): activation ranges are the batch's
    fbgemm = report.artifact("torchscript-fbgemm").parity
    assert fbgemm.top1_agreement == 1.0 and fbgemm.max_abs_error < 1e-4, fbgemm
    # int8 weights but the float classifier's (5 KB of 40)
    assert report.artifact("onnx-int8").size_bytes <= 0.45 * report.artifact("onnx-fp32").size_bytes


def test_dynamic_on_a_model_without_linear_layers_is_refused_before_training(tmp_path):
    data = _recipe(tmp_path, mode="dynamic")
    data["model"] = {"factory": "models.py:convs", "example_inputs": [{"shape": [1, 1, 8, 8]}],
                     "train": {"epochs": 50}}
    (tmp_path / "models.py").write_text(MODELS + "\ndef convs():\n    return nn.Sequential("
                                        "nn.Conv2d(1, 10, 8), nn.Flatten())\n")
    with pytest.raises(UserError, match=r"quantization.mode dynamic \(torchscript-fbgemm, "
                                        r"torchscript-qnnpack, onnx-int8, executorch-xnnpack\): "
                                        r"the model has no Linear, LSTM or GRU layer"):
        edgeship.run(parse_recipe(data, "dyn", tmp_path), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run" / "report.json").exists()


def test_modes_must_name_int8_targets_of_the_recipe(tmp_path):
    data = _recipe(tmp_path, modes={"onnx-fp32": "dynamic"})
    with pytest.raises(UserError, match=r"quantization.modes: 'onnx-fp32' is not an int8 target of "
                                        r"this recipe; its int8 targets: torchscript-fbgemm"):
        parse_recipe(data, "dyn", tmp_path)


def test_a_dynamic_modules_reference_answers_at_the_artifacts_batch():
    import numpy as np
    import torch

    from edgeship.data import Arrays
    from edgeship.quantize.dynamic import torch_ao_dynamic
    from edgeship.quantize.evaluate import logits, reference_logits

    torch.manual_seed(0)
    model = torch_ao_dynamic(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4)),
                             "fbgemm")
    scales = np.linspace(0.1, 10, 64, dtype=np.float32)[:, None]
    inputs = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32) * scales
    arrays = Arrays(inputs=(inputs,), labels=np.zeros(64, dtype=np.int64))
    alone = np.concatenate([logits(model, Arrays(inputs=(inputs[i:i + 1],), labels=arrays.labels[:1]))
                            for i in range(64)])
    assert np.array_equal(reference_logits(model, arrays, 1), alone)
    assert not np.allclose(logits(model, arrays), alone, atol=1e-3)  # one range for the whole batch


def test_onnx_runtimes_dynamic_quantizer_says_nothing_the_user_cannot_act_on(tmp_path, caplog):
    import torch

    from edgeship.formats.onnx import export_dynamic
    from edgeship.targets import get_target

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    with caplog.at_level("WARNING"):
        made = export_dynamic(model.eval(), (torch.zeros(1, 1, 8, 8),), get_target("onnx-int8"), tmp_path)
    assert made.path.exists()
    assert not [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
