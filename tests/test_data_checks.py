"""Bad data through the real CLI: every split is checked in the load stage, before any training,
and a problem is one line naming the split, the sample and what is allowed, with exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgeship.data import Splits
from edgeship.errors import UserError
from edgeship.metrics import builtin
from edgeship.pipeline.load import check_outputs, checked_data, first_answers, stack_splits
from support import run_cli, write_recipe

# A tiny model and a data factory whose `case` plants one problem in an otherwise good split.
FACTORIES = '''
import torch
from torch import nn


def model(classes=10, output="logits"):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, classes))
    return nn.Sequential(net, nn.Flatten(0)) if output == "flat" else net


def splits(case="good"):
    g = torch.Generator().manual_seed(0)

    def split(n):
        return [(torch.rand(1, 8, 8, generator=g), torch.tensor(i % 10)) for i in range(n)]

    data = {"train": split(24), "calibration": split(16), "test": split(16), "validation": split(16)}
    if case == "label_plus_50":
        data["train"][11] = (data["train"][11][0], torch.tensor(50))
    if case == "negative_label":
        data["calibration"][3] = (data["calibration"][3][0], -1)
    if case == "float_label":
        data["train"][2] = (data["train"][2][0], 2.5)
    if case == "ragged":
        data["test"][7] = (torch.rand(1, 7, 8), data["test"][7][1])
    if case == "other_shape_than_test":
        data["calibration"] = [(torch.rand(1, 6, 6), y) for _, y in data["calibration"]]
    if case == "nan_test":
        data["test"][5][0][0, 2, 3] = float("nan")
    if case == "inf_validation":
        data["validation"][9][0][0, 0, 0] = float("inf")
    if case == "flat_inputs":  # two inputs written beside the label, not as a tuple of their own
        data["test"] = [(x, x, y) for x, y in data["test"]]
    return data
'''


def _recipe(case: str, **model) -> dict:
    return {"name": "bad-data", "targets": ["onnx-int8"], "devices": [], "fp32_twins": False,
            "model": {"factory": "factories.py:model", "example_inputs": [{"shape": [1, 1, 8, 8]}],
                      **model},
            "data": {"factory": "factories.py:splits", "kwargs": {"case": case}, "batch_size": 8},
            "quantization": {"qat": {"enabled": False}}}


CASES = {
    # labels 0-9 on a 5-logit model that is not trained in the recipe: once gate PASSED at 0.0000
    "labels_beyond_outputs": (_recipe("good", kwargs={"classes": 5}),
                              "data split 'test', sample 5: label 5 is not one of the model's 5 "
                              "output classes", "labels must be integers 0..4"),
    # the same with training in the recipe: once `IndexError: Target 8 is out of bounds`
    "label_beyond_outputs_of_a_trained_model": (
        _recipe("label_plus_50", train={"epochs": 1}),
        "data split 'train', sample 11: label 50 is not one of the model's 10 output classes",
        "labels must be integers 0..9"),
    "negative_label": (_recipe("negative_label"), "data split 'calibration', sample 3: label -1 is "
                       "negative; labels must be integers >= 0"),
    "float_label": (_recipe("float_label", train={"epochs": 1}),
                    "data split 'train', sample 2: label 2.5 (float64) is not an integer"),
    # once a traceback
    "ragged": (_recipe("ragged", train={"epochs": 1}),
               "data split 'test', sample 7: inputs [1, 7, 8] float32, but sample 0 is [1, 8, 8] "
               "float32; every sample must have the same"),
    "other_shape_than_test": (_recipe("other_shape_than_test"),
                              "data split 'calibration', sample 0: inputs [1, 6, 6] float32, but the "
                              "test split's samples are [1, 8, 8] float32"),
    # once: no warning at all
    "nan_test": (_recipe("nan_test"), "data split 'test', sample 5: input 0 holds NaN",
                 "inputs must be finite numbers"),
    "inf_validation": (_recipe("inf_validation"), "data split 'validation', sample 9: input 0 holds Inf"),
    "flat_inputs": (_recipe("flat_inputs"), "data split 'test', sample 0: is a tuple of length 3; a sample "
                    "must be (inputs, label), inputs a tensor or a tuple of tensors: a model of 2 inputs "
                    "takes ((input_0, input_1), label)"),
    "output_not_batch_by_classes": (_recipe("good", kwargs={"output": "flat"}),
                                    "data split 'test', samples 0..7: the model's output for a batch "
                                    "of 8 is [80]; data.metric 'top1' needs [batch, classes]"),
}


# The cases the issue met through the CLI; every case is checked in process below, quickly.
CLI_CASES = ["labels_beyond_outputs", "label_beyond_outputs_of_a_trained_model", "ragged", "nan_test",
             "output_not_batch_by_classes"]


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_data_is_one_line_and_exit_2(tmp_path: Path, case: str) -> None:
    recipe, *expected = CASES[case]
    (tmp_path / "factories.py").write_text(FACTORIES)
    out = tmp_path / "run"
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=out)
    assert result.code == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for text in expected:
        assert text in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not (out / "report.json").exists()


@pytest.fixture(scope="module")
def factories(tmp_path_factory) -> dict:
    namespace: dict = {}
    exec(compile(FACTORIES, str(tmp_path_factory.mktemp("factories") / "factories.py"), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("case", CASES)
def test_the_load_stage_checks_name_split_sample_and_what_is_allowed(factories: dict, case: str) -> None:
    recipe, *expected = CASES[case]
    model = factories["model"](**recipe["model"].get("kwargs", {}))
    splits = Splits.coerce(factories["splits"](**recipe["data"]["kwargs"]), "factories.py:splits")
    with pytest.raises(UserError) as raised:
        checked_data(model, (torch.zeros(1, 1, 8, 8),), splits, builtin("top1"), None)
    assert len(str(raised.value).splitlines()) == 1
    for text in expected:
        assert text in str(raised.value)


def test_the_same_data_without_the_planted_problem_passes(factories: dict) -> None:
    splits = Splits.coerce(factories["splits"](), "factories.py:splits")
    arrays = checked_data(factories["model"](), (torch.zeros(1, 1, 8, 8),), splits, builtin("top1"), None)
    assert {name: len(a) for name, a in arrays.items()} == {"test": 16, "train": 24, "calibration": 16,
                                                            "validation": 16}


def _good_splits() -> Splits:
    def split(n: int) -> list:
        return [((torch.full((1, 8, 8), float(i)), torch.ones(4)), i % 10) for i in range(n)]

    return Splits(train=split(12), calibration=split(6), test=split(10), validation=split(4))


class _TwoInputs(torch.nn.Module):
    def forward(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        return torch.cat([img.flatten(1)[:, :6], vec], 1)


class _ThreeDimensional(_TwoInputs):
    def forward(self, img: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        return super().forward(img, vec).unsqueeze(2)


def test_good_data_passes_every_check_and_keeps_its_values() -> None:
    arrays = stack_splits(_good_splits())
    assert list(arrays) == ["test", "train", "calibration", "validation"]
    test = arrays["test"]
    assert [a.shape for a in test.inputs] == [(10, 1, 8, 8), (10, 4)]
    assert test.inputs[0][:, 0, 0, 0].tolist() == list(range(10))
    assert test.labels.tolist() == list(range(10))
    assert check_outputs(first_answers(_TwoInputs(), test), builtin("top1")) == 10


def test_the_class_count_comes_from_the_model_output() -> None:
    test = stack_splits(_good_splits())["test"]
    with pytest.raises(UserError, match=r"samples 0\.\.7: the model's output for a batch of 8 is "
                                        r"\[8, 10, 1\]"):
        check_outputs(first_answers(_ThreeDimensional(), test), builtin("top1"))
