"""How much of an artifact's arithmetic runs int8, read from the artifact itself rather than from
what the pipeline meant to make: every compute op (convolutions, matrix products, recurrent and
attention layers) with its multiply-accumulates at the exported shapes, the weights it multiplies
by, and whether its runtime runs it with int8 kernels. Each format's module finds its ops
(onnx_compute.py, torchscript_compute.py, executorch_compute.py); this one sums them."""

from __future__ import annotations

from dataclasses import dataclass

# The float ops a report lists by name, largest first; the rest are in the totals
LISTED_FLOAT_OPS = 12


@dataclass(frozen=True)
class ComputeOp:
    name: str  # the layer's module path where the artifact keeps it, else the op's own name
    op: str  # the op as the artifact calls it: quantized::conv2d, QLinearConv, aten.linear, ...
    macs: int  # multiply-accumulates of one inference at the exported input shapes
    # weight elements it multiplies by (0: a product of two activations, or a weight an earlier
    # op already counted, as in an unrolled recurrent layer)
    weights: int
    int8: bool  # its runtime runs it with int8 kernels


def int8_share(ops: list[ComputeOp]) -> dict:
    """The int8 share of `ops` by multiply-accumulates and by weights, and the float ops with
    their share of the MACs, largest first: report.json's `int8_share`.

    >>> int8_share([ComputeOp("conv", "QLinearConv", 90, 9, True),
    ...             ComputeOp("fc", "Gemm", 10, 10, False)])["macs_fraction"]
    0.9
    """
    macs = sum(o.macs for o in ops)
    weights = sum(o.weights for o in ops)
    floats: dict[tuple[str, str], int] = {}  # an unrolled LSTM is one layer of many matmuls
    for o in ops:
        if not o.int8:
            floats[o.name, o.op] = floats.get((o.name, o.op), 0) + o.macs
    largest = sorted(floats.items(), key=lambda item: -item[1])[:LISTED_FLOAT_OPS]
    return {
        "macs_fraction": sum(o.macs for o in ops if o.int8) / macs if macs else None,
        "weights_fraction": sum(o.weights for o in ops if o.int8) / weights if weights else None,
        "macs": macs, "weights": weights, "compute_ops": len(ops),
        "float_compute_ops": sum(not o.int8 for o in ops),
        "float_ops": [{"name": name, "op": op, "macs_fraction": n / macs if macs else 0.0}
                      for (name, op), n in largest],
    }


def measured_share(find_ops, *args) -> dict:
    """int8_share of the ops `find_ops(*args)` finds; an artifact whose ops cannot be read still
    ships, with the reason in place of its share (a min_int8_fraction budget then fails)."""
    try:
        return int8_share(find_ops(*args))
    except Exception as e:  # noqa: BLE001 - any op this reader does not know must not stop the export
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}


def numel(shape) -> int:
    """Elements of a tensor of `shape`; a symbolic dimension counts as 1."""
    n = 1
    for d in shape:
        n *= d if isinstance(d, int) and d > 0 else 1
    return n
