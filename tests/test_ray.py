"""QAT on a Ray cluster: Ray Train's TorchTrainer runs the same DDP fine-tune as torchrun, its two
workers on two nodes of a real Ray cluster on 127.0.0.1 (tests/raycluster.py), and the artifacts
answer like the single-process run's."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import torch

from edgeship.examples.digits import splits
from edgeship.factories import load_model
from edgeship.pipeline.load import example_inputs
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.distributed import finetune_distributed
from edgeship.quantize.flows import flow_for
from edgeship.recipe import parse_recipe
from edgeship.targets import Flow
from raycluster import LocalCluster, ray_cluster  # noqa: F401  (a fixture)
from support import EDGESHIP, CliResult, assert_answers_like, demo_recipe, run_cli, write_recipe

pytestmark = pytest.mark.slow

# One target per flow: FX (TorchScript) and PT2E (ONNX QDQ), as in test_distributed_qat.py.
TARGETS = ["torchscript-fbgemm", "onnx-int8"]
RAY = {"engine": "ray", "workers": 2}


def _recipe(**qat) -> dict:
    recipe = demo_recipe(targets=TARGETS, fp32_twins=False)
    recipe["quantization"]["qat"].update(qat)
    return recipe


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, ray_cluster) -> CliResult:  # noqa: F811
    folder = tmp_path_factory.mktemp("ray")
    result = run_cli("run", str(write_recipe(folder, _recipe(distributed=RAY))), "--cluster", ray_cluster,
                     out=folder / "run")
    assert result.code == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("target", TARGETS)
def test_two_ray_workers_make_the_artifacts_one_process_makes(ray_run, demo_run, target, tmp_path):
    # demo_run is the same recipe (same seed, float model and calibration) on one process.
    assert_answers_like(ray_run, demo_run, target, tmp_path)


def test_each_worker_trains_on_half_the_train_split_on_its_own_node(ray_run, ray_cluster):  # noqa: F811
    train_size = len(splits().train)
    for artifact in ray_run.report()["artifacts"]:
        run = artifact["details"]["quantization"]["qat_distributed"]
        assert run["engine"] == "ray" and run["processes"] == 2 and run["backend"] == "gloo"
        assert [r["samples_per_epoch"] for r in run["ranks"]] == [train_size // 2] * 2
        assert run["shared_samples"] == 0  # 1,100 samples split evenly: no padding repeats
        assert len({r["node"] for r in run["ranks"]}) == 2  # one worker per node, as on two machines
        assert run["cluster"] == {"address": ray_cluster, "nodes": 2, "cpus": 2}
    qat = next(s for s in ray_run.report()["stages"] if s["name"] == "qat")
    assert "fx-fbgemm loss" in qat["detail"] and "on 2 Ray workers (gloo)" in qat["detail"]


def test_ray_trains_the_weights_torchrun_trains(ray_cluster, tmp_path):  # noqa: F811
    """The same job under both engines: the same shards, seeds and gradient sums, so the same
    trained weights, and not the calibrated ones they started from."""
    from edgeship.quantize.distributed_ray import finetune_on_ray

    on_ray = _recipe(distributed=RAY, lr=0.01, optimizer="sgd") | {"cluster": {"address": ray_cluster}}
    on_torchrun = _recipe(distributed={"processes": 2}, lr=0.01, optimizer="sgd")
    recipe, torchrun = (parse_recipe(data, "test", tmp_path) for data in (on_ray, on_torchrun))
    trained = {}
    try:
        for name, train, this in (("ray", finetune_on_ray, recipe), ("torchrun", finetune_distributed, torchrun)):
            model, flow, examples = load_model(recipe).eval(), flow_for(Flow.FX_FBGEMM), example_inputs(recipe)
            prepared = calibrate(flow, model, examples, splits().calibration, batches=2, batch_size=64, qat=True)
            before = {k: v.clone() for k, v in prepared.state_dict().items()}
            train(flow, prepared, model, examples, this, tmp_path)
            trained[name] = prepared.state_dict()
    finally:
        import ray

        ray.shutdown()  # this test process leaves the cluster before the session stops it
    weights = [k for k, v in before.items() if k.endswith("weight") and v.is_floating_point()]
    assert weights and all(not torch.equal(before[k], trained["ray"][k]) for k in weights)
    for key in before:
        torch.testing.assert_close(trained["ray"][key], trained["torchrun"][key], rtol=1e-5, atol=1e-6)


def _wait_for_training(run: subprocess.Popen, seconds: float = 600) -> None:
    """Until a Ray Train worker runs (QAT under way on the cluster)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and run.poll() is None:
        if "ray::RayTrainWorker" in subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout:
            return
        time.sleep(0.5)
    raise AssertionError(f"no Ray Train worker started (run exit code {run.poll()})")


