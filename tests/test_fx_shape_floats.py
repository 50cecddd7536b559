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
from edgeship.quantize.fx_scalars import joined_shape, shape_values_fixed
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


class HeadSplit(nn.Module):
    """Two heads of self-attention, split and merged as Hugging Face's attention writes it: a
    shape joined to a tuple with `+`."""

    def __init__(self, width: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads, self.size = heads, width // heads
        self.qkv, self.head = nn.Linear(width, 3 * width), nn.Linear(width, 4)

    def split(self, x):
        return x.view(x.size()[:-1] + (self.heads, self.size)).permute(0, 2, 1, 3)

    def forward(self, x):  # x: (batch, 1, rows, width)
        q, k, v = self.qkv(x.squeeze(1)).chunk(3, dim=-1)
        q, k, v = self.split(q), self.split(k), self.split(v)
        context = (torch.softmax(q @ k.transpose(-1, -2) * 0.5, dim=-1) @ v).permute(0, 2, 1, 3)
        return self.head(context.reshape(context.size()[:-2] + (self.heads * self.size,)).mean(1))


class BatchScaled(nn.Module):
    """Two floats from shapes: one depends on the batch size and must stay computed."""

    def forward(self, x):
        return x * x.shape[0] ** 0.5 * x.shape[-1] ** -0.5


def _powers(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    return [n for n in graph.graph.nodes if n.target is operator.pow]


def test_a_joined_shape_is_one_call_of_numbers_and_stays_so_when_traced_again():
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    model, x = HeadSplit().eval(), torch.randn(4, 1, 8, 8)
    fixed = shape_values_fixed(model, (x[:1],))
    joins = [n for n in fixed.graph.nodes if n.target is joined_shape]
    assert [n.args[1:] for n in joins] == [(2, 4)] * 3 + [(8,)], fixed.code
    again = QuantizationTracer([], []).trace(fixed)  # as prepare_fx traces the captured graph
    assert sum(n.target is joined_shape for n in again.nodes) == 4
    assert not any(n.target is operator.add for n in again.nodes)
    with torch.no_grad():
        torch.testing.assert_close(fixed(x), model(x))


@pytest.mark.parametrize("model,error", [(Attention, "'float' object has no attribute 'numel'"),
                                         (HeadSplit, "'torch.Size' object has no attribute 'detach'")],
                         ids=["scale-from-shape", "joined-shape"])
def test_torchs_own_fx_flow_observes_a_shape_value_as_a_tensor(model, error):
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import prepare_fx

    x = torch.randn(4, 1, 8, 8)
    prepared = prepare_fx(model().eval(), get_default_qconfig_mapping("fbgemm"), (x[:1],))
    with pytest.raises(AttributeError, match=error):
        prepared(x)


def test_a_batch_independent_float_becomes_a_literal_and_a_batch_dependent_one_stays():
    model, x = Attention().eval(), torch.randn(4, 1, 8, 8)
    folded = shape_values_fixed(model, (x[:1],))
    assert not _powers(folded) and "0.35355" in folded.code, folded.code
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x))
    scaled = shape_values_fixed(BatchScaled(), (x[:1],))
    assert [n.args[1] for n in _powers(scaled)] == [0.5], scaled.code  # the batch's square root
    torch.testing.assert_close(scaled(x), x * 2.0 / 8 ** 0.5)
    plain = nn.Sequential(nn.Conv2d(1, 2, 3))
    assert shape_values_fixed(plain, (x[:1],)) is plain  # nothing to fold: the model itself


@pytest.mark.parametrize("name,qat", [("torchscript-fbgemm", False), ("torchscript-qnnpack", False),
                                      ("torchscript-fbgemm", True)])
@pytest.mark.parametrize("attention", [Attention, HeadSplit], ids=["scale-from-shape", "joined-shape"])
def test_hand_written_attention_ships_int8_on_the_fx_flows(tmp_path, name, qat, attention):
    torch.manual_seed(0)
    model, inputs = attention().eval(), torch.randn(64, 1, 8, 8)
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
