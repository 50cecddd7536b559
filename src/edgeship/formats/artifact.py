"""What an exporter makes (ExportedArtifact), the exporter protocol, and the atomic publication
of what an exporter wrote."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from torch import nn

from edgeship.targets import Target


@dataclass(frozen=True)
class ExportedArtifact:
    path: Path  # the file a runtime loads
    files: tuple[Path, ...]  # every file it needs (ONNX external data included)
    details: dict = field(default_factory=dict)  # format-specific facts, e.g. XNNPACK delegation

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


class Exporter(Protocol):
    def __call__(self, module: nn.Module, examples: tuple, target: Target,
                 workdir: Path) -> ExportedArtifact:
        """Write the artifact for `target` into the empty folder `workdir`."""


# A process's temporary folder: this prefix, its pid, a dash. In a run folder, the next run
# removes those a killed process left (pipeline/runfolder.py).
SCRATCH_PREFIX = ".edgeship-tmp-"


def export_atomically(exporter: Exporter, module: nn.Module, examples: tuple, target: Target,
                      dest: Path) -> ExportedArtifact:
    """Export into a scratch folder beside `dest`, then move the files in, the loadable file last:
    a killed run leaves either the whole artifact or none of it (and a scratch folder named
    after its pid, which the next run into the run folder removes)."""
    dest.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f"{SCRATCH_PREFIX}{os.getpid()}-{target.name}-"))
    try:
        made = exporter(module, examples, target, scratch)
        moved = []
        for f in sorted(made.files, key=lambda f: f == made.path):
            os.replace(f, dest / f.name)
            moved.append(dest / f.name)
        return ExportedArtifact(dest / made.path.name, tuple(moved), made.details)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
