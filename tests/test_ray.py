"""A run on a Ray cluster, a real one of two nodes on 127.0.0.1 (tests/raycluster.py): QAT under
Ray Train's TorchTrainer (the same DDP fine-tune as torchrun, its two workers on two nodes) makes
artifacts that answer like the single-process run's; exports and verifications as Ray tasks make
the same files and verdicts as the serial run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch

from edgeship.cluster import TaskFailed, Tasks, connect
from edgeship.errors import UserError
from edgeship.examples.digits import splits
from edgeship.factories import load_model
from edgeship.pipeline.cache import CACHE_DIR
from edgeship.pipeline.stages import describe
from edgeship.pipeline.load import example_inputs
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.distributed import finetune_distributed
from edgeship.quantize.flows import flow_for
from edgeship.recipe import parse_recipe
from edgeship.targets import Flow
from raycluster import LocalCluster, ray_cluster  # noqa: F401  (a fixture)
from sshd import free_port
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


@pytest.mark.parametrize("address", ["", "head-node", "ray://head:port", "10.0.0.1:70000"])
def test_the_recipe_cluster_address_is_what_cluster_sets(tmp_path, address):
    recipe = Path(write_recipe(tmp_path, _recipe(distributed=RAY)))
    result = run_cli("run", str(recipe), "--cluster", address, out=tmp_path / "run")
    assert result.code == 2 and "cluster.address" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_a_cluster_nobody_answers_at_fails_at_once_in_one_line(tmp_path):
    # Ray's own client retries such an address for minutes, its C++ warnings on stderr
    closed = f"127.0.0.1:{free_port()}"
    result = run_cli("run", str(write_recipe(tmp_path, _recipe())), "--cluster", closed, out=tmp_path / "run")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.code == 3 and len(lines) == 1, result.stderr[-2000:]
    assert f"cannot reach the Ray cluster at cluster.address = '{closed}'" in lines[0], lines
    assert not (tmp_path / "run").exists()


@pytest.fixture(scope="module")
def tasks_run(tmp_path_factory, demo_run, ray_cluster) -> CliResult:  # noqa: F811
    """The demo run again with --cluster, from a copy of its run folder with only the float
    model's entries of its stage cache: each flow calibrates, fine-tunes and converts in Ray
    tasks, and every artifact is made again by a Ray task and answers the test split in one."""
    folder = tmp_path_factory.mktemp("tasks")
    shutil.copytree(demo_run.out, folder / "run", symlinks=True)
    for kind in ("calibrated", "quantize", "qat", "export", "export-files", "verify"):
        shutil.rmtree(folder / "run" / CACHE_DIR / kind)
    recipe = write_recipe(folder, demo_recipe())
    result = run_cli("run", str(recipe), "--cluster", ray_cluster, "--force", out=folder / "run", quiet=False)
    assert result.code == 0, result.stderr[-3000:]
    return result


def test_ray_tasks_make_the_files_and_verdicts_of_the_serial_run(tasks_run, demo_run):
    serial = {a["target"]: a for a in demo_run.report()["artifacts"]}
    fanned = {a["target"]: a for a in tasks_run.report()["artifacts"]}
    assert set(fanned) == set(serial) and len(fanned) == 7
    for target, artifact in fanned.items():
        assert artifact["status"] == "ok", artifact
        assert artifact["accuracy"] == serial[target]["accuracy"], target
        assert artifact["parity"]["top1_agreement"] == serial[target]["parity"]["top1_agreement"], target
        # TorchScript's zip carries counters of the process that saved it (class-name mangling,
        # serialization id): its bytes follow what else that process scripted before
        if target.startswith(("onnx", "executorch")):
            assert artifact["sha256"] == serial[target]["sha256"], target


def test_calibration_qat_conversion_exports_and_verifications_ran_as_ray_tasks(tasks_run):
    stages = {s["name"]: s["detail"] for s in tasks_run.report()["stages"]}
    assert "4 of 4 flows calibrated as Ray tasks" in stages["calibrate"], stages["calibrate"]
    assert stages["calibrate"].count("calibrated in a Ray task") == 4, stages["calibrate"]
    calibrations = re.findall(r"^  calibrate (\S+) \((\d+) steps\)$", tasks_run.stderr, re.M)
    assert sorted(flow for flow, _ in calibrations) == ["fx-fbgemm", "fx-qnnpack", "ort-qdq", "pt2e-xnnpack"]
    assert "4 of 4 flows fine-tuned as Ray tasks" in stages["qat"], stages["qat"]
    assert stages["qat"].count("fine-tuned in a Ray task") == 4, stages["qat"]
    # each task's training shows on the driver as in a serial run (in a log: one line per bar)
    bars = re.findall(r"^  QAT (\S+) \((\d+) steps\)$", tasks_run.stderr, re.M)
    assert sorted(flow for flow, _ in bars) == ["fx-fbgemm", "fx-qnnpack", "ort-qdq", "pt2e-xnnpack"], bars
    assert len({steps for _, steps in bars}) == 1 and int(bars[0][1]) > 0, bars
    assert "4 of 4 flows converted as Ray tasks" in stages["convert"], stages["convert"]
    assert stages["convert"].count("(Ray task)") == 4, stages["convert"]
    # FX's and PT2E's converted int8 models do not pickle: their tasks convert them again
    assert "7 of 7 exports as Ray tasks" in stages["export"], stages["export"]
    assert "7 runs as Ray tasks" in stages["verify"], stages["verify"]


def test_a_task_that_raises_fails_its_item_in_one_line_and_bad_input_stops(ray_cluster):  # noqa: F811
    tasks = Tasks(connect(ray_cluster, log=lambda message: None), by_value="edgeship_user_")

    def divide(a, b):
        return a / b

    def refuse(key):
        raise UserError(f"{key}: not allowed")

    failed = tasks.result(tasks.submit(divide, (1, 0), describe))
    assert isinstance(failed, TaskFailed) and str(failed) == "ZeroDivisionError: division by zero"
    assert tasks.result(tasks.submit(divide, (6, tasks.put(3)), describe)) == 2
    with pytest.raises(UserError, match="^targets: not allowed$"):
        tasks.result(tasks.submit(refuse, ("targets",), describe))

    def die():  # the worker process goes away, as it does with its node
        os._exit(1)

    lost = tasks.result(tasks.submit(die, (), describe))
    assert isinstance(lost, TaskFailed) and str(lost).startswith("Ray task lost: ") and "\n" not in str(lost)


USER_NET = '''
from torch import nn


class Net(nn.Module):  # the user's own class: no Ray worker can import this file by its name
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(512, 10))

    def forward(self, x):
        return self.body(x)


def net():
    return Net()
'''


def test_a_model_class_from_the_users_own_file_travels_to_the_tasks(tmp_path, ray_cluster):  # noqa: F811
    (tmp_path / "nets.py").write_text(USER_NET)
    recipe = demo_recipe(targets=["onnx-int8"], budgets=[])
    recipe["model"]["factory"] = "nets.py:net"
    recipe["quantization"]["qat"] = {"enabled": True, "epochs": 1, "lr": 0.0001}  # no probe: one short task
    # --quiet (run_cli's): the task's progress goes nowhere, and the task still travels
    result = run_cli("run", str(write_recipe(tmp_path, recipe)), "--cluster", ray_cluster, out=tmp_path / "run")
    assert result.code == 0, result.stderr[-3000:]
    report = result.report()
    assert [a["status"] for a in report["artifacts"]] == ["ok", "ok"]  # onnx-int8 and its twin
    stages = {s["name"]: s["detail"] for s in report["stages"]}
    assert "1 of 1 flows fine-tuned as Ray tasks" in stages["qat"], stages["qat"]
    assert "2 of 2 exports as Ray tasks" in stages["export"], stages["export"]
