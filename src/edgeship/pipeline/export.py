"""Export stage: each target's artifact from its source, written atomically into the run folder's
artifacts/ (or copied from the stage cache when its source and examples are unchanged)."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeship.fileio import sha256_file
from edgeship.formats import ExportedArtifact, Exporter, export_atomically
from edgeship.pipeline.cache import digest, tensors_digest
from edgeship.pipeline.context import RunContext
from edgeship.pipeline.stages import StageNotes, each
from edgeship.pipeline.values import Exported, Results, Source
from edgeship.targets import get_target


# Bumped when exporters record new details, so a cached export without them is made again
_DETAILS_VERSION = "int8_share-1"


def export(ctx: RunContext, examples: tuple, sources: dict[str, Source]) -> Results[str, Exported]:
    examples_key = tensors_digest(list(examples))
    reused: list[str] = []
    with ctx.log.stage("export") as notes:
        out = each(sources.items(),
                   lambda name, source: _export(ctx, examples, examples_key, name, source, notes, reused),
                   lambda name, why: {name: f"export: {why}"})
        notes.cached = bool(reused) and len(reused) == len(out.ok)
    return out


def _export(ctx: RunContext, examples: tuple, examples_key: str, name: str, source: Source,
            notes: StageNotes, reused: list[str]) -> Exported:
    key = digest("export", ctx.env_key, source.key, name, examples_key, _DETAILS_VERSION)
    cached, files = ctx.cache.load_json("export", key), ctx.cache.load_files("export-files", key)
    from_cache = cached is not None and files is not None
    exporter = _copier(files, cached) if from_cache else source.export
    if from_cache:
        reused.append(name)
    made = export_atomically(exporter, source.module, examples, get_target(name),
                             ctx.folder.root / "artifacts")
    if not from_cache:
        ctx.cache.store_files("export-files", key, list(made.files))
        ctx.cache.store_json("export", key, {"path": made.path.name, "details": made.details})
    ctx.folder.record(*made.files)
    notes.append(f"{name} {made.size_bytes / 1e6:.3f} MB")
    return Exported(made, sha256_file(made.path))


def _copier(files: list[Path], cached: dict) -> Exporter:
    """An exporter that copies a cached artifact instead of making it again."""
    def copy(module, examples, target, workdir: Path) -> ExportedArtifact:
        copies = tuple(Path(shutil.copy2(f, workdir / f.name)) for f in files)
        return ExportedArtifact(workdir / cached["path"], copies, cached["details"])
    return copy
