"""A model trained with weight norm or spectral norm (audio vocoders are): torch.ao's FX flow
refuses a reparametrized conv, so edgeship bakes each trained weight into a plain one before any
stage quantizes or exports it (quantize/parametrized.py), and every target ships."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.utils as old_style
from torch import nn
from torch.nn.utils import parametrizations

import edgeship
from edgeship.quantize.parametrized import weights_baked
from edgeship.recipe import parse_recipe
from support import demo_recipe

NORMS = {"weight_norm": parametrizations.weight_norm, "spectral_norm": parametrizations.spectral_norm,
         "old weight_norm": old_style.weight_norm, "old spectral_norm": old_style.spectral_norm}


def _normed(norm: str) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(NORMS[norm](nn.Conv1d(1, 4, 3)), nn.ReLU(), nn.Flatten(), NORMS[norm](nn.Linear(24, 3)))
    model(torch.randn(2, 1, 8))  # spectral norm's power iteration runs in training
    return model.eval()


@pytest.mark.parametrize("norm", NORMS)
def test_torchs_own_fx_qat_refuses_a_reparametrized_conv(norm):
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with pytest.raises((AssertionError, TypeError, RuntimeError)):
        prepare_qat_fx(_normed(norm).train(), get_default_qat_qconfig_mapping("fbgemm"), (torch.randn(1, 1, 8),))


@pytest.mark.parametrize("norm", NORMS)
def test_baked_weights_answer_the_same_from_plain_layers(norm):
    model = _normed(norm)
    x = torch.randn(5, 1, 8)
    with torch.no_grad():
        before = model(x)
    kind = norm.removeprefix("old ")
    assert weights_baked(model) == [f"0.weight ({kind})", f"3.weight ({kind})"]
    assert [type(m) for m in model] == [nn.Conv1d, nn.ReLU, nn.Flatten, nn.Linear]
    assert not model[0]._forward_pre_hooks
    assert all(isinstance(m.weight, nn.Parameter) and m.weight.requires_grad for m in (model[0], model[3]))
    with torch.no_grad():
        assert torch.allclose(model(x), before, atol=1e-6)
    assert weights_baked(copy.deepcopy(model)) == []


MODELS = '''
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.parametrizations import weight_norm


class NormedSignal(nn.Module):
    """Each digit as a 64-sample signal, convolved as a vocoder would."""

    def __init__(self):
        super().__init__()
        self.c1 = weight_norm(nn.Conv1d(1, 16, 5, stride=2, padding=2))
        self.c2 = weight_norm(nn.Conv1d(16, 32, 3, stride=2, padding=1))
        self.fc = nn.Linear(32 * 16, 10)

    def forward(self, x):
        x = F.leaky_relu(self.c1(x.reshape(x.shape[0], 1, 64)), 0.1)
        return self.fc(F.leaky_relu(self.c2(x), 0.1).flatten(1))


def normed_signal():
    return NormedSignal()
'''


def test_a_weight_normed_model_ships_on_every_target_with_qat(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    data = demo_recipe(targets=["torchscript-fbgemm", "onnx-int8", "executorch-xnnpack"], fp32_twins=False,
                       devices=[], budgets=[])
    data["model"].update(factory="models.py:normed_signal", train={"epochs": 6, "lr": 0.01})
    data["quantization"]["qat"].update(epochs=1)
    report = edgeship.run(parse_recipe(data, "normed", tmp_path), tmp_path / "run", quiet=True)
    assert report.exit_code == 0, [(a.target, a.error) for a in report.artifacts]
    assert report.float.accuracy > 0.5  # weight norm trained: chance is 0.1
    for a in report.artifacts:
        assert a.status == "ok" and a.int8_share.macs_fraction == 1.0, (a.target, a.error, a.int8_share)
        assert a.parity.top1_agreement >= 0.95, (a.target, a.parity)
