"""Prune stage: magnitude pruning before quantization (torch.nn.utils.prune), fine-tuned with the
masks in place, then made permanent. Zeros are stored densely: pruning alone does not shrink an
int8 file; it buys sparsity that a sparse kernel or a later channel removal can use."""

from __future__ import annotations

from torch import nn
from torch.nn.utils import prune

from edgeship.recipe import PruneSection

LAYER_TYPES = {"conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d), "linear": (nn.Linear,)}


def prunable_layers(model: nn.Module, amount: dict[str, float]) -> list[tuple[str, nn.Module, float]]:
    return [(name, module, amount[kind]) for name, module in model.named_modules()
            for kind, types in LAYER_TYPES.items()
            if kind in amount and isinstance(module, types) and amount[kind] > 0]


def apply_masks(model: nn.Module, config: PruneSection) -> list[str]:
    """Masks on every chosen layer (training keeps pruned weights at zero); returns their names."""
    layers = prunable_layers(model, config.amount)
    for _, module, amount in layers:
        if config.method == "l1_unstructured":
            prune.l1_unstructured(module, "weight", amount=amount)
        else:  # whole output channels, by their L1 norm
            prune.ln_structured(module, "weight", amount=amount, n=1, dim=0)
    return [name for name, _, _ in layers]


def make_permanent(model: nn.Module, names: list[str]) -> None:
    modules = dict(model.named_modules())
    for name in names:
        prune.remove(modules[name], "weight")


def sparsity(model: nn.Module, names: list[str]) -> dict:
    """Fraction of zero weights, per pruned layer and over all of them."""
    modules = dict(model.named_modules())
    per_layer = {n: float((modules[n].weight == 0).float().mean()) for n in names}
    zeros = sum(int((modules[n].weight == 0).sum()) for n in names)
    total = sum(modules[n].weight.numel() for n in names)
    return {"overall": zeros / total if total else 0.0, "layers": per_layer}
