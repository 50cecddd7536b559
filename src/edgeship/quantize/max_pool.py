"""Adaptive max pooling as the plain max pooling it equals, for ExecuTorch.

torch.export writes `nn.AdaptiveMaxPool1d/2d` as aten.adaptive_max_pool2d, which is not in the
Core ATen opset: ExecuTorch's `to_edge` refuses the program (SpecViolationError), in ExecuTorch's
own documented flow too (executorch 1.5.1). Where the output size divides the input's, as for
the global max pool `AdaptiveMaxPool2d(1)`, each output is the max over one kernel-sized window
with a stride of the same size: `max_pool` exactly, which is Core ATen and XNNPACK delegates."""

from __future__ import annotations

import copy

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
