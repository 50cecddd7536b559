"""Models that are not classifiers: data.metric (top1, mse, perplexity or the user's function),
the matching training loss, and every figure of a run speaking that metric. End to end: the
diabetes regression and the causal language model through all four int8 targets."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import edgeship
from edgeship.errors import UserError
from edgeship.examples import language
from edgeship.metrics import builtin, metric_of
from edgeship.recipe import DataSection, parse_recipe
from support import QUICK_BENCHMARK, run_cli, write_recipe

RECIPES = Path(language.__file__).parent / "recipes"
TARGETS = ["torchscript-fbgemm", "torchscript-qnnpack", "onnx-int8", "executorch-xnnpack"]

USER_FUNCTIONS = '''
import torch

def mae(outputs, labels):
    return (outputs - labels.reshape(outputs.shape)).abs().mean()

def huber(outputs, labels):
    return torch.nn.functional.huber_loss(outputs, labels.reshape(outputs.shape))

def broken(outputs, labels):
    raise KeyError("no such column")

def per_sample(outputs, labels):
    return (outputs - labels.reshape(outputs.shape)) ** 2
'''


def test_builtin_metrics_compute_their_definitions():
    rng = np.random.default_rng(0)
    logits, classes = rng.normal(size=(300, 5)).astype(np.float32), rng.integers(0, 5, 300)
    assert builtin("top1").score(logits, classes, batch_size=64) == pytest.approx(
        float((logits.argmax(1) == classes).mean()))
    outputs, values = rng.normal(size=(300, 1)).astype(np.float32), rng.normal(size=(300, 1)).astype(np.float32)
    assert builtin("mse").score(outputs, values, batch_size=7) == pytest.approx(float(((outputs - values) ** 2).mean()))
    tokens, next_ids = rng.normal(size=(40, 6, 11)).astype(np.float32), rng.integers(0, 11, (40, 6))
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(tokens).reshape(-1, 11),
                                                 torch.from_numpy(next_ids).reshape(-1)).exp()
    assert builtin("perplexity").score(tokens, next_ids, batch_size=3) == pytest.approx(float(expected), rel=1e-6)


def test_a_metric_function_is_the_size_weighted_mean_over_batches(tmp_path):
    (tmp_path / "fns.py").write_text(USER_FUNCTIONS)
    mae = metric_of(DataSection(factory="x:y", metric="fns.py:mae", higher_is_better=False), tmp_path)
    outputs, labels = np.arange(10, dtype=np.float32)[:, None], np.zeros((10, 1), dtype=np.float32)
    assert mae.score(outputs, labels, batch_size=4) == pytest.approx(4.5)  # batches of 4, 4, 2
    assert mae.worsening(1.0, 1.5) == 0.5 and mae.is_better(1.0, 1.5)


BAD_RECIPES = {
    "unknown metric": ({"metric": "accuracy"}, "data.metric: unknown metric 'accuracy'; allowed: top1, mse, "
                                               "perplexity, or a function"),
    "function without a direction": ({"metric": "fns.py:mae"}, "set data.higher_is_better"),
    "contradicted direction": ({"metric": "mse", "higher_is_better": True},
                               "higher_is_better = True contradicts metric 'mse'"),
    "unknown loss": ({"metric": "mse", "loss": "hinge"}, "data.loss: unknown loss 'hinge'"),
    "training without a loss": ({"metric": "fns.py:mae", "higher_is_better": False},
                                "data.loss: model.train trains, and metric 'fns.py:mae' is a function"),
}


@pytest.mark.parametrize("case", BAD_RECIPES)
def test_a_recipe_whose_metric_cannot_work_is_refused_naming_the_key(case):
    data, expected = BAD_RECIPES[case]
    recipe = tomllib.loads((RECIPES / "diabetes_regression.toml").read_text())
    recipe["data"] = {k: v for k, v in recipe["data"].items() if k != "metric"} | data
    with pytest.raises(UserError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_recipe(recipe, "r.toml", RECIPES)


def test_budgets_and_distillation_must_fit_the_metric():
    recipe = tomllib.loads((RECIPES / "diabetes_regression.toml").read_text())
    recipe["budgets"] = [{"min_accuracy": 0.5}]
    with pytest.raises(UserError, match=r"budgets\[0\]\.min_accuracy: data.metric 'mse' is lower-is-better; "
                                        r"use max_metric"):
        parse_recipe(recipe, "r.toml", RECIPES)
    recipe["budgets"] = []
    recipe["quantization"]["qat"]["distillation"] = {"weight": 0.5}
    with pytest.raises(UserError, match=r"quantization\.qat\.distillation\.loss: 'kl' compares class "
                                        r"distributions"):
        parse_recipe(recipe, "r.toml", RECIPES)


def test_a_recipe_of_another_metric_cannot_gate_a_report(tmp_path):
    """The stored demo report is top1; the regression recipe's budgets are in mse."""
    stored = Path(__file__).parent / "data" / "report-digits.json"
    result = run_cli("gate", str(stored), "--recipe", str(RECIPES / "diabetes_regression.toml"))
    assert result.code == 2, result.stderr[-2000:]
    assert result.stderr.strip().endswith("diabetes_regression.toml: data.metric 'mse', but the report's "
                                          "figures are 'top1': its budgets do not apply")


