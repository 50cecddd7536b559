"""Floats a forward computes from tensor shapes (attention's scale `(d // heads) ** -0.5`) in the
FX flows: torch's own prepare_fx puts an observer on the number and fails; edgeship writes it
into the graph as a literal, and a float that changes with the batch stays computed. Found on a
hand-written ViT built to try edgeship: both TorchScript targets failed in calibration."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.formats import export_atomically, spec_for
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.quantize.fx_scalars import shape_floats_folded
from edgeship.targets import get_target
from peers import error_share


class Attention(nn.Module):
    """One head of self-attention over the rows of a digit-sized input, scaled by 1/sqrt(width)
    computed in forward, as many hand-written models do."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.qkv, self.head = nn.Linear(width, 3 * width), nn.Linear(width, 4)

    def forward(self, x):  # x: (batch, 1, rows, width)
        t = x.squeeze(1)
        q, k, v = self.qkv(t).chunk(3, dim=-1)
        scores = q @ k.transpose(1, 2) * t.shape[-1] ** -0.5
        return self.head((torch.softmax(scores, dim=-1) @ v).mean(1))


class BatchScaled(nn.Module):
    """Two floats from shapes: one depends on the batch size and must stay computed."""

    def forward(self, x):
        return x * x.shape[0] ** 0.5 * x.shape[-1] ** -0.5


def _powers(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph.graph.nodes if n.target is operator.pow]


def test_torchs_own_fx_flow_observes_the_scale_as_a_tensor():
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    x = torch.randn(4, 1, 8, 8)
    prepared = prepare_fx(Attention().eval(), get_default_qconfig_mapping("fbgemm"), (x[:1],))
    with pytest.raises(AttributeError, match="'float' object has no attribute 'numel'"):
        prepared(x)


def test_a_batch_independent_float_becomes_a_literal_and_a_batch_dependent_one_stays():
    model, x = Attention().eval(), torch.randn(4, 1, 8, 8)
    folded = shape_floats_folded(model, (x[:1],))
    assert not _powers(folded) and "0.35355" in folded.code, folded.code
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    scaled = shape_floats_folded(BatchScaled(), (x[:1],))
    assert [n.args[1] for n in _powers(scaled)] == [0.5], scaled.code  # the batch's square root
    torch.testing.assert_close(scaled(x), x * 2.0 / 8 ** 0.5)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert shape_floats_folded(plain, (x[:1],)) is plain  # nothing to fold: the model itself


@pytest.mark.parametrize("name,qat", [("torchscript-fbgemm", False), ("torchscript-qnnpack", False),
                                      ("torchscript-fbgemm", True)])
def test_hand_written_attention_ships_int8_on_the_fx_flows(tmp_path, name, qat):
    torch.manual_seed(0)
    model, inputs = Attention().eval(), torch.randn(64, 1, 8, 8)
    target = get_target(name)
    flow = flow_for(target.flow)
    data = TensorDataset(inputs, torch.zeros(len(inputs), dtype=torch.int64))
    prepared = calibrate(flow, copy.deepcopy(model).train(qat), (inputs[:1],), data, batches=2,
                         batch_size=32, qat=qat)
    with flow.engine():
        converted = flow.convert(prepared)
    spec = spec_for(target.format)
    with spec.running(target):
        made = export_atomically(spec.export, converted, (inputs[:1],), target, tmp_path)
    assert error_share(made.path, target.engine, model, inputs[:8]) < 0.05
    assert made.details["int8_share"]["macs_fraction"] > 0.5
