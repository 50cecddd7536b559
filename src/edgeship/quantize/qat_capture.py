"""The form a model is captured in for QAT.

Graph capture freezes Python control flow: torch.ao's FX tracer and torch.export both record the
branch `self.training` picks while they trace, and nothing switches it afterwards. Captured in
training mode, as their documentation does it, a forward's training-only branch ships: stochastic
depth's `torch.rand_like` mask, or `F.dropout(x, p, self.training)`, ran in the converted model
and in every artifact made from it (an EfficientNet-style net's ExecuTorch artifact answered
differently on each call, by up to 11 in its logits). Where the branch sizes its mask by the batch
(`torch.rand(x.shape[0], 1, 1, 1)`), FX cannot even trace it.

So a model is captured in eval form, its deployment form, except the layers whose training
behaviour the captured graph keeps switchable. torch.export bakes every module's form in, and
torchao's move_exported_model_to_eval rewrites two patterns back: batch norm and `nn.Dropout`
(`PT2E_SWITCHABLE`). FX keeps torch.nn's layers as modules (its leaves), which `.eval()` still
switches, and fuses a convolution with its batch norm only when both are in the same mode
(`fx_switchable`). QAT fine-tunes the graph the artifact runs, without stochastic depth or
functional dropout: for a short fine-tune at a small learning rate, the deployment graph it
adapts to."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

PT2E_SWITCHABLE = (nn.modules.batchnorm._BatchNorm, nn.Dropout)


def pt2e_switchable(module: nn.Module) -> bool:
    return isinstance(module, PT2E_SWITCHABLE)


def fx_switchable(module: nn.Module) -> bool:
    """torch.nn's own layers, which FX's tracer keeps as modules (its is_leaf_module)."""
    return type(module).__module__.startswith(("torch.nn", "torch.ao.nn"))


def capture_form(model: nn.Module, switchable: Callable[[nn.Module], bool]) -> nn.Module:
    """A copy of `model` in eval mode except its `switchable` layers, in training mode.

    Each layer's own flag, not `.train()`: that is recursive, and would put a user's stochastic
    depth back in training mode under the torch.nn container that holds it (an nn.Sequential of
    blocks; timm's drop_path then failed FX QAT, a rand_like mask shipped)."""
    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if switchable(module):
            module.training = True
    return model