def _regression(tmp_path: Path, **data) -> Path:
    (tmp_path / "fns.py").write_text(USER_FUNCTIONS)
    recipe = tomllib.loads((RECIPES / "diabetes_regression.toml").read_text())
    recipe["model"]["factory"] = "edgeship.examples.regression:regressor"
    recipe["data"]["factory"] = "edgeship.examples.regression:splits"
    recipe["data"].update(data)
    recipe.update(targets=["onnx-int8"], fp32_twins=False, benchmark=dict(QUICK_BENCHMARK), budgets=[])
    recipe["model"]["train"]["epochs"] = 20
    recipe["quantization"] = {"qat": {"enabled": False}}
    return write_recipe(tmp_path, recipe)


@pytest.mark.parametrize("data, expected", [
    ({"metric": "fns.py:broken", "higher_is_better": False, "loss": "mse"},
     "data.metric 'fns.py:broken' fails on a batch of 8 outputs [8, 1] and labels [8, 1]: KeyError: "
     "'no such column'"),
    ({"loss": "fns.py:per_sample"}, "data.loss 'fns.py:per_sample' returned [8, 1]; it must return a scalar tensor"),
    ({"metric": "perplexity"}, "label of shape [1] (float32) is not a sequence of token indices"),
])
def test_a_metric_or_loss_that_does_not_fit_is_one_line_and_exit_2(tmp_path, data, expected):
    result = run_cli("run", str(_regression(tmp_path, **data)), out=tmp_path / "run")
    assert result.code == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert expected in line, line


@pytest.mark.slow
def test_a_metric_function_and_a_loss_function_drive_the_run(tmp_path):
    """Mean absolute error, trained with the Huber loss: the report's figures are MAE."""
    path = _regression(tmp_path, metric="fns.py:mae", higher_is_better=False, loss="fns.py:huber")
    result = run_cli("run", str(path), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-3000:]
    report = result.report()
    assert report["metric"] == {"name": "fns.py:mae", "higher_is_better": False, "drop_scale": 1.0}
    (artifact,) = report["artifacts"]
    assert 0.3 < report["float"]["accuracy"] < 0.8  # MAE of a standardised target (the mean: ~0.8)
    assert abs(artifact["accuracy"] - report["float"]["accuracy"]) < 0.05
    markdown = (tmp_path / "run" / "report.md").read_text()
    assert "Float fns.py:mae: **" in markdown and "| fns.py:mae | worse by (fns.py:mae) |" in markdown


def _all_targets(tmp_path: Path, name: str, **changes) -> edgeship.Report:
    recipe = tomllib.loads((RECIPES / name).read_text())
    recipe["benchmark"] = dict(QUICK_BENCHMARK)
    for section, values in changes.items():
        recipe[section] = recipe[section] | values if isinstance(values, dict) else values
    assert recipe["targets"] == TARGETS
    return edgeship.run(parse_recipe(recipe, name, RECIPES), tmp_path / "run", quiet=True)


def _speaks_the_metric(tmp_path: Path, report, name: str, artifacts: int) -> None:
    assert report.metric.name == name and not report.metric.higher_is_better
    assert [a.status for a in report.artifacts] == ["ok"] * artifacts, [a.error for a in report.artifacts]
    assert report.gate.passed and report.exit_code == 0
    folder = tmp_path / "run"
    assert f"Float {name}: **{report.metric.format(report.float.accuracy)}**" in (folder / "report.md").read_text()
    assert f"float {name} {report.metric.format(report.float.accuracy)}" in (folder / "report.html").read_text()
    assert json.loads((folder / "report.json").read_text())["metric"]["name"] == name


@pytest.mark.slow
def test_a_regression_model_goes_through_every_target_in_mse(tmp_path):
    report = _all_targets(tmp_path, "diabetes_regression.toml", quantization={"qat": {"epochs": 1}})
    _speaks_the_metric(tmp_path, report, "mse", 7)
    assert report.float.accuracy < 0.8  # learned: answering the mean scores about 1.0
    for a in report.artifacts:
        assert a.accuracy - report.float.accuracy <= 0.05, (a.target, a.accuracy)  # the recipe's budget
        # int8 against its converted PyTorch model; ONNX Runtime's (it quantizes at export)
        # against the float model, a quantization's distance away
        limit = 0.1 if a.parity.reference.startswith("converted") else 0.2 if a.precision == "int8" else 1e-4
        assert a.parity.top1_agreement is None and a.parity.relative_error < limit, a.parity
    # A tighter budget re-gated: the violation speaks mse, and exit code 1 means a budget failed
    tight = tomllib.loads((RECIPES / "diabetes_regression.toml").read_text())
    tight["budgets"] = [{"max_metric": report.float.accuracy - 0.01}]
    gated = run_cli("gate", str(tmp_path / "run" / "report.json"), "--recipe",
                    str(write_recipe(tmp_path, tight)))
    assert gated.code == 1, gated.stderr[-2000:]
    assert "torchscript-fbgemm: mse " in gated.stdout and "> max_metric" in gated.stdout


@pytest.mark.slow
def test_a_causal_language_model_goes_through_every_target_in_perplexity(tmp_path):
    report = _all_targets(tmp_path, "docstring_lm.toml", data={"kwargs": {"train_windows": 800}},
                          model={"train": {"epochs": 2, "lr": 0.003}}, fp32_twins=False)
    _speaks_the_metric(tmp_path, report, "perplexity", 4)
    assert report.float.accuracy < 200  # a uniform guess over the vocabulary: 1000
    for a in report.artifacts:
        assert a.accuracy - report.float.accuracy <= 3.0, (a.target, a.accuracy)  # the recipe's budget
        assert a.parity.top1_agreement >= 0.9, (a.target, a.parity)  # next-word argmax, per position
