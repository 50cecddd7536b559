"""torchvision models by name (the optional 'vision' extra). Where torchvision cannot be imported
(PyPI's does not import beside torch 2.13.0), a recipe naming one fails with one line, exit 2."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

from edgeship.examples import vision
from support import demo_recipe, run_cli, write_recipe


def _torchvision_imports() -> bool:
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        importlib.import_module("torchvision")
    except Exception:  # noqa: BLE001
        return False
    return True


@pytest.mark.skipif(not _torchvision_imports(), reason="torchvision is not installed or does not import")
def test_a_model_by_name_without_downloading():
    model = vision.model("resnet18", num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="unknown torchvision classification model 'resnet9000'"):
        vision.model("resnet9000")


@pytest.mark.skipif(_torchvision_imports(), reason="torchvision imports here")
def test_without_torchvision_the_recipe_fails_with_one_line(tmp_path):
    recipe = demo_recipe()
    recipe["model"] = {"factory": "edgeship.examples.vision:model",
                       "kwargs": {"name": "resnet18", "num_classes": 10},
                       "example_inputs": [{"shape": [1, 1, 8, 8]}]}
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "model.factory 'edgeship.examples.vision:model' raised RuntimeError: torchvision is not " \
           "usable here" in line and "install the 'vision' extra" in line
