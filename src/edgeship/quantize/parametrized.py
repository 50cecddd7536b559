"""Reparametrized weights (weight norm, spectral norm) as the plain weights they compute.

`torch.nn.utils.parametrizations.weight_norm` makes a conv a `ParametrizedConv1d` whose weight is
computed from (g, v) on every call; the older `torch.nn.utils.weight_norm` does the same with a
forward pre-hook. Audio models (WaveNet, HiFi-GAN vocoders) train so. torch.ao's FX quantization
refuses both, in its own documented flow too (torch 2.13: `qat.Conv1d.from_float only works for
Conv1d, got ParametrizedConv1d`; `cannot assign 'torch.FloatTensor' as parameter 'weight'`), and
every exporter would otherwise recompute the norm on each inference. Once trained, only the weight
matters: removing the parametrization and keeping its value, as those models' own inference code
does (`remove_weight_norm`), leaves the same function with a plain Conv/Linear every quantizer
knows."""

from __future__ import annotations

import re

from torch import nn
from torch.nn.utils import parametrize, remove_spectral_norm, remove_weight_norm
from torch.nn.utils.spectral_norm import SpectralNorm
from torch.nn.utils.weight_norm import WeightNorm

_HOOKS = {WeightNorm: ("weight_norm", remove_weight_norm), SpectralNorm: ("spectral_norm", remove_spectral_norm)}


def weights_baked(model: nn.Module) -> list[str]:
    """Removes every parametrization of `model`, in place, keeping the values it computes now
    (`model` must be in the state it will be used in: eval mode for spectral norm, whose power
    iteration runs in training). Returns what it baked, as "module.tensor (kind)"."""
    baked = []
    for name, module in list(model.named_modules()):
        if parametrize.is_parametrized(module):
            for tensor in list(module.parametrizations):
                kinds = ", ".join(_snake(type(p).__name__) for p in module.parametrizations[tensor])
                # outside no_grad: the weight it leaves must stay a trainable Parameter, for QAT
                parametrize.remove_parametrizations(module, tensor, leave_parametrized=True)
                baked.append(f"{name}.{tensor} ({kinds})")
        for hook in [h for h in module._forward_pre_hooks.values() if type(h) in _HOOKS]:
            kind, remove = _HOOKS[type(hook)]
            remove(module, hook.name)
            baked.append(f"{name}.{hook.name} ({kind})")
    return baked


def _snake(name: str) -> str:
    """`_WeightNorm` -> `weight_norm`: the name the older hook and the docs use."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name.lstrip("_")).lower()
