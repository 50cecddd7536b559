"""QAT on a Ray cluster: the same DDP fine-tune as torchrun's (quantize/distributed.py), run by Ray
Train's TorchTrainer, which places the workers on the cluster's nodes and starts their process
group. Nothing travels through a file system: the job's files go to the workers in the train
loop's config, and rank 0's trained state (with the run's figures) comes back in a Ray queue on
the driver's node, so the nodes need no shared storage. (A Ray Train checkpoint would be written
from rank 0's node to RunConfig.storage_path, which on several machines must be storage all of
them reach.) Ray Train's controller, on the driver's node, keeps its own run state in the run
folder's scratch space."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgeship.cluster import connect, queue_here
from edgeship.quantize.distributed import backend_for, train_shard, write_job, write_result
from edgeship.quantize.flow import QuantFlow
from edgeship.recipe import Recipe

# Ray Train retries by default without end: a lost node, or a cluster without room for the workers
# (RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, 60 s), would leave a CI job waiting for ever. edgeship
# fails the stage instead; the stage cache makes the rerun start from calibration's end.
_FAIL_FAST = {"max_failures": 0, "controller_failure_limit": 0, "max_preemption_failures": 0}


def finetune_on_ray(flow: QuantFlow, prepared: nn.Module, model: nn.Module, examples: tuple,
                    recipe: Recipe, scratch: Path, log=lambda message: None) -> dict:
    """Fine-tunes `prepared` in place on recipe.quantization.qat.distributed.workers Ray Train
    workers. Returns what finetune_distributed returns, each rank with the node it ran on. A
    worker that fails, or a cluster that cannot be reached or goes away, raises RuntimeError."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = recipe.quantization.qat.distributed
    cluster = connect(recipe.cluster.address if recipe.cluster else "auto", log)
    backend = backend_for(config)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="qat-ray-") as folder:
        job = Path(folder)
        write_job(job, flow, prepared, model, examples, recipe, backend)
        files, mailbox = {p.name: p.read_bytes() for p in job.iterdir()}, queue_here()
        log(f"  QAT {flow.flow.value}: Ray Train, {config.workers} workers, {backend}")
        trainer = TorchTrainer(
            _worker, train_loop_config={"files": files, "mailbox": mailbox},
            scaling_config=ScalingConfig(num_workers=config.workers, use_gpu=config.use_gpu),
            run_config=RunConfig(name=f"qat-{flow.flow.value}", storage_path=str((job / "storage").resolve()),
                                 failure_config=FailureConfig(**_FAIL_FAST)))
        try:
            trainer.fit()
            trained = mailbox.get_nowait_batch(mailbox.qsize())
        except Exception as e:  # Ray wraps the worker's exception: its last line is the worker's words
            said = [line for line in str(e).strip().splitlines() if line.strip()]
            raise RuntimeError(f"Ray Train failed: {said[-1] if said else type(e).__name__}") from None
        finally:
            mailbox.shutdown(force=True)  # nothing in it is left to read
    if len(trained) != 1:
        raise RuntimeError(f"Ray Train failed: rank 0 sent {len(trained)} trained states, not one")
    prepared.load_state_dict(torch.load(io.BytesIO(trained[0]["trained.pt"]), weights_only=True))
    flow.set_eval(prepared)
    return {**json.loads(trained[0]["result.json"]), "cluster": cluster}


def _worker(config: dict) -> None:
    """One Ray Train worker: its rank's fine-tune, in the process group TorchTrainer started."""
    import ray
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    with tempfile.TemporaryDirectory(prefix="edgeship-qat-") as folder:
        job = Path(folder)
        for name, data in config["files"].items():
            (job / name).write_bytes(data)
        spec = json.loads((job / "job.json").read_text())
        device = ray.train.torch.get_device() if spec["backend"] == "nccl" else None
        prepared, loss, shards = train_shard(job, spec, rank, world, device)
        nodes: list = [None] * world
        dist.all_gather_object(nodes, ray.get_runtime_context().get_node_id())
        if rank != 0:
            ray.train.report({"loss": loss})
            return
        (job / "out").mkdir()
        write_result(job / "out", prepared, {"loss": loss, "processes": world, "backend": spec["backend"],
                                             "engine": "ray"}, shards, nodes)
        config["mailbox"].put({f.name: f.read_bytes() for f in (job / "out").iterdir()})
        ray.train.report({"loss": loss})
