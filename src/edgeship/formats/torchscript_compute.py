"""The compute ops of a TorchScript module and which of them run quantized kernels.

The frozen graph keeps no shapes, so the graph is run once on the example inputs with every compute
op's input and output returned as well; weights come from the constants freezing inlined (float
tensors, or the packed params of `quantized::` ops, unpacked)."""

from __future__ import annotations

import torch

from edgeship.formats.compute import ComputeOp

# dynamic int8 recurrent layers and cells (one step for a cell: its output is [batch, hidden])
_INT8_RECURRENT = {"aten::quantized_lstm", "aten::quantized_gru"} | {
    f"quantized::quantized_{cell}_cell_dynamic" for cell in ("lstm", "gru", "rnn_tanh", "rnn_relu")}
_INT8 = {f"quantized::{name}" for name in (
    "conv1d", "conv2d", "conv3d", "conv1d_relu", "conv2d_relu", "conv3d_relu", "conv_transpose1d",
    "conv_transpose2d", "conv_transpose3d", "linear", "linear_relu", "linear_dynamic",
    "linear_relu_dynamic", "linear_tanh", "linear_leaky_relu", "matmul")} | _INT8_RECURRENT
_WEIGHTED = {"aten::conv1d", "aten::conv2d", "aten::conv3d", "aten::_convolution", "aten::convolution",
             "aten::conv_transpose1d", "aten::conv_transpose2d", "aten::conv_transpose3d",
             "aten::linear", "quantized::linear_dynamic_fp16"}
# matrix products of two activations (torch.ao's int8 attention: quantized::matmul)
_PRODUCTS = {"aten::matmul", "aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "quantized::matmul"}
_RECURRENT = {"aten::lstm", "aten::gru", "aten::rnn_tanh", "aten::rnn_relu"}
_ATTENTION = {"aten::_transformer_encoder_layer_fwd", "aten::_native_multi_head_attention"}
_SDPA = "aten::scaled_dot_product_attention"
_COMPUTE = _INT8 | _WEIGHTED | _PRODUCTS | _RECURRENT | _ATTENTION | {_SDPA}


def compute_ops(scripted: torch.jit.ScriptModule, examples: tuple) -> list[ComputeOp]:
    """Every compute op of the frozen `scripted` module, run once on `examples`."""
    graph = scripted.graph.copy()
    nodes = [n for n in graph.nodes() if n.kind() in _COMPUTE]
    probed = list(dict.fromkeys(v for n in nodes for v in (*n.inputs(), n.outputsAt(0)) if _is_tensor(v)))
    values = dict(zip(probed, _run_returning(scripted, graph, probed, examples)))
    return [_op(n, values) for n in nodes]


def _is_tensor(value) -> bool:
    return value.node().kind() != "prim::Constant" and isinstance(value.type(), torch._C.TensorType)


def _run_returning(scripted, graph, values: list, examples: tuple) -> tuple:
    """`values` of `graph` computed on `examples`: the graph's return becomes a tuple of them."""
    packed = graph.create("prim::TupleConstruct", values)
    packed.output().setType(torch._C.TupleType([v.type() for v in values]))
    packed.insertBefore(graph.return_node())
    graph.eraseOutput(0)
    graph.registerOutput(packed.output())
    with torch.no_grad():
        return torch._C._create_function_from_graph("compute_ops", graph)(scripted._c, *examples)


def _op(node, values: dict) -> ComputeOp:
    kind = node.kind()
    out = values[node.outputsAt(0)]
    weights = [w for w in _weights(node) if w.dim() >= 2]
    first = next((values[v] for v in node.inputs() if v in values), None)
    if kind in _RECURRENT or kind in _INT8_RECURRENT:
        steps = out.numel() // out.shape[-1]  # the output is [.., hidden x directions]
        macs = steps * sum(w.numel() for w in weights)
    elif kind in _ATTENTION:
        tokens, length, width = out.numel() // out.shape[-1], out.shape[-2], out.shape[-1]
        macs = tokens * sum(w.numel() for w in weights) + 2 * tokens * length * width
    elif kind == _SDPA:  # query x key, then weights x value: [.., L, E] x [.., S, E] twice
        key = values[node.inputsAt(1)]
        macs = 2 * out.numel() * key.shape[-2]
    elif kind in _PRODUCTS:  # K is the first matrix's last axis, whichever input is constant
        macs = out.numel() * (first.shape[-1] if first is not None and first.dim() else 1)
    elif weights and "conv_transpose" in kind:
        macs = first.numel() * weights[0][0].numel()
    else:
        macs = out.numel() * weights[0][0].numel() if weights else 0  # each output: a weight row
    return ComputeOp(_layer(node), kind, int(macs), sum(w.numel() for w in weights), kind in _INT8)


def _weights(node) -> list[torch.Tensor]:
    """The weight tensors among `node`'s constant inputs (in lists too), packed ones unpacked."""
    found = []
    for value in node.inputs():
        source = value.node()
        items = source.inputs() if source.kind() == "prim::ListConstruct" else [value]
        for item in items:
            if item.node().kind() == "prim::Constant":
                found += _tensors(item.toIValue())
    return found


def _tensors(constant) -> list[torch.Tensor]:
    if isinstance(constant, torch.Tensor):
        return [constant.dequantize() if constant.is_quantized else constant]
    if isinstance(constant, torch.ScriptObject) and hasattr(constant, "unpack"):
        return _tensors(constant.unpack()[0])
    if isinstance(constant, torch.ScriptObject):  # a quantized RNN's cell params hold packed ones
        return _tensors(constant.__getstate__())
    if isinstance(constant, list | tuple):
        return [t for c in constant for t in _tensors(c)]
    return []


def _layer(node) -> str:
    """The module path tracing recorded for `node` (`__module.features/__module.features.0`),
    or the op's name when the graph has none (a file loaded back)."""
    scope = node.scopeName().split("/")[-1].removeprefix("__module.")
    return scope or node.kind()
