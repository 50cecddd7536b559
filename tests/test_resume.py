"""Resumable runs: a run SIGKILLed at any moment and started again completes, reusing what was
whole, and makes the same artifacts as an uninterrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest

from support import EDGESHIP, demo_recipe, run_cli, write_recipe

pytestmark = pytest.mark.slow

TARGETS = ["torchscript-fbgemm", "onnx-int8", "executorch-xnnpack"]
# Byte-identical when the flow is deterministic. TorchScript archives are not: torch.jit.save
# writes a random .data/serialization_id and debug pickles; their answers are compared instead.
BYTE_DETERMINISTIC = ["onnx-int8", "executorch-xnnpack"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("resume")
    recipe = demo_recipe(targets=TARGETS, fp32_twins=False)
    # What is tested is resuming, not QAT's choices: one epoch at a fixed rate (no probe), and a
    # shorter float training, keep four runs of the pipeline within the suite's time
    recipe["model"]["train"]["epochs"] = 4
    recipe["quantization"]["qat"] = {"enabled": True, "epochs": 1, "lr": 0.0001, "optimizer": "sgd"}
    return write_recipe(folder, recipe)


@pytest.fixture(scope="module")
def uninterrupted(recipe):
    result = run_cli("run", str(recipe), out=recipe.parent / "uninterrupted")
    assert result.code == 0, result.stderr[-2000:]
    return result.report()


def _kill_when(recipe, out, line_starts: str, delay_seconds: float = 0.0) -> None:
    """Start a run, SIGKILL it once its progress shows `line_starts`."""
    proc = subprocess.Popen([*EDGESHIP, "run", str(recipe), "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if line.startswith(line_starts):
            time.sleep(delay_seconds)
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-20:])


def _no_partial_files(out) -> None:
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".")
                 and p.name not in (".edgeship-run.json", ".edgeship-cache")]
    # a killed run may leave scratch files; a resumed run must not have picked any of them up
    report = json.loads((out / "report.json").read_text())
    named = {f for a in report["artifacts"] for f in a["files"]}
    assert not named & {str(p.relative_to(out)) for p in leftovers}


def _same_artifacts(report: dict, reference: dict) -> None:
    mine = {a["target"]: a for a in report["artifacts"]}
    for a in reference["artifacts"]:
        assert mine[a["target"]]["status"] == "ok"
        assert mine[a["target"]]["accuracy"] == a["accuracy"], a["target"]
        assert mine[a["target"]]["parity"] == a["parity"], a["target"]
        if a["target"] in BYTE_DETERMINISTIC:
            assert mine[a["target"]]["sha256"] == a["sha256"], a["target"]


def test_killed_during_qat_then_resumed(recipe, uninterrupted):
    out = recipe.parent / "killed-in-qat"
    _kill_when(recipe, out, "▸ qat", delay_seconds=0.5)
    assert not (out / "report.json").exists()
    resumed = run_cli("run", str(recipe), out=out)
    assert resumed.code == 0, resumed.stderr[-2000:]
    report = resumed.report()
    stages = {s["name"]: s for s in report["stages"]}
    assert stages["load"]["status"] == "cached"
    # calibration was cached when it ended, before QAT: the resumed run does not redo it
    assert stages["calibrate"]["detail"].count("calibration reused") == 3, stages["calibrate"]
    _same_artifacts(report, uninterrupted)
    _no_partial_files(out)


def test_killed_during_benchmark_then_resumed(recipe, uninterrupted):
    out = recipe.parent / "killed-in-benchmark"
    _kill_when(recipe, out, "▸ benchmark", delay_seconds=1.0)
    resumed = run_cli("run", str(recipe), out=out)
    assert resumed.code == 0, resumed.stderr[-2000:]
    report = resumed.report()
    status = {s["name"]: s["status"] for s in report["stages"]}
    assert status["export"] == status["verify"] == "cached"
    _same_artifacts(report, uninterrupted)
    _no_partial_files(out)


def test_no_cache_does_the_work_again(tmp_path):
    # A smaller recipe than the others' (one target, calibration only): what is tested is that
    # every stage runs again and makes the same artifact, not the pipeline's breadth.
    recipe = demo_recipe(targets=["onnx-int8"], fp32_twins=False)
    recipe["model"]["train"]["epochs"] = 2
    recipe["quantization"]["qat"] = {"enabled": False}
    path = write_recipe(tmp_path, recipe)
    first = run_cli("run", str(path), out=tmp_path / "run")
    assert first.code == 0, first.stderr[-2000:]
    again = run_cli("run", str(path), "--no-cache", out=tmp_path / "run")
    assert again.code == 0, again.stderr[-2000:]
    status = {s["name"]: s["status"] for s in again.report()["stages"]}
    assert status["load"] == status["calibrate"] == status["export"] == status["benchmark"] == "ok"
    _same_artifacts(again.report(), first.report())


def test_a_run_folder_that_cannot_be_made_is_bad_input(recipe, tmp_path):
    (tmp_path / "a-file").write_text("")
    result = run_cli("run", str(recipe), out=tmp_path / "a-file" / "run")
    assert result.code == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'a-file' / 'run'}: cannot create the run " \
                                    f"folder: Not a directory"


def test_an_edited_forward_is_another_float_model_for_the_cache():
    from torch import nn

    from edgeship.pipeline.load import model_source

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(2, 2)

        def forward(self, x):
            return self.fc(x)

    class Edited(Net):
        def forward(self, x):
            return self.fc(x).relu()

    assert model_source(Net()) != model_source(Edited())
    assert model_source(nn.Sequential(nn.Linear(2, 2))) == []  # torch's own classes: its version is in the key