def test_a_lost_node_fails_the_stage_and_the_same_command_resumes(tmp_path):
    cluster = LocalCluster()
    try:
        one_flow = _recipe(distributed=RAY) | {"targets": ["onnx-int8"]}
        recipe = write_recipe(tmp_path, one_flow)
        args = ("run", str(recipe), "--cluster", cluster.address)
        with subprocess.Popen([*EDGESHIP, *args, "--out", str(tmp_path / "run"), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as run:
            _wait_for_training(run)
            cluster.lose_second_node()
            stdout, stderr = run.communicate(timeout=900)
        assert run.returncode == 3, stderr[-3000:]
        failed = CliResult(3, stdout, stderr, tmp_path / "run").report()
        errors = [a["error"] for a in failed["artifacts"] if a["status"] != "ok"]
        assert errors and all("Ray Train failed" in e and "\n" not in e for e in errors), errors

        cluster.start_second_node()
        again = run_cli(*args, out=tmp_path / "run")
        assert again.code == 0, again.stderr[-3000:]
        calibrate = next(s for s in again.report()["stages"] if s["name"] == "calibrate")
        assert "calibration reused" in calibrate["detail"]
    finally:
        cluster.stop()


def test_a_recipe_that_asks_for_ray_without_ray_is_bad_input(tmp_path):
    # An importable `ray` that fails as a missing package does: the machine of a user without
    # the extra, on this machine that has it.
    blocked = tmp_path / "no-ray" / "ray"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError(\"No module named 'ray'\")\n")
    recipe = write_recipe(tmp_path, _recipe(distributed=RAY))
    result = run_cli("run", str(recipe), out=tmp_path / "run", env={"PYTHONPATH": str(blocked.parent)})
    assert result.code == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "pip install 'edgeship[ray]'" in lines[0], lines
    assert "quantization.qat.distributed.engine = 'ray'" in lines[0] or "cluster" in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("distributed", "said"), [
    ({"engine": "ray"}, "engine = 'ray' needs workers"),
    ({"engine": "ray", "processes": 2}, "processes is for engine = 'torchrun'; engine = 'ray' takes workers"),
    ({"processes": 2, "use_gpu": True}, "use_gpu is for engine = 'ray'"),
    ({"engine": "ray", "workers": 3}, "quantization.qat.distributed.workers = 3 must divide data.batch_size = 64"),
])
def test_a_ray_setting_that_does_not_fit_is_bad_input(tmp_path, distributed, said):
    result = run_cli("run", str(write_recipe(tmp_path, _recipe(distributed=distributed))), out=tmp_path / "run")
    assert result.code == 2 and said in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_the_recipe_cluster_address_is_what_cluster_sets(tmp_path):
    recipe = Path(write_recipe(tmp_path, _recipe(distributed=RAY)))
    result = run_cli("run", str(recipe), "--cluster", "", out=tmp_path / "run")
    assert result.code == 2 and "cluster.address" in result.stderr, result.stderr[-2000:]
