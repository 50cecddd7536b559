"""The recipe is validated as a whole, before anything runs; every problem has its key path."""

from __future__ import annotations

import pytest

from edgeship.errors import UserError
from edgeship.recipe import load_recipe, parse_recipe_text
from support import demo_recipe, write_recipe
from edgeship.cli import demo_recipe_text
from pathlib import Path


def test_builtin_recipe_is_valid():
    recipe = parse_recipe_text(demo_recipe_text(), "demo", Path.cwd())
    assert recipe.targets == ["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"]
    assert recipe.quantization.qat.enabled and recipe.quantization.qat.lr is None  # the probe chooses
    assert recipe.budgets[0].limits() == {"max_accuracy_drop": 0.5, "max_size_mb": 0.2,
                                          "max_latency_p90_ms": 20, "max_peak_rss_mb": 1000}


def test_every_problem_is_listed_with_its_key_path(tmp_path):
    recipe = demo_recipe(targets=["onnx-int8", "onnx-int4"])
    recipe["model"]["exmaple_inputs"] = recipe["model"].pop("example_inputs")
    recipe["quantization"]["qat"]["epochs"] = "two"
    recipe["budgets"].append({"max_size_mb": -1})
    path = write_recipe(tmp_path, recipe)
    with pytest.raises(UserError) as error:
        load_recipe(path)
    lines = str(error.value).splitlines()
    assert len(lines) == 5, lines
    assert all(line.startswith(f"{path}: ") for line in lines)
    text = str(error.value)
    assert "model.example_inputs: required key is missing" in text
    assert "model.exmaple_inputs: unknown key" in text
    assert "quantization.qat.epochs: Input should be a valid integer" in text
    assert "budgets[1].max_size_mb: Input should be greater than 0" in text
    assert ("targets: unknown target 'onnx-int4'; known: executorch-fp32, executorch-xnnpack, "
            "onnx-fp32, onnx-int8, torchscript-fbgemm, torchscript-fp32, torchscript-qnnpack") in text


def test_a_budget_needs_a_limit_and_known_targets(tmp_path):
    recipe = demo_recipe(budgets=[{"targets": ["onnx-int8"]}, {"targets": ["tflite"], "max_size_mb": 1}])
    with pytest.raises(UserError) as error:
        load_recipe(write_recipe(tmp_path, recipe))
    text = str(error.value)
    assert "budgets[0]: a budget needs at least one limit" in text
    assert "budgets[1].targets: unknown target 'tflite'" in text


def test_not_toml_names_the_file_and_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = 'x'\ntargets = [\n[model]\n")
    with pytest.raises(UserError, match=r"broken.toml: not valid TOML: .*line"):
        load_recipe(path)


def test_missing_file_is_bad_input(tmp_path):
    with pytest.raises(UserError, match="cannot read recipe"):
        load_recipe(tmp_path / "nope.toml")


def test_sha256_ignores_comments_and_layout(tmp_path):
    text = demo_recipe_text()
    a = parse_recipe_text(text, "a", tmp_path)
    b = parse_recipe_text("# a comment\n\n" + text, "b", tmp_path)
    c = parse_recipe_text(text.replace("epochs = 2", "epochs = 3"), "c", tmp_path)
    assert a.sha256() == b.sha256() != c.sha256()
