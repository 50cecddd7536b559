"""torch.nn's transformer modules in the FX flows (int8 TorchScript). torch.ao FX takes each as one
leaf it does not trace into, so none gets static int8; its custom-module path to a quantized
MultiheadAttention handles the module's inputs only (torch 2.13's fx/convert.py says so, and its
observers fail on the tuple the module returns). After conversion, then, every Linear inside such
a leaf is dynamically quantized (int8 weights, activations quantized at run time:
quantized::linear_dynamic), the attention projections included: each nn.MultiheadAttention is
first rebuilt as torch.ao's quantizable one, whose Q, K, V and output projections are separate
nn.Linear modules holding the same weights (nn.MultiheadAttention keeps Q, K and V in one raw
parameter, and its output projection is a Linear that quantize_dynamic must not touch). Attention's
two matrix products (activation x activation) stay float."""

from __future__ import annotations

from torch import nn
from torch.ao.nn.quantizable import MultiheadAttention as QuantizableAttention

from edgeship.quantize.float_layers import FX_ATTENTION_LEAVES
from edgeship.quantize.rebuild import from_float_unobserved, rebuilt_each


class SplitProjectionAttention(QuantizableAttention):
    """torch.ao's quantizable MultiheadAttention, answering as nn.MultiheadAttention does where
    torch 2.13's does not:
    - `is_causal` is a hint beside a mask (nn.TransformerEncoder passes both when its mask is
      causal), else a causal mask of its own; torch.ao's refuses both;
    - batch-first inputs: torch.ao's batch-first path views its [batch x heads, length, head]
      output as [batch, length, embedding], mixing heads into positions. It runs sequence-first
      here, between two transposes."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batch_first = self.batch_first
        if batch_first:
            query, key, value = (x.transpose(0, 1) for x in (query, key, value))
        if is_causal and attn_mask is None:
            attn_mask = nn.Transformer.generate_square_subsequent_mask(query.shape[0], dtype=query.dtype)
        self.batch_first = False  # the attribute stays what nn.TransformerEncoder reads
        try:
            output, weights = super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                              average_attn_weights, False)
        finally:
            self.batch_first = batch_first
        return (output.transpose(0, 1) if batch_first else output), weights

    @classmethod
    def of(cls, attention: nn.MultiheadAttention) -> SplitProjectionAttention:
        """The same weights with separate projections, float (no observers)."""
        split = from_float_unobserved(super().from_float, attention)
        split.__class__ = cls
        split.in_proj_weight = split.in_proj_bias = None  # nn.MultiheadAttention's, unused: freshly random
        return split


def split_projections(model: nn.Module) -> nn.Module:
    """`model` with every nn.MultiheadAttention in it (itself included) rebuilt as
    SplitProjectionAttention, so that quantize_dynamic finds its projections."""
    return rebuilt_each(model, nn.MultiheadAttention, SplitProjectionAttention.of)


def dynamic_linears_in_attention(converted: nn.Module, float_layers: frozenset[str]) -> None:
    """Every Linear inside the outermost transformer leaves of `converted` (an FX-converted model),
    attention projections included, dynamically quantized in place, unless the recipe keeps the
    leaf float."""
    from torch.ao.quantization import quantize_dynamic

    leaves: list[str] = []
    for name, module in converted.named_modules():  # parents before children
        if isinstance(module, FX_ATTENTION_LEAVES) and not any(name.startswith(f"{leaf}.") for leaf in leaves):
            leaves.append(name)
    for name in (n for n in leaves if n not in float_layers):
        parent, _, child = name.rpartition(".")
        leaf = split_projections(converted.get_submodule(name))
        setattr(converted.get_submodule(parent), child, leaf)
        quantize_dynamic(leaf, {nn.Linear}, inplace=True)
