"""Attention the ONNX exporter refuses, written as the ops it equals.

torch.onnx's dynamo exporter (onnxscript's torchlib, torch 2.13) converts
`F.scaled_dot_product_attention` for 4-D query, key and value only ("only 4D query, key, and value
are supported", a deliberate limit upstream, microsoft/onnxscript#2558). PyTorch takes 3-D
(batch, tokens, width): single-head attention written that way failed both ONNX targets while
ExecuTorch took it. When export fails on such a call, those calls are decomposed into the math
they compute (scores, mask, softmax, weighted sum), as PyTorch's own math backend does; 4-D calls
keep the exporter's own conversion."""

from __future__ import annotations

import math

import torch
from torch import nn


def _attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
    if q.dim() == 4 and k.dim() == 4 and v.dim() == 4:
        return NotImplemented  # the exporter converts these itself
    scores = (q @ k.transpose(-2, -1)) * (scale if scale is not None else 1.0 / math.sqrt(q.size(-1)))
    if is_causal:
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        scores = (scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool
                  else scores + attn_mask)
    return scores.softmax(-1) @ v  # dropout_p: inference, as the exported model is


def _not_4d(node: torch.fx.Node) -> bool:
    return any(hasattr(a, "meta") and getattr(a.meta.get("val"), "dim", lambda: 4)() != 4 for a in node.args[:3])


def attention_decomposed(module: nn.Module, examples: tuple):
    """`module`'s ExportedProgram with its non-4-D scaled_dot_product_attention calls written as
    math; None when it has none (or torch.export cannot capture it)."""
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    try:
        program = torch.export.export(module, examples)
    except Exception:  # noqa: BLE001 - not this module's problem: the exporter's own error stands
        return None
    if not any(n.target is sdpa and _not_4d(n) for n in program.graph.nodes):
        return None
    return program.run_decompositions({sdpa: _attention})
