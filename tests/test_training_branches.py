"""A forward with a training-only branch FX cannot trace (stochastic depth drawing a random mask
sized by the batch, as EfficientNet-style code writes it): torch.ao's FX QAT refuses it, so the
TorchScript flows trace it in eval mode and fine-tune that graph (quantize/fx.py)."""

from __future__ import annotations

import pytest
import torch
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


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.FX_QNNPACK])
def test_its_eval_graph_is_fine_tuned_and_converted(flow):
    torch.manual_seed(0)
    model, x = _DropPathNet().eval(), torch.randn(16, 1, 8, 8)
    qf = flow_for(flow, QuantSettings())
    prepared = qf.prepare(model, (x[:1],), qat=True)
    qf.set_train(prepared)
    assert any(m.training for m in prepared.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    optimizer = torch.optim.SGD(prepared.parameters(), lr=1e-3)
    for _ in range(2):  # fake-quantized training steps run
        optimizer.zero_grad()
        prepared(x).square().mean().backward()
        optimizer.step()
    qf.set_eval(prepared)
    with qf.engine():
        converted = qf.convert(prepared)
        with torch.no_grad():
            error = (converted(x) - model(x)).abs().max() / model(x).abs().max()
    assert any(".quantized." in type(m).__module__ for m in converted.modules())
    assert error < 0.2  # two small steps away from the float model, in int8
