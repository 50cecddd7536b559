"""Export stage: each target's artifact from its source, written atomically into the run folder's
artifacts/ (or copied from the stage cache when its source and examples are unchanged)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from torch import nn

from edgeship.cluster import TaskFailed
from edgeship.fileio import sha256_file
from edgeship.formats import ExportedArtifact, Exporter, export_atomically
from edgeship.pipeline.cache import digest, tensors_digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.stages import StageNotes, describe, each
from edgeship.pipeline.values import Exported, Results, Source
from edgeship.quantize.remake import Remake
from edgeship.targets import get_target


# Bumped when exporters record new details, so a cached export without them is made again
_DETAILS_VERSION = "int8_share-1"


def export(ctx: RunContext, examples: tuple, sources: dict[str, Source]) -> Results[str, Exported]:
    examples_key = tensors_digest(list(examples))
    keys = {name: digest("export", ctx.env_key, source.key, name, examples_key, _DETAILS_VERSION)
            for name, source in sources.items()}
    reused: list[str] = []
    with ctx.log.stage("export") as notes:
        found = {name: _from_cache(ctx, key) for name, key in keys.items()}  # read once: a bad entry is said once
        before, elsewhere = ctx.tasks.task_seconds if ctx.tasks else 0.0, \
            _sent_to_cluster(ctx, examples, sources, [n for n in sources if found[n] is None], notes)
        here_first = sorted(sources.items(), key=lambda item: item[0] in elsewhere)  # while the tasks run
        out = each(here_first,
                   lambda name, source: _export(ctx, examples, keys[name], found[name], name, source,
                                                elsewhere.get(name), notes, reused),
                   lambda name, why: {name: f"export: {why}"})
        notes.cached = bool(reused) and len(reused) == len(out.ok)
        if elsewhere:
            notes.append(f"{ctx.tasks.task_seconds - before:.1f} task-seconds on the cluster")
    return Results({n: out.ok[n] for n in sources if n in out.ok}, out.failed)


def _from_cache(ctx: RunContext, key: str) -> tuple[dict, list[Path]] | None:
    """The stage cache's entry for an artifact (its JSON and its files), when it has both."""
    cached, files = ctx.cache.load_json("export", key), ctx.cache.load_files("export-files", key)
    return (cached, files) if cached is not None and files is not None else None


def _export(ctx: RunContext, examples: tuple, key: str, found: tuple[dict, list[Path]] | None, name: str,
            source: Source, task, notes: StageNotes, reused: list[str]) -> Exported:
    """`found`: the stage cache's entry; `task`: the Ray task making this artifact, if one does."""
    from_cache = found is not None
    made_elsewhere = ctx.tasks.result(task) if task is not None else None
    if isinstance(made_elsewhere, TaskFailed):
        raise made_elsewhere
    if from_cache:  # the copier and the writer write files made before: no model needed
        exporter, module = _copier(*found), None
        reused.append(name)
    elif made_elsewhere is not None:
        exporter, module = _writer(made_elsewhere), None
    else:
        exporter, module = source.export, source.model()
    made = export_atomically(exporter, module, examples, get_target(name), ctx.folder.root / "artifacts")
    if not from_cache:
        ctx.cache.store_files("export-files", key, list(made.files))
        ctx.cache.store_json("export", key, {"path": made.path.name, "details": made.details})
    ctx.folder.record(*made.files)
    notes.append(f"{name} {made.size_bytes / 1e6:.3f} MB" + (" (Ray task)" if task is not None else ""))
    return Exported(made, sha256_file(made.path))


def _sent_to_cluster(ctx: RunContext, examples: tuple, sources: dict[str, Source], missing: list[str],
                     notes: StageNotes) -> dict:
    """With a cluster, each artifact the stage cache lacks is made by a Ray task. A model travels
    as itself, or, when it is a GraphModule torch cannot pickle (FX's and PT2E's converted int8
    models), as what the task converts it from again (its Remake); a model that can do neither is
    exported here while the tasks run. The tasks' files come back to be written here."""
    if ctx.tasks is None:
        return {}
    shared_examples, stored, travel = ctx.tasks.put(examples), {}, {}
    for name in missing:  # each model in the object store once, however many targets export it
        source = sources[name]
        what = source.remake if source.remake is not None else source.module
        if id(what) not in stored:
            stored[id(what)] = ctx.tasks.put(what)
        travel[name] = stored[id(what)]
    sent = ctx.tasks.submit_each(made_files, {
        name: (sources[name].export, model, shared_examples, name) for name, model in travel.items()
        if model is not None and shared_examples is not None}, describe)
    if missing:
        notes.append(f"{len(sent)} of {len(missing)} exports as Ray tasks")
    return sent


def made_files(exporter: Exporter, module: nn.Module | Remake, examples: tuple, name: str) -> dict:
    """A Ray task: the artifact of target `name`, as its file names and bytes; from `module`, or
    from the model a Remake converts."""
    if isinstance(module, Remake):
        module = module.module()
    with tempfile.TemporaryDirectory(prefix="edgeship-export-") as folder:
        made = exporter(module, examples, get_target(name), Path(folder))
        return {"path": made.path.name, "details": made.details,
                "files": {f.name: f.read_bytes() for f in made.files}}


def _writer(made: dict) -> Exporter:
    """An exporter that writes the files a Ray task made."""
    def write(module, examples, target, workdir: Path) -> ExportedArtifact:
        files = tuple(workdir / name for name in made["files"])
        for f in files:
            f.write_bytes(made["files"][f.name])
        return ExportedArtifact(workdir / made["path"], files, made["details"])
    return write


def _copier(cached: dict, files: list[Path]) -> Exporter:
    """An exporter that copies a cached artifact instead of making it again."""
    def copy(module, examples, target, workdir: Path) -> ExportedArtifact:
        copies = tuple(Path(shutil.copy2(f, workdir / f.name)) for f in files)
        return ExportedArtifact(workdir / cached["path"], copies, cached["details"])
    return copy
