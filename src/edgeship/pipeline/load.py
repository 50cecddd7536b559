"""Load stage: the user's model and data, checked against the recipe's example inputs."""

from __future__ import annotations

import torch
from torch import nn

from edgeship.data import Splits, as_inputs
from edgeship.errors import UserError
from edgeship.pipeline.imports import resolve_callable
from edgeship.recipe import Recipe

_DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32}


def load_model(recipe: Recipe) -> nn.Module:
    factory = resolve_callable(recipe.model.factory, "model.factory", recipe.base_dir)
    torch.manual_seed(recipe.seed)
    try:
        model = factory(**recipe.model.kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise UserError(f"model.factory {recipe.model.factory!r} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"model.factory {recipe.model.factory!r} returned {type(model).__name__}; "
                        f"expected a torch.nn.Module")
    return model


def load_data(recipe: Recipe) -> Splits:
    factory = resolve_callable(recipe.data.factory, "data.factory", recipe.base_dir)
    try:
        value = factory(**recipe.data.kwargs)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"data.factory {recipe.data.factory!r} raised {type(e).__name__}: {e}") from None
    splits = Splits.coerce(value, recipe.data.factory)
    for name in ("train", "calibration", "test"):
        if len(getattr(splits, name)) == 0:
            raise UserError(f"data.factory {recipe.data.factory!r}: the {name} split is empty")
    return splits


def example_inputs(recipe: Recipe) -> tuple[torch.Tensor, ...]:
    """Zero tensors of the recipe's shapes and dtypes (fill_examples puts real data in them)."""
    return tuple(torch.zeros(spec.shape, dtype=_DTYPES[spec.dtype]) for spec in recipe.model.example_inputs)


def check_fit(model: nn.Module, examples: tuple[torch.Tensor, ...], splits: Splits) -> None:
    """Example inputs must match the data and the model must accept them: say which does not."""
    sample = as_inputs(splits.test[0][0])
    if len(sample) != len(examples):
        raise UserError(f"model.example_inputs has {len(examples)} inputs; the data gives {len(sample)}")
    for i, (example, x) in enumerate(zip(examples, sample)):
        if list(example.shape[1:]) != list(x.shape) or example.dtype != x.dtype:
            raise UserError(
                f"model.example_inputs[{i}]: shape {list(example.shape)} {str(example.dtype)[6:]} does "
                f"not fit the data: a sample is {list(x.shape)} {str(x.dtype)[6:]}, so expected "
                f"[batch, {', '.join(map(str, x.shape))}]")
    model.eval()
    try:
        with torch.no_grad():
            model(*examples)
    except Exception as e:  # noqa: BLE001
        shapes = ", ".join(str(list(x.shape)) for x in examples)
        raise UserError(f"model.example_inputs {shapes} do not fit the model: "
                        f"{type(e).__name__}: {str(e).splitlines()[0]}") from None


def fill_examples(examples: tuple[torch.Tensor, ...], splits: Splits) -> tuple[torch.Tensor, ...]:
    """Real data in the example inputs: observers and tracers see what the model will see."""
    batch = examples[0].shape[0]
    rows = [as_inputs(splits.test[i % len(splits.test)][0]) for i in range(batch)]
    return tuple(torch.stack([r[k] for r in rows]) for k in range(len(examples)))
