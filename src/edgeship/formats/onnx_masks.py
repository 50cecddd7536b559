"""The nodes of an ONNX graph that carry an attention mask's huge values to a Softmax.

A causal or padding mask is written as a huge negative number added to the attention scores:
-inf or float32's minimum (`scaled_dot_product_attention(is_causal=True)`, `masked_fill(-inf)`),
-1e9 or -10000 times a 0/1 mask (BERT-style). ONNX Runtime's `quantize_static` quantizes that Add,
or Where, and the Softmax after it, like any other: the calibrated range of the masked scores
spans the mask value, so their scale is ~1e36 (or 40 for -10000) and every visible score rounds
to zero. Attention becomes a uniform average of what the mask lets through: a tiny GPT's
perplexity went from 9.14 to 16.1 in ONNX Runtime's own documented flow. Those nodes stay float;
the Softmax's output, which lies in [0, 1], is still quantized for the MatMul that reads it."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from edgeship.quantize.mask_paths import MASK_MAGNITUDE


# Ops whose output carries a mask value that reaches one of their inputs (input indices; None: any)
_CARRIERS = {"Add": None, "Sub": None, "Mul": None, "Where": None, "Max": None, "Min": None,
             "Div": (0,), "Neg": None, "Expand": (0,), "Reshape": (0,), "Unsqueeze": (0,),
             "Squeeze": (0,), "Cast": None, "Slice": (0,), "Concat": None, "Tile": (0,),
             "Transpose": None, "Identity": None, "Gather": (0,), "Flatten": None, "Trilu": (0,)}
_SOFTMAXES = {"Softmax", "LogSoftmax"}


def mask_nodes(model) -> list[str]:
    """The names of the nodes of `model` (an onnx ModelProto with its weights loaded) that a mask
    value flows through on its way to a Softmax, the Softmax included."""
    consumers = defaultdict(list)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            consumers[name].append((node, i))
    carried, found = list(_mask_constants(model)), {}
    seen = set(carried)
    while carried:
        for node, i in consumers[carried.pop()]:
            carries = node.op_type in _CARRIERS and (_CARRIERS[node.op_type] is None
                                                     or i in _CARRIERS[node.op_type])
            if node.op_type in _SOFTMAXES or carries:
                found[node.name] = None
            if carries:
                carried += [out for out in node.output if out not in seen]
                seen.update(node.output)
    return _reaching_softmax(model, found)


def _mask_constants(model):
    """The names of the constant tensors holding a mask value: initializers, Constant and
    ConstantOfShape outputs."""
    from onnx import numpy_helper

    def huge(array) -> bool:
        values = np.asarray(array, dtype=np.float64)
        return values.size > 0 and bool(np.any(~np.isfinite(values) | (np.abs(values) >= MASK_MAGNITUDE)))

    for init in model.graph.initializer:
        if init.data_type in (1, 10, 11, 16) and huge(numpy_helper.to_array(init)):  # float types
            yield init.name
    for node in model.graph.node:
        if node.op_type in ("Constant", "ConstantOfShape"):
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in (1, 10, 11, 16) \
                        and huge(numpy_helper.to_array(attr.t)) \
                        or attr.name == "value_float" and huge(attr.f):
                    yield node.output[0]


def _reaching_softmax(model, found: dict) -> list[str]:
    """Of `found` (node names, in the order the mask reached them), those on a path to a Softmax:
    a large constant that never meets one is no mask, and its nodes are quantized as usual."""
    producer = {out: n for n in model.graph.node for out in n.output}
    keep: set[str] = set()
    stack = [n for n in model.graph.node if n.name in found and n.op_type in _SOFTMAXES]
    while stack:
        node = stack.pop()
        if node.name in keep:
            continue
        keep.add(node.name)
        stack += [producer[i] for i in node.input if i in producer and producer[i].name in found]
    return [name for name in found if name in keep]
