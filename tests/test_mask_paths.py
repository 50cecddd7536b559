"""Attention masks on the int8 targets quantized in PyTorch (torch.ao FX for TorchScript, PT2E with
the XNNPACK quantizer for ExecuTorch): the ops that carry a mask's huge values to a softmax stay
float (quantize/mask_paths.py), the rest of the attention is quantized. Quantized, BERT's additive
mask made the scores' scale 40 to 80: relative error 0.23 against float, attention uniform."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.quantize.mask_paths import mask_paths
from edgeship.targets import Flow
from attention import TOKENS, VOCAB, Attention

FLOWS = [Flow.FX_FBGEMM, Flow.FX_QNNPACK, Flow.PT2E_XNNPACK]


def _int8_against_float(mask: str, flow: Flow, *, qat: bool) -> tuple[float, list[str], nn.Module]:
    """The converted model's relative error against the float one on held-out tokens, where the
    flow left ops float for masks, and the converted model."""
    torch.manual_seed(0)
    model, tokens = Attention(mask).eval(), torch.randint(0, VOCAB, (96, TOKENS))
    qf = flow_for(flow, QuantSettings())
    prepared = qf.prepare(model, (tokens[:2],), qat=qat)
    qf.set_eval(prepared)
    with qf.engine(), torch.no_grad():
        prepared(tokens[:64])  # calibration (QAT: the observers' first ranges)
        converted = qf.convert(prepared)
        error = (converted(tokens[64:]) - model(tokens[64:])).norm() / model(tokens[64:]).norm()
    return float(error), qf.float_for_masks, converted


def _ops(kept: list[str]) -> list[str]:
    """The ops of `where` strings: 'layers.0.attention: add' -> 'add', 'softmax_1' -> 'softmax'."""
    return [k.rpartition(": ")[2].rstrip("_0123456789") for k in kept]


def _quantized_linears(converted: nn.Module) -> int:
    """Linear layers that run int8: torch.ao's quantized modules, or PT2E's quantized weights."""
    from torch.ao.nn.quantized import Linear

    modules = sum(isinstance(m, Linear) for m in converted.modules())
    graph = getattr(converted, "graph", None)
    weights = 0 if graph is None else sum(
        n.target is torch.ops.aten.linear.default and n.args[1].op == "call_function"
        and "dequantize" in str(n.args[1].target) for n in graph.nodes)
    return modules + weights


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.value)
@pytest.mark.parametrize("mask", ["additive", "buffer"])
def test_an_additive_mask_stays_float_and_the_attention_int8(flow, mask):
    error, kept, converted = _int8_against_float(mask, flow, qat=False)
    assert {"add", "softmax"} <= set(_ops(kept)), kept
    assert error < 0.08, (flow, mask, error)
    assert _quantized_linears(converted) == 2, converted  # qkv and out


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.PT2E_XNNPACK], ids=lambda f: f.value)
def test_qat_trains_and_ships_the_mask_float(flow):
    error, kept, _ = _int8_against_float("additive", flow, qat=True)
    assert "add" in _ops(kept), kept
    assert error < 0.08, (flow, error)


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.value)
def test_a_large_constant_that_never_meets_a_softmax_changes_nothing(flow):
    error, kept, _ = _int8_against_float("scaled", flow, qat=False)
    assert kept == []
    assert error < 0.08, error


class _Masks(nn.Module):
    """Masks as models write them, each to its own softmax, and large values that are no mask."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 8)
        self.scores = nn.Softmax(dim=-1)

    def forward(self, x, keep):
        filled = x.masked_fill(~keep, float("-inf")).softmax(-1)  # nanoGPT
        inverted = torch.softmax(x + (~keep).float() * torch.finfo(torch.float32).min, -1)
        module = self.scores(x + torch.full_like(x, -1e9) * (~keep).float())
        unmasked = torch.softmax(self.proj(x * 1e5), -1)  # passes a layer first: no mask
        return filled + inverted + module + unmasked


def test_every_way_of_writing_a_mask_is_found_and_nothing_else():
    graph = torch.fx.symbolic_trace(_Masks())
    found = [n.format_node().split(" = ")[1].split("(")[0] for n in mask_paths(graph)]
    assert found == ["call_method[target=masked_fill]", "call_method[target=softmax]",
                     "call_function[target=operator.mul]", "call_function[target=operator.add]",
                     "call_function[target=torch.softmax]", "call_function[target=torch.full_like]",
                     "call_function[target=operator.mul]", "call_function[target=operator.add]",
                     "call_module[target=scores]"], found
