"""TorchScript: traced and frozen; int8 weights packed for the target's engine (fbgemm, qnnpack)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from edgeship.formats.artifact import ExportedArtifact
from edgeship.formats.compute import measured_share
from edgeship.formats.spec import DynamicModel, FormatSpec
from edgeship.formats.torchscript_compute import compute_ops
from edgeship.quantize.dynamic import torch_ao_dynamic
from edgeship.targets import Format, Target


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    with SPEC.running(target), torch.no_grad():
        scripted = torch.jit.freeze(torch.jit.trace(module, examples))
        # the frozen graph as saved, with the module paths tracing recorded (a loaded file has none)
        share = measured_share(compute_ops, scripted, examples)
    path = workdir / f"{target.name}{SPEC.suffix}"
    scripted.save(str(path))
    return ExportedArtifact(path, (path,), {"int8_share": share})


def quantize_dynamic(target: Target, model: nn.Module, examples: tuple,
                     float_layers: frozenset[str] = frozenset()) -> DynamicModel:
    return DynamicModel(torch_ao_dynamic(model, target.engine, float_layers), export,
                        "dynamically quantized PyTorch model")


SPEC = FormatSpec(
    format=Format.TORCHSCRIPT, suffix=".pt", runtime_packages=("numpy", "torch"), export=export,
    quantize_dynamic=quantize_dynamic,
    dynamic_layers="Linear (attention's projections included), LSTM, GRU; embedding tables weight-only, "
                   "8-bit rows (torch.ao quantize_dynamic)",
    dynamic_per_channel=False,  # torch.ao's default_dynamic_qconfig
    unsupported_layers={}, packs_for_engine=True)
