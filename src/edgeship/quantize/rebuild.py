"""torch.nn modules rebuilt as torch.ao's quantizable twins, in float: the same weights, held by
modules a quantizer can see into (attention.py, recurrent.py)."""

from __future__ import annotations

import warnings
from collections.abc import Callable

from torch import nn


def from_float_unobserved(from_float: Callable[[nn.Module], nn.Module], module: nn.Module) -> nn.Module:
    """torch.ao's `from_float(module)` with no observer added and no qconfig left behind: it wants
    a qconfig (None adds no observer), and its prepare sets None on every submodule, which a later
    quantize_dynamic would read as "leave float"."""
    module.qconfig = None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*None of the submodule got qconfig applied.*")
        rebuilt = from_float(module)
    del module.qconfig
    for inner in rebuilt.modules():
        inner.__dict__.pop("qconfig", None)
    return rebuilt


def rebuilt_each(model: nn.Module, kind: type[nn.Module], rebuild: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """`model` with every module of exactly type `kind` in it (itself included) replaced, in
    place, by `rebuild(module)`."""
    if type(model) is kind:
        return rebuild(model)
    for name, module in [(n, m) for n, m in model.named_modules() if n and type(m) is kind]:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, rebuild(module))
    return model
