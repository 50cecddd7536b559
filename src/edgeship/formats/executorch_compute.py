"""The compute ops of a lowered ExecuTorch program and which of them XNNPACK runs in int8.

An op runs int8 when it is inside an XNNPACK delegate and both its input and its weight come from
dequantize ops (XNNPACK takes the pattern as one quantized kernel); outside a delegate, ExecuTorch's
portable kernels compute in float whatever the graph dequantized. The .pte keeps the delegate as
an opaque blob, so this reads the lowered program the .pte is serialized from."""

from __future__ import annotations

import torch

from edgeship.formats.compute import ComputeOp

_CONVS = ("aten.convolution",)
_PRODUCTS = ("aten.linear", "aten.mm", "aten.bmm", "aten.addmm", "aten.baddbmm", "aten.matmul")
# Ops that only move or reshape a weight between its dequantize and its use
_PASS_THROUGH = ("aten.permute", "aten.t", "aten.view", "aten.expand", "aten.clone",
                 "aten.transpose", "aten.unsqueeze", "aten.squeeze", "aten._to_copy")


def compute_ops(program) -> list[ComputeOp]:
    """Every compute op of `program` (an ExportedProgram after to_edge_transform_and_lower)."""
    from torch._higher_order_ops.executorch_call_delegate import executorch_call_delegate

    module = program.graph_module
    ops, counted = [], set()
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target is executorch_call_delegate:
            lowered = getattr(module, node.args[0].target)
            ops += _ops(lowered.original_module.graph, True, counted)
    return ops + _ops(module.graph, False, counted)


def _name(target) -> str:
    return getattr(target, "__name__", str(target))


def _ops(graph: torch.fx.Graph, delegated: bool, counted: set) -> list[ComputeOp]:
    found = []
    for node in graph.nodes:
        name = _name(node.target) if node.op == "call_function" else ""
        if not name.startswith(_CONVS + _PRODUCTS):
            continue
        x, w = (node.args[1], node.args[2]) if name.startswith(("aten.addmm", "aten.baddbmm")) else node.args[:2]
        int8 = delegated and _dequantized(x) and _dequantized(w)
        constant = _constant(w)
        # A parameter used by many ops (an unrolled LSTM's weights, each step its own delegate)
        # counts once; p_ names are the user's parameter names, unique in the program
        key = (constant.name, tuple(constant.meta["val"].shape)) if constant is not None \
            and constant.name.startswith("p_") else id(constant)
        weights = constant.meta["val"].numel() if constant is not None and key not in counted else 0
        counted.add(key)
        found.append(ComputeOp(_layer(node), name.rsplit(".", 1)[0], _macs(node, name, x, w),
                               weights, int8))
    return found


def _source(node):
    """`node` followed back through the ops that only reshape it."""
    while isinstance(node, torch.fx.Node) and node.op == "call_function" \
            and _name(node.target).startswith(_PASS_THROUGH):
        node = node.args[0]
    return node


def _dequantized(node) -> bool:
    node = _source(node)
    return isinstance(node, torch.fx.Node) and "dequantize" in _name(node.target)


def _constant(node) -> torch.fx.Node | None:
    """The parameter or constant behind `node` (possibly dequantized), or None for an activation.
    torch.export lifts parameters, buffers and constants into placeholders named p_, b_, c_."""
    node = _source(node)
    if isinstance(node, torch.fx.Node) and "dequantize" in _name(node.target):
        node = _source(node.args[0])
    if not isinstance(node, torch.fx.Node):  # a literal argument: no weight behind it
        return None
    lifted = node.op == "placeholder" and node.name.startswith(("p_", "b_", "c_", "_lifted"))
    return node if lifted or node.op == "get_attr" else None


def _macs(node, name: str, x, w) -> int:
    out, x_val, w_val = (n.meta["val"] for n in (node, x, w))
    if name.startswith(_CONVS):
        transposed = node.args[6] if len(node.args) > 6 else False
        return (x_val if transposed else out).numel() * w_val[0].numel()
    return out.numel() * x_val.shape[-1]  # matrix products: K is the input's last axis


def _layer(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else node.name
