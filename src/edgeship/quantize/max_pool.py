"""Adaptive max pooling as the plain max pooling it equals, for ExecuTorch.

torch.export writes `nn.AdaptiveMaxPool1d/2d` and `F.adaptive_max_pool1d/2d` as
aten.adaptive_max_pool1d/2d, which are not in the Core ATen opset: ExecuTorch's `to_edge` refuses
the program (SpecViolationError), in ExecuTorch's own documented flow too (executorch 1.5.1).
Where the output size divides the input's, as for the global max pool `AdaptiveMaxPool2d(1)`,
each output is the max over one kernel-sized window with a stride of the same size: `max_pool`
exactly, which is Core ATen and XNNPACK delegates. The modules are swapped before capture, so the
quantizers see the max pool; what is left in an exported program (functional calls, sizes that do
not divide) is decomposed there, exactly, into Core ATen ops."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F

_ADAPTIVE = {nn.AdaptiveMaxPool1d: (1, F.max_pool1d), nn.AdaptiveMaxPool2d: (2, F.max_pool2d)}


class _EvenAdaptiveMaxPool(nn.Module):
    """`pool`, computed as max pooling wherever its output size divides the input's; as itself
    where it does not (the program then fails where it would have)."""

    def __init__(self, pool: nn.Module) -> None:
        super().__init__()
        self.pool = pool
        self.dims, self.max_pool = _ADAPTIVE[type(pool)]

    def forward(self, x):
        size = tuple(x.shape[-self.dims:])  # static under torch.export: plain ints
        wanted = self.pool.output_size
        wanted = (wanted,) * self.dims if not isinstance(wanted, (tuple, list)) else tuple(wanted)
        out = tuple(s if o is None else o for s, o in zip(size, wanted))
        if any(s % o for s, o in zip(size, out)):
            return self.pool(x)
        kernel = tuple(s // o for s, o in zip(size, out))
        return self.max_pool(x, kernel, kernel)


def adaptive_max_pools_as_max_pools(model: nn.Module) -> nn.Module:
    """A copy of `model` whose adaptive max pools compute as max pools (see the module's doc);
    `model` itself when it has none. Each keeps its module name, for float layers and reports."""
    found = [name for name, m in model.named_modules()
             if type(m) in _ADAPTIVE and not m.return_indices and name]
    if not found:
        return model
    model = copy.deepcopy(model)
    for name in found:
        model.set_submodule(name, _EvenAdaptiveMaxPool(model.get_submodule(name)))
    return model


def adaptive_max_pools_decomposed(program: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """`program` with each adaptive max pool written as the Core ATen ops it equals (values and
    indices both exact); `program` itself when it has none."""
    aten = torch.ops.aten
    table = {aten.adaptive_max_pool2d.default: _adaptive_max_pool2d,
             aten.adaptive_max_pool1d.default: _adaptive_max_pool1d}
    if not any(node.target in table for node in program.graph.nodes):
        return program
    return program.run_decompositions(table)


def _adaptive_max_pool1d(x: torch.Tensor, output_size):
    values, indices = _adaptive_max_pool2d(x.unsqueeze(-2), (1, output_size[0]))
    return values.squeeze(-2), indices.squeeze(-2)


def _adaptive_max_pool2d(x: torch.Tensor, output_size):
    """Output cell (i, j) is the max over rows [floor(i H / oh), ceil((i + 1) H / oh)) and the
    columns likewise, as PyTorch's kernel takes them; indices count over the H x W plane."""
    (h, w), (oh, ow) = x.shape[-2:], output_size
    if h % oh == 0 and w % ow == 0:
        kernel = [h // oh, w // ow]
        return torch.ops.aten.max_pool2d_with_indices.default(x, kernel, kernel)
    values, indices = [], []
    for (r0, r1), (c0, c1) in ((rows, cols) for rows in _bins(h, oh) for cols in _bins(w, ow)):
        value, at = x[..., r0:r1, c0:c1].flatten(-2).max(-1)
        values.append(value)
        indices.append((r0 + at // (c1 - c0)) * w + c0 + at % (c1 - c0))
    shape = (*x.shape[:-2], oh, ow)
    return torch.stack(values, -1).reshape(shape), torch.stack(indices, -1).reshape(shape)


def _bins(size: int, out: int) -> list[tuple[int, int]]:
    return [((i * size) // out, -(-(i + 1) * size // out)) for i in range(out)]
