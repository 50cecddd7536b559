"""The user's model and data: the 'package.module:function' or 'path/file.py:function' factories
a recipe names, resolved and called; what goes wrong is the user's, said in one line (UserError)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from edgeship.data import Splits, sample_digests
from edgeship.errors import UserError
from edgeship.fileio import sha256_file
from edgeship.recipe import Recipe, Teacher

# The name a user's file is imported under ("nets.py:big"): nothing else can import it by that
# name, so what travels to a Ray task carries the file's code with it (cluster.Tasks)
USER_MODULE_PREFIX = "edgeship_user_"


def resolve_callable(spec: str, key: str, base_dir: Path) -> Callable:
    module_part, sep, attr = spec.rpartition(":")
    if not sep or not module_part or not attr:
        raise UserError(f"{key} {spec!r}: expected 'package.module:function' or "
                        f"'path/to/file.py:function'")
    if module_part.endswith(".py") or "/" in module_part:
        module = _module_from_file(base_dir / module_part, key, spec)
    else:
        try:
            module = importlib.import_module(module_part)
        except Exception as e:  # noqa: BLE001 - any import failure is the user's module's
            raise UserError(f"{key} {spec!r}: cannot import {module_part!r}: "
                            f"{type(e).__name__}: {e}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{key} {spec!r}: module {module_part!r} has no callable {attr!r}")
    return fn


def _module_from_file(path: Path, key: str, spec: str):
    if not path.is_file():
        raise UserError(f"{key} {spec!r}: no such file {path}")
    name = f"{USER_MODULE_PREFIX}{path.stem}_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001
        del sys.modules[name]
        raise UserError(f"{key} {spec!r}: {path} failed to import: {type(e).__name__}: {e}") from None
    return module


def load_model(recipe: Recipe) -> nn.Module:
    factory = resolve_callable(recipe.model.factory, "model.factory", recipe.base_dir)
    torch.manual_seed(recipe.seed)
    return _built(factory, recipe.model.kwargs, f"model.factory {recipe.model.factory!r}")


def load_teacher(recipe: Recipe, teacher: Teacher, key: str) -> nn.Module:
    """The teacher network of `teacher` (at recipe key `key`), with its weights, in eval mode."""
    model = _built(resolve_callable(teacher.factory, f"{key}.factory", recipe.base_dir),
                   teacher.kwargs, f"{key}.factory {teacher.factory!r}")
    if teacher.weights is not None:
        path = recipe.base_dir / teacher.weights
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except FileNotFoundError:
            raise UserError(f"{key}.weights: no such file {path}") from None
        except Exception as e:  # noqa: BLE001 - not a state_dict of this network, or not one at all
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise UserError(f"{key}.weights {path}: not a state_dict of the teacher "
                            f"{teacher.factory!r} ({type(e).__name__}: {first[:300]})") from None
    return model.eval()


def teacher_digest(recipe: Recipe, teacher: Teacher | None) -> str | None:
    """What a teacher's weights file holds, for the cache keys of what it teaches."""
    if teacher is None or teacher.weights is None or not (recipe.base_dir / teacher.weights).is_file():
        return None
    return sha256_file(recipe.base_dir / teacher.weights)


def _built(factory: Callable, kwargs: dict, what: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        raise UserError(f"{what} raised {type(e).__name__}: {e}") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{what} returned {type(model).__name__}; expected a torch.nn.Module")
    return model


def load_data(recipe: Recipe) -> Splits:
    factory = resolve_callable(recipe.data.factory, "data.factory", recipe.base_dir)
    try:
        value = factory(**recipe.data.kwargs)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"data.factory {recipe.data.factory!r} raised {type(e).__name__}: {e}") from None
    splits = Splits.coerce(value, recipe.data.factory)
    for name, split in splits.present().items():
        if len(split) == 0:
            raise UserError(f"data.factory {recipe.data.factory!r}: the {name} split is empty")
    if splits.validation is not None:
        try:
            shared = len(sample_digests(splits.validation) & sample_digests(splits.train))
        except Exception as e:  # noqa: BLE001 - the user's dataset: a bad sample is bad input
            raise UserError(f"data.factory {recipe.data.factory!r}: reading a sample raised "
                            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        if shared:
            raise UserError(f"data.factory {recipe.data.factory!r}: the validation split shares "
                            f"{shared} samples with the train split; QAT is scored on it, so it "
                            f"must hold samples QAT never trains on")
    return splits
