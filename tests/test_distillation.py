"""Distillation from a separate, larger teacher (issue 11, item 7): a trained teacher network with
its weights file teaches a student with half its channels, in float training and in QAT; a teacher
that cannot teach is bad input, said in one line before any training."""

from __future__ import annotations

import pytest
import torch

from edgeship.examples import digits
from edgeship.progress import Progress
from edgeship.quantize.training import train
from support import demo_recipe, run_cli, write_recipe


@pytest.fixture(scope="module")
def teacher_weights(tmp_path_factory):
    """A digits CNN of width 32, trained here (nothing is downloaded), saved as a state_dict."""
    torch.manual_seed(0)
    teacher = digits.cnn(width=32)
    train(teacher, digits.splits().train, optimizer=torch.optim.Adam(teacher.parameters(), lr=0.01),
          epochs=3, batch_size=64, seed=0, progress=Progress(enabled=False), label="teacher")
    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.save(teacher.state_dict(), path)
    return path


def _recipe(weights, loss: str = "kl", **teacher) -> dict:
    spec = {"factory": "edgeship.examples.digits:cnn", "kwargs": {"width": 32}, "weights": str(weights),
            **teacher}
    recipe = demo_recipe(targets=["torchscript-fbgemm"], fp32_twins=False, devices=[], budgets=[])
    recipe["model"]["kwargs"] = {"width": 16}  # the student: half the teacher's channels
    recipe["model"]["train"] = {"epochs": 2, "lr": 0.01,
                                "distillation": {"teacher": spec, "loss": loss, "weight": 0.5}}
    recipe["quantization"]["qat"] = {"enabled": True, "epochs": 1, "lr": 1e-4, "optimizer": "sgd",
                                     "distillation": {"teacher": spec, "loss": loss}}
    return recipe


@pytest.mark.parametrize("loss", ["kl", "mse"])
def test_a_half_width_student_learns_from_its_teacher_in_float_training_and_qat(tmp_path, teacher_weights, loss):
    result = run_cli("run", str(write_recipe(tmp_path, _recipe(teacher_weights, loss))), out=tmp_path / "run")
    assert result.code == 0, result.stderr[-2000:]
    report = result.report()
    # two epochs: far above chance (0.1); how much the teacher helps is scripts/distil_student.py's
    assert report["float"]["accuracy"] > 0.6 and report["float"]["warning"] is None, report["float"]
    (artifact,) = report["artifacts"]
    assert artifact["status"] == "ok" and artifact["accuracy"] > 0.6
    assert artifact["details"]["quantization"]["qat_history"]["epochs"][-1]["epoch"] == 1


def test_a_teacher_that_cannot_teach_is_bad_input(tmp_path, teacher_weights):
    missing = run_cli("run", str(write_recipe(tmp_path, _recipe(tmp_path / "none.pt"))), out=tmp_path / "a")
    assert missing.code == 2 and f"model.train.distillation.teacher.weights: no such file {tmp_path / 'none.pt'}" \
        in missing.stderr, missing.stderr[-1000:]

    wrong = run_cli("run", str(write_recipe(tmp_path, _recipe(teacher_weights, kwargs={"width": 8}))),
                    out=tmp_path / "b")  # the weights are of a width-32 network
    assert wrong.code == 2 and "model.train.distillation.teacher.weights" in wrong.stderr
    assert "not a state_dict of the teacher 'edgeship.examples.digits:cnn'" in wrong.stderr

    recipe = _recipe(teacher_weights)
    del recipe["model"]["train"]["distillation"]["teacher"]
    no_teacher = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "c")
    assert no_teacher.code == 2 and "model.train.distillation" in no_teacher.stderr
    assert "set distillation.teacher" in no_teacher.stderr
    for result in (missing, wrong, no_teacher):
        assert "Traceback" not in result.stderr
