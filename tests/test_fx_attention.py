"""torch.nn's attention in the FX flows (int8 TorchScript): FX leaves the transformer modules float,
and after conversion every Linear inside them, attention's projections included, is dynamically
quantized. The rebuilt attention computes what nn.MultiheadAttention computes, masks included."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.engines import attention_slow_path
from edgeship.formats import export_atomically, spec_for
from edgeship.quantize.attention import SplitProjectionAttention
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.flows import flow_for
from edgeship.targets import Flow, Format, get_target


@pytest.mark.parametrize("batch_first", [True, False])
def test_split_projections_answer_as_multihead_attention_does(batch_first):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    split = SplitProjectionAttention.of(copy.deepcopy(attention)).eval()
    x = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    padding = torch.zeros(3, 5, dtype=torch.bool)
    padding[0, -2:] = True
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    with torch.no_grad(), attention_slow_path():
        for kwargs in ({}, {"key_padding_mask": padding}, {"attn_mask": causal},
                       {"attn_mask": causal, "is_causal": True}):
            expected = attention(x, x, x, need_weights=False, **kwargs)[0]
            torch.testing.assert_close(split(x, x, x, need_weights=False, **kwargs)[0], expected)
        # is_causal alone: nn.MultiheadAttention needs the mask beside it; the split one makes it
        torch.testing.assert_close(split(x, x, x, need_weights=False, is_causal=True)[0],
                                   attention(x, x, x, need_weights=False, attn_mask=causal)[0])


class CausalEncoder(nn.Module):
    """A causal nn.TransformerEncoder (the mask makes it pass is_causal=True on) and a bare
    nn.MultiheadAttention after it: both kinds of leaf FX leaves float."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.attention = nn.MultiheadAttention(16, 2, batch_first=True)
        self.head = nn.Linear(16, 3)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(6))

    def forward(self, x):
        h = self.encoder(x, mask=self.mask)
        return self.head(self.attention(h, h, h, need_weights=False)[0].mean(1))


@pytest.mark.parametrize("flow", [Flow.FX_FBGEMM, Flow.FX_QNNPACK])
def test_a_causal_encoder_and_bare_attention_are_int8_linears_in_torchscript(tmp_path, flow):
    torch.manual_seed(0)
    model, examples = CausalEncoder().eval(), (torch.randn(1, 6, 16),)
    qf = flow_for(flow)
    data = TensorDataset(torch.randn(32, 6, 16), torch.zeros(32, dtype=torch.int64))
    x = torch.randn(8, 6, 16)
    with attention_slow_path():
        prepared = calibrate(qf, model, examples, data, batches=2, batch_size=16, qat=False)
        with qf.engine(), torch.no_grad():
            converted = qf.convert(prepared)
            made = export_atomically(spec_for(Format.TORCHSCRIPT).export, converted, examples,
                                     get_target(f"torchscript-{qf.engine_name}"), tmp_path)
            answers = torch.jit.load(str(made.path))(x)
            torch.testing.assert_close(answers, converted(x))
            assert (answers - model(x)).abs().max() < 0.1 * model(x).abs().max()  # int8, near float
    share = made.details["int8_share"]
    assert share["weights_fraction"] > 0.95, share
    assert {op["op"] for op in share["float_ops"]} == {"aten::bmm"}, share  # attention's two products
