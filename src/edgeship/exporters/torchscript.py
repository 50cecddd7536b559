"""TorchScript: traced and frozen; int8 weights packed for the target's engine (fbgemm, qnnpack)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from edgeship.exporters.base import ExportedArtifact
from edgeship.pipeline.flows import quantized_engine
from edgeship.targets import Target


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    engine = quantized_engine(target.engine) if target.is_int8 else nullcontext()
    with engine, torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(module, examples))
    path = workdir / f"{target.name}{target.suffix}"
    scripted.save(str(path))
    return ExportedArtifact(path, (path,))
