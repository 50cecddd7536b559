"""Distributed QAT: the QAT stage under torchrun with DistributedDataParallel (gloo, 2 processes on
this machine) makes artifacts that answer like the single-process run's, within tolerance."""

from __future__ import annotations

import pytest

from edgeship.examples.digits import splits
from support import assert_answers_like, demo_recipe, run_cli, write_recipe

pytestmark = pytest.mark.slow

# One target per flow: FX (TorchScript) and PT2E (ONNX QDQ).
TARGETS = ["torchscript-fbgemm", "onnx-int8"]
DISTRIBUTED = {"processes": 2, "backend": "gloo"}


def _recipe(**qat) -> dict:
    recipe = demo_recipe(targets=TARGETS, fp32_twins=False)
    recipe["quantization"]["qat"].update(qat)
    return recipe


@pytest.fixture(scope="module")
def distributed_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    result = run_cli("run", str(write_recipe(folder, _recipe(distributed=DISTRIBUTED))),
                     out=folder / "run")
    assert result.code == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("target", TARGETS)
def test_two_processes_make_the_artifacts_one_process_makes(distributed_run, demo_run, target, tmp_path):
    # demo_run is the same recipe (same seed, float model and calibration) on one process.
    assert_answers_like(distributed_run, demo_run, target, tmp_path)


def test_each_rank_trains_on_its_shard(distributed_run):
    train_size = len(splits().train)
    for artifact in distributed_run.report()["artifacts"]:
        run = artifact["details"]["quantization"]["qat_distributed"]
        assert run["processes"] == 2 and run["backend"] == "gloo"
        per_rank = [r["samples_per_epoch"] for r in run["ranks"]]
        assert per_rank == [(train_size + 1) // 2] * 2  # an equal half each
        assert run["shared_samples"] == sum(per_rank) - train_size  # only the padding repeats
    qat = next(s for s in distributed_run.report()["stages"] if s["name"] == "qat")
    assert "fx-fbgemm loss" in qat["detail"] and "on 2 processes (gloo)" in qat["detail"]


def test_processes_that_do_not_divide_the_batch_are_bad_input(tmp_path):
    recipe = write_recipe(tmp_path, _recipe(distributed={"processes": 3}))
    result = run_cli("run", str(recipe), out=tmp_path / "run")
    assert result.code == 2
    assert "quantization.qat.distributed.processes = 3 must divide data.batch_size = 64" in result.stderr
    assert not (tmp_path / "run").exists()


def test_nccl_without_gpus_is_refused_before_training(tmp_path):
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("this machine has the GPUs nccl needs")
    recipe = write_recipe(tmp_path, _recipe(distributed={"processes": 2, "backend": "nccl"}))
    result = run_cli("run", str(recipe), out=tmp_path / "run")
    assert result.code == 2
    assert "backend = 'nccl' needs a CUDA GPU per process" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run" / ".edgeship-cache" / "float").exists()  # nothing was trained


FAILS_IN_WORKERS = '''
import os

from edgeship.examples.digits import cnn


def net():
    if "RANK" in os.environ:  # set by torchrun in each worker, not in the pipeline's process
        raise RuntimeError("this factory refuses to build in a worker")
    return cnn()
'''


def test_a_failing_worker_fails_its_flow_with_the_workers_words(tmp_path):
    (tmp_path / "models.py").write_text(FAILS_IN_WORKERS)
    recipe = _recipe(distributed=DISTRIBUTED)
    recipe["model"]["factory"] = "models.py:net"
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), out=tmp_path / "run")
    assert result.code == 3  # artifacts failed; the run itself finished and reported
    for artifact in result.report()["artifacts"]:
        assert artifact["status"] == "failed"
        assert artifact["error"].startswith("qat (")
        assert "torchrun exited with 1" in artifact["error"]
        assert "this factory refuses to build in a worker" in artifact["error"]
