"""Python numbers a model's forward computes from tensor shapes, such as attention's scale
`(d // heads) ** -0.5` with `d` from `x.shape`, made constants before FX graph mode quantization.

torch.ao's FX prepare decides which values are tensors by a heuristic: a value computed from a
shape and a float literal counts as a possible tensor, so it gets an observer, which then fails on
the number ("'float' object has no attribute 'numel'"; in QAT "fused_moving_avg_obs_fake_quant():
argument 'input' must be Tensor, not float"). torch's own default flow fails the same way. Each
such float that comes out the same at two batch sizes is written into the graph as a literal,
which FX quantizes as the scalar it is. Numbers that change with the batch stay computed."""

from __future__ import annotations

import copy

import torch
from torch import fx, nn


class _Floats(fx.Interpreter):
    """Runs the graph and keeps every node's value that is a Python float, by node name."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.floats: dict[str, float] = {}

    def run_node(self, node: fx.Node):
        value = super().run_node(node)
        if type(value) is float:
            self.floats[node.name] = value
        return value


def _floats(graph: fx.GraphModule, batches: list[tuple]) -> list[dict[str, float]]:
    """The graph's float values on each batch of inputs."""
    # A copy in eval form: running the caller's graph in train form would move batch norm's statistics.
    probe, out = copy.deepcopy(graph).eval(), []
    with torch.no_grad():
        for inputs in batches:
            interpreter = _Floats(probe)
            interpreter.run(*inputs)
            out.append(interpreter.floats)
    return out


def _traced(model: nn.Module, leaves: frozenset[str]) -> fx.GraphModule | None:
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    # the leaves FX quantization's own trace keeps, and the modules it cannot trace
    tracer = QuantizationTracer(sorted(leaves), [])
    try:
        return fx.GraphModule(model, tracer.trace(model))
    except Exception:  # noqa: BLE001 - untraceable: FX's prepare says why, in its own words
        return None


def shape_floats_folded(model: nn.Module, example_inputs: tuple,
                        leaves: frozenset[str] = frozenset()) -> nn.Module:
    """`model` as a GraphModule with its shape-derived float constants written in as literals;
    `model` itself when it computes none (or cannot be traced or run at batch 2). `leaves`: the
    modules FX cannot trace (quantize/fx_untraceable.py). Traced in eval form, as QAT captures it
    (quantize/qat_capture.py)."""
    traced = _traced(copy.deepcopy(model).eval(), leaves)
    if traced is None:
        return model
    doubled = tuple(torch.cat([x, x]) for x in example_inputs)
    try:
        one, two = _floats(traced, [example_inputs, doubled])
    except Exception:  # noqa: BLE001 - a model fixed to its example batch: nothing is folded
        return model
    constant = {name: value for name, value in one.items() if two.get(name) == value}
    if not constant:
        return model
    for node in [n for n in traced.graph.nodes if n.name in constant]:
        for user in list(node.users):
            user.args = fx.node.map_arg(user.args, lambda n: constant[n.name] if n is node else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n: constant[n.name] if n is node else n)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    return traced
