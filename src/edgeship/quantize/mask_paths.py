"""The ops of a torch.fx graph that carry an attention mask's huge values to a softmax.

BERT's extended attention mask, `scores + (1.0 - mask) * -10000.0`, is an Add like any other to
torch.ao's FX flow (fbgemm, qnnpack) and to the XNNPACK quantizer: its calibrated output range
spans -10000, so its scale is 40 to 80 and every visible score rounds to the same value;
attention becomes a uniform average of what the mask lets through. A tiny BERT's perplexity went
from 10.41 (float) to 11.94 on fbgemm and 12.01 on XNNPACK. The ops on the path from such a value
to a softmax stay float, as formats/onnx_masks.py does for ONNX Runtime's quantizer; the rest of
the attention is quantized as before.

A mask value is a constant of magnitude MASK_MAGNITUDE or more, or not finite: a scalar operand
of an arithmetic op (`* -10000.0`, `masked_fill(m, float("-inf"))`, `torch.full(..., -1e9)`) or a
tensor attribute holding one (a precomputed additive mask buffer). It is followed through
elementwise and shape ops only: a value that meets a matmul, a layer or a reduction first is no
mask, and nothing changes for a model without one."""

from __future__ import annotations

import math

import torch
from torch import nn

# A constant this large is a mask value, not a weight or an activation's scale
MASK_MAGNITUDE = 1e4

# Ops whose constant operand can be a mask value
_SOURCES = frozenset("add sub rsub mul div truediv where masked_fill full full_like fill new_full "
                     "maximum minimum clamp clip lift_fresh_copy".split())
# Ops whose output carries a mask value that reaches their input
_CARRIERS = _SOURCES | frozenset(
    "neg expand expand_as view reshape _unsafe_view unsqueeze squeeze permute transpose t slice "
    "select getitem to _to_copy type_as type float half contiguous clone cat concat concatenate "
    "repeat tile alias detach flatten tril triu index index_select logical_not bitwise_not".split())
_SOFTMAXES = frozenset({"softmax", "log_softmax", "_softmax", "_log_softmax", "_safe_softmax"})


def mask_paths(graph: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """The nodes of `graph`, in its order, that a mask value flows through on its way to a softmax,
    the softmax included."""
    modules = dict(graph.named_modules())
    carried: set[torch.fx.Node] = set()
    softmaxes = []
    for node in graph.graph.nodes:  # topological: a node's inputs come before it
        name, fed = op_name(node, modules), any(a in carried for a in node.all_input_nodes)
        if name in _SOFTMAXES and fed:
            softmaxes.append(node)
        elif fed and name in _CARRIERS or name in _SOURCES and _huge_operand(node) \
                or node.op == "get_attr" and _huge_tensor(_attribute(graph, node.target)):
            carried.add(node)
    on_path: set[torch.fx.Node] = set()
    stack = softmaxes
    while stack:
        node = stack.pop()
        if node not in on_path:
            on_path.add(node)
            stack += [a for a in node.all_input_nodes if a in carried]
    return [n for n in graph.graph.nodes if n in on_path and n.op != "get_attr"]


def op_name(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str:
    """What `node` computes, the same for torch functions, Tensor methods, operators and ATen ops:
    "add" for operator.add, torch.add, x.add_ and aten.add.Tensor."""
    if node.op == "call_module":
        return "softmax" if isinstance(modules[node.target], (nn.Softmax, nn.LogSoftmax)) else ""
    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function":
        packet = getattr(node.target, "overloadpacket", None)
        name = getattr(packet or node.target, "__name__", "")
    else:
        return ""
    return name[:-1] if name.endswith("_") and not name.endswith("__") else name


def _huge(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and (not math.isfinite(value) or abs(value) >= MASK_MAGNITUDE)


def _huge_operand(node: torch.fx.Node) -> bool:
    # scalars only: a size list (torch.full's first operand) may hold large numbers
    return any(_huge(v) for v in (*node.args, *node.kwargs.values()))


def _attribute(graph: nn.Module, target: str):
    value = graph
    for part in target.split("."):
        value = getattr(value, part, None)
    return value


def _huge_tensor(value) -> bool:
    if not isinstance(value, torch.Tensor) or not value.is_floating_point() or value.numel() == 0:
        return False
    return bool((~torch.isfinite(value) | (value.abs() >= MASK_MAGNITUDE)).any())


def where(node: torch.fx.Node, path: str) -> str:
    """'path: op' for the report: the module an op runs in, and what it computes; the node's name
    for an op of the model's own forward (or of a graph traced whole)."""
    return f"{path}: {op_name(node, {}) or node.target}" if path else node.name


def module_path(node: torch.fx.Node) -> str:
    """The module an exported graph's node ran in ("" for the model's own forward)."""
    stack = node.meta.get("nn_module_stack") or {}
    return list(stack.values())[-1][0] if stack else ""


def fx_float_masks(model: nn.Module, leaves: list[str], mapping) -> list[str]:
    """Sets qconfig None in torch.ao's `mapping` for each op of `model` on a mask path, located as
    prepare_fx will see it (`leaves`: the non-traceable module names it is given): a function call
    by its module's name, its type and its place among that module's calls of the type. Returns
    where those ops are. Methods are left as they are: torch.ao quantizes none that carry a mask."""
    from torch.ao.quantization.fx.tracer import QuantizationTracer
    from torch.ao.quantization.quantize_fx import _swap_ff_with_fxff

    _swap_ff_with_fxff(model)  # as prepare_fx does first: FloatFunctional's ops become functions
    tracer = QuantizationTracer(leaves, [])
    graph = torch.fx.GraphModule(model, tracer.trace(model))
    on_path = set(mask_paths(graph))
    calls: dict[tuple[str, object], int] = {}
    found = []
    for node in graph.graph.nodes:
        if node.op == "call_function":
            path = tracer.node_name_to_scope[node.name][0]
            index = calls[path, node.target] = calls.get((path, node.target), -1) + 1
            if node in on_path:
                mapping.set_module_name_object_type_order(path, node.target, index, None)
                found.append(where(node, path))
        elif node.op == "call_module" and node in on_path:
            mapping.set_module_name(node.target, None)
            found.append(f"{node.target}: softmax")
    return found
