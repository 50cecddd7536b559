"""A forward with a training-only branch (stochastic depth, functional dropout): graph capture
freezes whichever branch it traced, so QAT captures the model in its deployment form, batch norm
and dropout layers excepted (quantize/qat_capture.py). In training form the branch shipped: a
random mask in the converted model and its artifacts; and FX cannot trace a mask sized by the batch
at all, which torch.ao's FX QAT refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.targets import Flow


class _DropPathNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.block(x)
        if self.training:  # stochastic depth
            y = y * (torch.rand(x.shape[0], 1, 1, 1) > 0.1).float() / 0.9
        return self.head((x + y).mean((2, 3)))


def test_torchs_own_fx_qat_refuses_a_random_mask_sized_by_the_batch():
    from torch.ao.quantization import get_default_qat_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    with pytest.raises(TypeError, match="rand"):
        prepare_qat_fx(_DropPathNet().train(), get_default_qat_qconfig_mapping("fbgemm"), (torch.randn(2, 1, 8, 8),))


def _fine_tuned_and_converted(model: nn.Module, flow: Flow, x: torch.Tensor) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """Two QAT steps on `model` under `flow`, then its converted model's answers to `x`, twice."""
    qf = flow_for(flow, QuantSettings())
    prepared = qf.prepare(model, (x[:1],), qat=True)
    qf.set_train(prepared)
    optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for _ in range(2):  # fake-quantized training steps run; batch norm statistics move
        optimizer.zero_grad()
        prepared(x).square().mean().backward()
        optimizer.step()
    qf.set_eval(prepared)
    with qf.engine():
        converted = qf.convert(prepared)
        with torch.no_grad():
            return converted, converted(x), converted(x)


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.FX_QNNPACK])
def test_its_eval_graph_is_fine_tuned_and_converted(flow):
    torch.manual_seed(0)
    model, x = _DropPathNet().eval(), torch.randn(16, 1, 8, 8)
    converted, answers, _ = _fine_tuned_and_converted(model, flow, x)
    with torch.no_grad():
        error = (answers - model(x)).abs().max() / model(x).abs().max()
    assert any(".quantized." in type(m).__module__ for m in converted.modules())
    assert error < 0.2  # two small steps away from the float model, in int8


class _TraceableBranches(_DropPathNet):
    """Stochastic depth FX and torch.export can trace, and dropout written as a function."""

    def forward(self, x):
        x = self.stem(x)
        y = self.block(x)
        if self.training:
            y = y * (torch.rand_like(y[:, :1, :1, :1]) > 0.5).float() / 0.5
        return self.head(F.dropout((x + y).mean((2, 3)), 0.5, self.training))


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.PT2E_XNNPACK, Flow.ORT_QDQ])
def test_a_traced_training_branch_does_not_ship(flow):
    torch.manual_seed(0)
    converted, first, second = _fine_tuned_and_converted(_TraceableBranches().eval(), flow, torch.randn(16, 1, 8, 8))
    assert torch.equal(first, second)
    if flow is not Flow.ORT_QDQ:  # whose convert gives the float module, fine-tuned
        assert not [n for n in converted.graph.nodes if "rand" in str(n.target)]


class _DropPath(nn.Module):
    """timm's drop_path (a mask sized by the batch) or a rand_like mask FX can trace."""

    def __init__(self, timm: bool) -> None:
        super().__init__()
        self.timm = timm

    def forward(self, x):
        if not self.training:
            return x
        if self.timm:
            return x * x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(0.5).div_(0.5)
        return x * (torch.rand_like(x[:, :1, :1, :1]) < 0.5).to(x.dtype) * 2.0


class _Block(nn.Module):
    def __init__(self, timm: bool) -> None:
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), _DropPath(timm)

    def forward(self, x):
        return x + self.drop(self.bn(self.conv(x)))


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.PT2E_XNNPACK])
@pytest.mark.parametrize("timm", [True, False], ids=["timm-drop-path", "rand-like"])
def test_stochastic_depth_inside_a_torch_nn_container(flow, timm):
    """Blocks held by nn.Sequential, as EfficientNet-style nets hold them: the container is a torch.nn
    module, and `.train()` on it trained the blocks' stochastic depth too (FX failed on timm's
    mask; a rand_like one shipped, two calls differing by 0.2)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.Sequential(_Block(timm), _Block(timm)),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()
    converted, first, second = _fine_tuned_and_converted(model, flow, torch.randn(16, 1, 8, 8))
    assert torch.equal(first, second)
    assert not [n for n in converted.graph.nodes if "rand" in str(n.target) or "bernoulli" in str(n.target)]
