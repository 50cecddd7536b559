"""ONNX: the dynamo exporter; int8 models become QDQ graphs (QuantizeLinear/DequantizeLinear)
that ONNX Runtime fuses into its int8 kernels. Checked with onnx's checker."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from edgeship.formats.artifact import ExportedArtifact
from edgeship.formats.spec import DynamicModel, FormatSpec
from edgeship.targets import Format, Target


def export_dynamic(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    """The float model exported, then quantized dynamically by ONNX Runtime's own tool."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_dir = workdir / "float"
    float_dir.mkdir()
    exported = export(module, examples, target, float_dir)
    path = workdir / exported.path.name
    quantize_dynamic(exported.path, path, weight_type=QuantType.QInt8)
    for f in exported.files:
        f.unlink()
    float_dir.rmdir()
    return _artifact(path, workdir)


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    path = workdir / f"{target.name}{SPEC.suffix}"
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # A PT2E-converted graph keeps training=True but has no train/eval behaviour left:
        # torch.export froze it in eval form, so this warning is wrong for it.
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        program = torch.onnx.export(module, examples, dynamo=True, verbose=False)
    # The exporter annotates every node with its FX node, name scopes and stack trace: debug
    # information a device never reads, 20% of a small int8 model's file.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    program.save(str(path))
    return _artifact(path, workdir)


def _artifact(path: Path, workdir: Path) -> ExportedArtifact:
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    external = sorted({entry.value for init in model.graph.initializer
                       for entry in init.external_data if entry.key == "location"})
    ops = Counter(node.op_type for node in model.graph.node)
    files = (path, *(workdir / name for name in external))
    return ExportedArtifact(path, files, {"onnx_ops": dict(sorted(ops.items())),
                                          "external_data_files": external})


def quantize_dynamic(target: Target, model: nn.Module, examples: tuple) -> DynamicModel:
    """ONNX Runtime quantizes the float model's export itself: the artifact answers like the
    float model, quantized after export."""
    return DynamicModel(model, export_dynamic, "float model (quantized after export)")


SPEC = FormatSpec(
    format=Format.ONNX, suffix=".onnx", runtime_packages=("numpy", "onnxruntime"), export=export,
    quantize_dynamic=quantize_dynamic,
    dynamic_layers="MatMul/Gemm and the other op types of onnxruntime.quantization.quantize_dynamic",
    unsupported_layers={})
