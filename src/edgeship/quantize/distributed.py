"""QAT on several processes: torchrun starts them, DistributedDataParallel keeps them in step.

The parent (the pipeline's QAT stage) writes a job folder: the recipe, the float weights, the
calibrated fake-quant state and the example inputs. Each worker rebuilds the same prepared graph
from these (as the stage cache does), fine-tunes on its shard of the train split, and rank 0
writes the trained state back. Graph modules are rebuilt, not pickled: torch.save cannot pickle
an FX-prepared graph, and an exported one would tie the job to this process's modules.

Run as a worker: python -m torch.distributed.run --standalone --nproc-per-node N \\
                     -m edgeship.quantize.distributed JOB_FOLDER
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from edgeship.errors import UserError
from edgeship.factories import load_data, load_model, load_teacher
from edgeship.metrics import loss_of
from edgeship.fileio import write_atomic
from edgeship.processes import dies_with_parent
from edgeship.quantize.flow import QuantFlow, QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.quantize.qat import finetune
from edgeship.quantize.training import Shard
from edgeship.recipe import Distributed, Recipe, parse_recipe
from edgeship.targets import Flow


def backend_for(config: Distributed) -> str:
    """The collective backend this machine can honour; bad input before any training if none."""
    if not torch.distributed.is_available():
        raise UserError("quantization.qat.distributed: this torch build has no torch.distributed")
    if config.engine == "ray":  # Ray Train's own choice
        return "nccl" if config.use_gpu else "gloo"
    if config.backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if config.backend == "nccl" and torch.cuda.device_count() < config.processes:
        raise UserError(f"quantization.qat.distributed.backend = 'nccl' needs a CUDA GPU per process "
                        f"({config.processes}); this machine has {torch.cuda.device_count()}. "
                        f"Use 'gloo' (CPU) or 'auto'")
    return config.backend


def write_job(job: Path, flow: QuantFlow, prepared: nn.Module, model: nn.Module, examples: tuple,
              recipe: Recipe, backend: str) -> None:
    """What every worker rebuilds its rank from: the recipe, the float weights, the calibrated
    fake-quant state and the example inputs."""
    torch.save(model.state_dict(), job / "float.pt")
    torch.save(prepared.state_dict(), job / "prepared.pt")
    torch.save(tuple(examples), job / "examples.pt")
    settings = flow.settings
    (job / "job.json").write_text(json.dumps({
        "recipe": recipe.model_dump(mode="json"), "base_dir": str(recipe.base_dir),
        "flow": flow.flow.value, "backend": backend,
        "settings": {"observer": settings.observer, "per_channel": settings.per_channel,
                     "float_layers": sorted(settings.float_layers)}}))


def finetune_distributed(flow: QuantFlow, prepared: nn.Module, model: nn.Module, examples: tuple,
                         recipe: Recipe, scratch: Path, log=lambda message: None) -> dict:
    """Fine-tunes `prepared` in place on recipe.quantization.qat.distributed.processes processes.
    Returns {"loss", "processes", "backend", "ranks": [{"rank", "samples_per_epoch"}],
    "shared_samples"}. A worker that fails raises RuntimeError with what each rank raised (or
    the end of the workers' log when none said). The job's files go in a folder under `scratch`
    (the run folder's temporary folder: a killed run's is removed by the next run)."""
    config = recipe.quantization.qat.distributed
    backend = backend_for(config)
    with tempfile.TemporaryDirectory(dir=scratch, prefix="qat-") as folder:
        job = Path(folder)
        write_job(job, flow, prepared, model, examples, recipe, backend)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc-per-node={config.processes}", "-m", __name__, str(job)]
        log(f"  QAT {flow.flow.value}: torchrun, {config.processes} processes, {backend}")
        with open(job / "workers.log", "w") as out:
            code = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=dies_with_parent(),
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if code != 0 or not (job / "result.json").exists():
            # The workers' own words; torchrun's summary when a worker died without any.
            said = [f"{e.stem}: {e.read_text().strip()}" for e in sorted(job.glob("rank*.error"))]
            said = said or (job / "workers.log").read_text().strip().splitlines()[-8:]
            raise RuntimeError(f"torchrun exited with {code}: " + " | ".join(said))
        prepared.load_state_dict(torch.load(job / "trained.pt", weights_only=True))
        result = json.loads((job / "result.json").read_text())
    flow.set_eval(prepared)
    return result


def _worker(job: Path) -> None:
    try:
        _train_rank(job)
    except BaseException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        (job / f"rank{os.environ.get('RANK', '?')}.error").write_text(f"{type(e).__name__}: {first}")
        raise


def _train_rank(job: Path) -> None:
    import torch.distributed as dist

    spec = json.loads((job / "job.json").read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = None
    if spec["backend"] == "nccl":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
    dist.init_process_group(spec["backend"])
    try:
        prepared, loss, shards = train_shard(job, spec, rank, world, device)
        if rank == 0:
            write_result(job, prepared, {"loss": loss, "processes": world, "backend": spec["backend"]},
                         shards)
    finally:
        dist.destroy_process_group()


def train_shard(job: Path, spec: dict, rank: int, world: int,
                device: torch.device | None) -> tuple[nn.Module, float, list[list[int]]]:
    """This rank's fine-tune, in a process group already started: the trained graph, the last
    epoch's loss, and the train samples each rank saw in the first epoch (gathered)."""
    import torch.distributed as dist
    from torch.utils.data import DistributedSampler

    recipe, model, train_split, flow, prepared = _rebuild(job, spec, device)
    loss = finetune(flow, prepared, train_split, qat=recipe.quantization.qat,
                    batch_size=recipe.data.batch_size, seed=recipe.seed,
                    teacher=_teacher(recipe, model, device),
                    shard=Shard(rank, world), device=device,
                    task_loss=loss_of(recipe.data, recipe.base_dir))
    # Disjoint shards, except for the samples DistributedSampler repeats to make them equal.
    seen = list(DistributedSampler(train_split, num_replicas=world, rank=rank, seed=recipe.seed))
    shards: list = [None] * world
    dist.all_gather_object(shards, seen)
    return prepared, loss, shards


def _rebuild(job: Path, spec: dict, device: torch.device | None) -> tuple:
    """The recipe, float model, train split, flow and calibrated fake-quant graph, as the parent
    had them."""
    recipe = parse_recipe(spec["recipe"], str(job / "job.json"), Path(spec["base_dir"]))
    model = load_model(recipe)
    model.load_state_dict(torch.load(job / "float.pt", weights_only=True))
    model.eval()
    examples = torch.load(job / "examples.pt", weights_only=True)
    settings = spec["settings"]
    flow = flow_for(Flow(spec["flow"]), QuantSettings(
        observer=settings["observer"], per_channel=settings["per_channel"],
        float_layers=frozenset(settings["float_layers"])))
    prepared = flow.prepare(model, examples, qat=True)
    prepared.load_state_dict(torch.load(job / "prepared.pt", weights_only=True))
    if device is not None:
        prepared.to(device)
        model.to(device)
    return recipe, model, load_data(recipe).train, flow, prepared


def _teacher(recipe, model: nn.Module, device: torch.device | None) -> nn.Module:
    """QAT's teacher: the recipe's separate network, or the float model."""
    distillation = recipe.quantization.qat.distillation
    if distillation is None or distillation.teacher is None:
        return model
    teacher = load_teacher(recipe, distillation.teacher, "quantization.qat.distillation.teacher")
    return teacher.to(device) if device is not None else teacher


def write_result(job: Path, prepared: nn.Module, result: dict, shards: list[list[int]],
                 nodes: list[str] | None = None) -> None:
    """`nodes`: where each rank ran (Ray's node ids), when the engine places ranks on nodes."""
    buffer = io.BytesIO()
    torch.save({k: v.cpu() for k, v in prepared.state_dict().items()}, buffer)
    write_atomic(job / "trained.pt", buffer.getvalue())
    flat = [i for shard in shards for i in shard]
    ranks = [{"rank": r, "samples_per_epoch": len(s)} for r, s in enumerate(shards)]
    for rank, node in zip(ranks, nodes or []):
        rank["node"] = node
    # Written last: the parent takes its presence as the sign that the state is complete.
    write_atomic(job / "result.json", json.dumps({**result, "ranks": ranks,
                                                  "shared_samples": len(flat) - len(set(flat))}))


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
