"""Batch norm after a convolution or linear layer whose output something else reads too, as the
per-channel scale and shift it is, for post-training PT2E.

torchao's `prepare_pt2e` (0.18) folds every batch norm into the layer before it without asking
who else reads that layer's output: a DenseNet's concatenation or a pre-activation ResNet's
identity then reads batch-normed values, and the model is wrong before any rounding (a
DenseNet-style net: 0.9779 float, 0.1046 on executorch-xnnpack; torchao's documented flow does
the same). Written as `x * scale + shift` the batch norm is no fold candidate, and both are
elementwise ops the PT2E quantizers quantize. Exact in eval form, which calibration runs in;
QAT's prepare fuses only the pairs whose layer nothing else reads, so it is left as it is."""

from __future__ import annotations

import functools

import torch
from torch import fx

_BATCH_NORMS = {torch.ops.aten.batch_norm.default: 7,  # the target and where its eps is
                torch.ops.aten._native_batch_norm_legit_no_training.default: 6}
_LAYERS = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.conv3d.default,
           torch.ops.aten.conv_transpose1d.default, torch.ops.aten.conv_transpose2d.input,
           torch.ops.aten.conv_transpose3d.input, torch.ops.aten.linear.default)


def shared_batch_norms_as_affine(graph: fx.GraphModule) -> fx.GraphModule:
    """`graph` (an exported model in eval form) with each batch norm whose producer has other
    readers written as a multiply and an add; untouched when there is none."""
    found = [n for n in graph.graph.nodes if n.op == "call_function" and n.target in _BATCH_NORMS
             and _shared_layer(n.args[0])]
    for i, bn in enumerate(found):
        _as_affine(graph, bn, f"_edgeship_bn_affine_{i}")
    if found:
        graph.graph.eliminate_dead_code()
        graph.recompile()
    return graph


def _shared_layer(node) -> bool:
    return isinstance(node, fx.Node) and node.target in _LAYERS and len(node.users) > 1


def _as_affine(graph: fx.GraphModule, bn: fx.Node, name: str) -> None:
    x, weight, bias, mean, var = bn.args[:5]
    eps = bn.args[_BATCH_NORMS[bn.target]]
    mean, var = _value(graph, mean), _value(graph, var)
    scale = (_value(graph, weight) if weight is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
    shift = (_value(graph, bias) if bias is not None else torch.zeros_like(mean)) - mean * scale
    shape = (-1,) + (1,) * (x.meta["val"].dim() - 2)  # channels on dim 1; a linear's last
    for suffix, tensor in (("scale", scale), ("shift", shift)):
        graph.register_buffer(f"{name}_{suffix}", tensor.detach().reshape(shape).clone())
    with graph.graph.inserting_before(bn):
        scale_node, shift_node = graph.graph.get_attr(f"{name}_scale"), graph.graph.get_attr(f"{name}_shift")
        mul = graph.graph.call_function(torch.ops.aten.mul.Tensor, (x, scale_node))
        add = graph.graph.call_function(torch.ops.aten.add.Tensor, (mul, shift_node))
    for node, value in ((scale_node, scale), (shift_node, shift)):
        node.meta["val"] = value.reshape(shape)
    mul.meta["val"] = add.meta["val"] = x.meta["val"]
    if bn.target == torch.ops.aten.batch_norm.default:
        bn.replace_all_uses_with(add)
    else:  # a tuple: its first item is the normalised tensor
        for user in [u for u in bn.users if u.args[1] == 0]:
            user.replace_all_uses_with(add)


def _value(graph: fx.GraphModule, node: fx.Node) -> torch.Tensor:
    return functools.reduce(getattr, node.target.split("."), graph)
