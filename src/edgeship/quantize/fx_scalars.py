"""Python values a model's forward computes from tensor shapes, made plain to FX graph mode
quantization.

torch.ao's FX prepare decides which values are tensors by a heuristic: a value computed from a
shape and a float literal counts as a possible tensor, so it gets an observer, which then fails on
the number ("'float' object has no attribute 'numel'"; in QAT "fused_moving_avg_obs_fake_quant():
argument 'input' must be Tensor, not float"). torch's own default flow fails the same way. Each
such float that comes out the same at two batch sizes is written into the graph as a literal,
which FX quantizes as the scalar it is. Numbers that change with the batch stay computed.

A shape joined to a tuple with `+`, as every Hugging Face attention writes its head split
(`x.size()[:-1] + (heads, head_size)`), is an `operator.add` to FX, which quantizes it as a
tensor add: the observer failed on the torch.Size ("must be Tensor, not torch.Size") and both
TorchScript targets failed calibration (torch.ao's `all_node_args_have_no_tensors` counts a tuple
literal as a tensor; an `nn.Module`'s `view` of it then observes it too). Each `+` whose value is
a tuple becomes `joined_shape` with the literal's numbers spread as its arguments, which FX
keeps as one call (torch.fx.wrap, also when prepare_fx traces the graph again) and torch.ao sees
as numbers."""

from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn


def joined_shape(*parts) -> torch.Size:
    """`a + b + ...` of shapes and tuples: each part a sequence (its items) or one number."""
    out: list = []
    for part in parts:
        out.extend(part) if isinstance(part, (tuple, list)) else out.append(part)
    return torch.Size(out)


fx.wrap("joined_shape")


class _ShapeValues(fx.Interpreter):
    """Runs the graph and keeps, by node name, every value that is a Python float, and the names
    of the `+` nodes whose value is a tuple (torch.Size included)."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module)
        self.floats: dict[str, float] = {}
        self.joined: set[str] = set()

    def run_node(self, node: fx.Node):
        value = super().run_node(node)
        if type(value) is float:
            self.floats[node.name] = value
        elif isinstance(value, tuple) and node.op == "call_function" \
                and node.target in (operator.add, operator.iadd):
            self.joined.add(node.name)
        return value


def _values(graph: fx.GraphModule, batches: list[tuple]) -> list[_ShapeValues]:
    """The graph's shape values on each batch of inputs."""
    # A copy in eval form: running the caller's graph in train form would move batch norm's statistics.
    probe, out = copy.deepcopy(graph).eval(), []
    with torch.no_grad():
        for inputs in batches:
            interpreter = _ShapeValues(probe)
            interpreter.run(*inputs)
            out.append(interpreter)
    return out


def _traced(model: nn.Module, leaves: frozenset[str]) -> fx.GraphModule | None:
    from torch.ao.quantization.fx.tracer import QuantizationTracer

    # the leaves FX quantization's own trace keeps, and the modules it cannot trace
    tracer = QuantizationTracer(sorted(leaves), [])
    try:
        return fx.GraphModule(model, tracer.trace(model))
    except Exception:  # noqa: BLE001 - untraceable: FX's prepare says why, in its own words
        return None


def shape_values_fixed(model: nn.Module, example_inputs: tuple,
                       leaves: frozenset[str] = frozenset()) -> nn.Module:
    """`model` as a GraphModule with its shape-derived float constants written in as literals and
    its tuple `+` as `joined_shape`; `model` itself when it has neither (or cannot be traced or
    run at batch 2). `leaves`: the modules FX cannot trace (quantize/fx_untraceable.py). Traced in
    eval form, as QAT captures it (quantize/qat_capture.py)."""
    traced = _traced(copy.deepcopy(model).eval(), leaves)
    if traced is None:
        return model
    doubled = tuple(torch.cat([x, x]) for x in example_inputs)
    try:
        one, two = _values(traced, [example_inputs, doubled])
    except Exception:  # noqa: BLE001 - a model fixed to its example batch: nothing is changed
        return model
    constant = {name: value for name, value in one.floats.items() if two.floats.get(name) == value}
    joined = one.joined | two.joined
    if not constant and not joined:
        return model
    for node in traced.graph.nodes:
        if node.name in joined:
            node.target, node.meta["is_wrapped"] = joined_shape, True  # a leaf when traced again
            node.args = tuple(x for a in node.args for x in (a if isinstance(a, tuple) else (a,)))
        for user in list(node.users) if node.name in constant else []:
            user.args = fx.node.map_arg(user.args, lambda n: constant[n.name] if n is node else n)
            user.kwargs = fx.node.map_arg(user.kwargs, lambda n: constant[n.name] if n is node else n)
    traced.graph.eliminate_dead_code()
    traced.recompile()
    return traced
