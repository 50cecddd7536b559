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


def test_every_unknown_target_is_named_at_once(tmp_path):
    path = write_recipe(tmp_path, demo_recipe(targets=["onnx-int8-dynamic", "onnx-int8", "tflite-int8"]))
    with pytest.raises(UserError) as error:
        load_recipe(path)
    assert str(error.value).startswith(f"{path}: targets: unknown targets 'onnx-int8-dynamic', 'tflite-int8'; known: ")
    assert str(error.value).endswith("(quantization.mode or modes makes a target dynamic)")


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


def test_a_recipe_that_is_not_utf8_text_is_one_error_naming_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "café"\n'.encode("latin-1"))
    with pytest.raises(UserError) as error:
        load_recipe(path)
    assert str(error.value) == f"{path}: not a recipe: not UTF-8 text (byte 11)"


def test_arrays_nested_past_the_parsers_depth_are_bad_input(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(UserError, match=r"deep.toml: not valid TOML: arrays or tables nested too deeply"):
        load_recipe(path)


@pytest.mark.parametrize("settings, problem", [
    ({"min_seconds": float("inf")}, "benchmark.min_seconds: Input should be a finite number"),
    ({"min_seconds": float("nan")}, "benchmark.min_seconds: Input should be a finite number"),
    ({"min_seconds": 7200}, "benchmark.min_seconds: Input should be less than or equal to 3600"),
    ({"timeout_seconds": 1e9}, "benchmark.timeout_seconds: Input should be less than or equal to 86400"),
    ({"threads": 10**6}, "benchmark.threads: Input should be less than or equal to 1024"),
    ({"min_iterations": 10**12}, "benchmark.min_iterations: Input should be less than or equal to 1000000000"),
])
def test_benchmark_settings_are_finite_and_bounded(tmp_path, settings, problem):
    with pytest.raises(UserError) as error:
        load_recipe(write_recipe(tmp_path, demo_recipe(benchmark=settings)))
    assert str(error.value).splitlines() == [f"{tmp_path / 'recipe.toml'}: {problem}"]


def test_no_number_of_a_recipe_is_infinite_or_nan(tmp_path):
    recipe = demo_recipe(budgets=[{"max_size_mb": float("inf")}])
    recipe["quantization"]["qat"]["lr"] = float("nan")
    with pytest.raises(UserError) as error:
        load_recipe(write_recipe(tmp_path, recipe))
    text = str(error.value)
    assert "budgets[0].max_size_mb: Input should be a finite number" in text
    assert "quantization.qat.lr: Input should be a finite number" in text


@pytest.mark.parametrize("name, kept", [("two\nlines", "two\\x0alines"), ("bell\x07", "bell\\x07"),
                                        ("\x1b[31mred", "\\x1b[31mred"), ("right-to-left\u202e", "right-to-left\\u202e")])
def test_control_characters_in_the_name_are_kept_as_their_codes(tmp_path, name, kept):
    """A newline, BEL, ESC or a bidi override would split, ring, repaint or reorder every line the
    name is shown in: the recipe keeps the name with those characters written as their codes."""
    assert load_recipe(write_recipe(tmp_path, demo_recipe(name=name))).name == kept


@pytest.mark.parametrize("name", ["", "x" * 201])
def test_the_name_is_not_empty_or_long(tmp_path, name):
    with pytest.raises(UserError, match=r"recipe.toml: name: "):
        load_recipe(write_recipe(tmp_path, demo_recipe(name=name)))


def test_markup_and_html_in_the_name_are_text_not_errors(tmp_path):
    # Escaping them is the writers' job (console, report.md, HTML); the recipe keeps them as typed.
    name = "[/] <script>alert(1)</script> | x"
    assert load_recipe(write_recipe(tmp_path, demo_recipe(name=name))).name == name


def test_an_example_input_of_more_than_2_28_elements_is_refused(tmp_path):
    recipe = demo_recipe()
    recipe["model"]["example_inputs"] = [{"shape": [1, 3, 100_000, 100_000]}]
    with pytest.raises(UserError, match=r"model.example_inputs\[0\].shape: 30000000000 elements; at most"):
        load_recipe(write_recipe(tmp_path, recipe))


def test_a_budget_on_a_target_the_recipe_does_not_build_is_refused(tmp_path):
    recipe = demo_recipe(targets=["onnx-int8", "torchscript-fbgemm"], fp32_twins=False,
                         budgets=[{"max_size_mb": 1}, {"targets": ["onnx-int8", "executorch-xnnpack"],
                                                       "max_size_mb": 1}])
    with pytest.raises(UserError) as error:
        load_recipe(write_recipe(tmp_path, recipe))
    assert str(error.value) == (f"{tmp_path / 'recipe.toml'}: budgets[1].targets: "
                                "'executorch-xnnpack' not built by this recipe; its targets: "
                                "onnx-int8, torchscript-fbgemm")


def test_a_budget_may_name_the_fp32_twins_the_recipe_builds(tmp_path):
    recipe = demo_recipe(targets=["onnx-int8"], budgets=[{"targets": ["onnx-fp32"], "max_size_mb": 1}])
    assert load_recipe(write_recipe(tmp_path, recipe)).built_targets() == ["onnx-int8", "onnx-fp32"]
    without_twins = {**recipe, "fp32_twins": False}
    with pytest.raises(UserError, match="'onnx-fp32' not built by this recipe; its targets: onnx-int8$"):
        load_recipe(write_recipe(tmp_path, without_twins))
