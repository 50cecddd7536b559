"""Bad input through the real CLI: one clear line per problem, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from support import demo_recipe, run_cli, write_recipe

MODELS = '''
import torch
from torch import nn

def not_a_module():
    return "a string"

def needs_three_channels():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(10))
'''


def _fails_with(tmp_path: Path, recipe: dict, *expected: str) -> None:
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=out)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert not (out / "report.json").exists()


def test_unknown_key_and_wrong_type_listed_together(tmp_path):
    recipe = demo_recipe(seed="zero")
    recipe["quantization"]["calibration_batchs"] = 4
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2
    assert any("seed: Input should be a valid integer" in line for line in lines)
    assert any("quantization.calibration_batchs: unknown key" in line for line in lines)


def test_unknown_device_lists_known_ones(tmp_path):
    _fails_with(tmp_path, demo_recipe(devices=["pixel-9"]), "unknown device 'pixel-9'; known: ", "local")


def test_model_factory_that_does_not_import(tmp_path):
    recipe = demo_recipe()
    recipe["model"]["factory"] = "no_such_package.models:net"
    _fails_with(tmp_path, recipe, "model.factory 'no_such_package.models:net': cannot import "
                                  "'no_such_package.models'")


def test_model_factory_that_returns_no_module(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    recipe = demo_recipe()
    recipe["model"]["factory"] = "models.py:not_a_module"
    _fails_with(tmp_path, recipe, "returned str; expected a torch.nn.Module")


def test_example_inputs_that_do_not_fit_the_data(tmp_path):
    recipe = demo_recipe()
    recipe["model"]["example_inputs"] = [{"shape": [1, 3, 8, 8]}]
    _fails_with(tmp_path, recipe, "model.example_inputs[0]: shape [1, 3, 8, 8]", "a sample is [1, 8, 8]",
                "expected [batch, 1, 8, 8]")


def test_example_inputs_that_do_not_fit_the_model(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    recipe = demo_recipe()
    recipe["model"]["factory"] = "models.py:needs_three_channels"
    _fails_with(tmp_path, recipe, "model.example_inputs [1, 1, 8, 8] float32, which fit data.factory's samples, do not "
                "fit the model",
                "expected input[1, 1, 8, 8] to have 3 channels")


def test_float_training_that_diverges_names_the_key(tmp_path):
    recipe = demo_recipe()
    recipe["model"]["train"]["lr"] = 1e30
    _fails_with(tmp_path, recipe, "model.train: train float model: the loss is ",
                "or the learning rate is too high")


def test_out_folder_with_foreign_files_is_refused_and_never_emptied(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run_cli("run", str(write_recipe(tmp_path, demo_recipe())), out=out)
    assert result.code == 2
    assert "exists and is not empty" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("args", [["run"], ["run", "a.toml", "--frobnicate"], ["teleport"]])
def test_usage_errors_exit_2(args):
    assert run_cli(*args).code == 2


def test_print_recipe_round_trips(tmp_path):
    result = run_cli("demo", "--print-recipe")
    assert result.code == 0
    assert 'factory = "edgeship.examples.digits:cnn"' in result.stdout
