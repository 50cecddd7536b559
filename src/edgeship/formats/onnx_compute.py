"""The compute ops of an ONNX file and which of them ONNX Runtime runs in int8.

A float op inside a QDQ pair is int8 when ONNX Runtime's QDQ fusion makes an int8 kernel of it: a
Conv whose input and weight come from DequantizeLinear and whose output goes only to
QuantizeLinear (QLinearConv); a MatMul or Gemm whose two inputs come from DequantizeLinear
(QLinearMatMul, QGemm, or MatMulIntegerToFloat without the output pair). QOperator and integer ops
(QLinearConv, ConvInteger, MatMulInteger, ...) are int8 as written."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from edgeship.formats.compute import ComputeOp, numel

# op type: (activation input, weight input) of the ops that are int8 as written
_INTEGER_OPS = {"QLinearConv": (0, 3), "ConvInteger": (0, 1), "QLinearMatMul": (0, 3),
                "MatMulInteger": (0, 1), "MatMulIntegerToFloat": (0, 1),
                "DynamicQuantizeMatMul": (0, 1), "QGemm": (0, 3)}
_CONVS = {"Conv", "ConvTranspose", "QLinearConv", "ConvInteger"}
_RECURRENT = {"LSTM", "GRU", "RNN", "DynamicQuantizeLSTM"}


class _Graph:
    def __init__(self, model) -> None:
        import onnx

        graph = onnx.shape_inference.infer_shapes(model).graph
        self.shapes = {v.name: [d.dim_value if d.HasField("dim_value") else 0
                                for d in v.type.tensor_type.shape.dim]
                       for v in [*graph.value_info, *graph.input, *graph.output]}
        self.constants = {i.name for i in graph.initializer}
        self.shapes.update({i.name: list(i.dims) for i in graph.initializer})
        self.producer = {out: n for n in graph.node for out in n.output}
        self.consumers = defaultdict(list)
        for n in graph.node:
            for name in n.input:
                self.consumers[name].append(n)
        self.nodes = list(graph.node)

    def from_dequantize(self, name: str) -> bool:
        return getattr(self.producer.get(name), "op_type", None) == "DequantizeLinear"

    def weight(self, name: str) -> int:
        """The elements of `name` when it is a constant (directly or dequantized), else 0."""
        source = self.producer[name].input[0] if self.from_dequantize(name) else name
        return numel(self.shapes.get(source, [])) if source in self.constants else 0


def compute_ops(path: Path, layer_names: dict[str, str] | None = None) -> list[ComputeOp]:
    """Every compute op of the ONNX file at `path`, named by `layer_names` ({node name: module
    path}) where the exporter told them."""
    import onnx

    graph = _Graph(onnx.load(str(path), load_external_data=False))
    names = layer_names or {}
    ops = []
    for node in graph.nodes:
        found = _op(graph, node)
        if found is not None:
            macs, weights, int8 = found
            ops.append(ComputeOp(names.get(node.name, node.name), node.op_type, macs, weights, int8))
    return ops


def _op(graph: _Graph, node) -> tuple[int, int, bool] | None:
    """(MACs, weight elements, int8) of `node`, or None when it is not a compute op."""
    shape = graph.shapes.get
    if node.op_type in _RECURRENT:
        x, w, r = (shape(node.input[i], []) for i in range(3))
        steps = numel(x[:2])  # [sequence, batch, features]
        return steps * (numel(w) + numel(r)), numel(w) + numel(r), node.op_type.startswith("Dynamic")
    if node.op_type in _INTEGER_OPS:
        x, w = (node.input[i] for i in _INTEGER_OPS[node.op_type])
        return _macs(node, shape(x, []), shape(w, []), shape(node.output[0], [])), graph.weight(w), True
    if node.op_type not in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
        return None
    x, w = node.input[0], node.input[1]
    int8 = graph.from_dequantize(x) and graph.from_dequantize(w)
    if node.op_type in _CONVS:
        # ONNX Runtime fuses a QDQ convolution only when its output is quantized again
        int8 = int8 and all(c.op_type == "QuantizeLinear" for c in graph.consumers[node.output[0]])
    return _macs(node, shape(x, []), shape(w, []), shape(node.output[0], [])), graph.weight(w), int8


def _macs(node, x: list[int], w: list[int], y: list[int]) -> int:
    if node.op_type == "ConvTranspose":
        return numel(x) * numel(w[1:])
    if node.op_type in _CONVS:
        return numel(y) * numel(w[1:])
    return numel(y) * (x[-1] if x and x[-1] > 0 else 1)  # matrix products: K is A's last axis
