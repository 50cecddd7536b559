"""ONNX: the dynamo exporter; int8 models are QDQ graphs (QuantizeLinear/DequantizeLinear) made by
ONNX Runtime's own quantizer (static: onnx_static.py; dynamic: quantize_dynamic), which its
optimizer fuses into int8 kernels. Checked with onnx's checker."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from edgeship.formats import onnx_static
from edgeship.formats.artifact import ExportedArtifact
from edgeship.formats.onnx_graph import artifact_of, onnx_program, strip_debug_metadata
from edgeship.formats.spec import DynamicModel, FormatSpec
from edgeship.targets import Format, Target


def export_dynamic(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    """The float model exported, then quantized dynamically by ONNX Runtime's own tool."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_dir = workdir / "float"
    float_dir.mkdir()
    exported = export(module, examples, target, float_dir)
    path = workdir / exported.path.name
    # its root-logger warning advises pre-processing, which only the static path runs: the
    # dynamic one quantizes the export as written, and the user can do nothing about the warning
    with onnx_static.root_log_errors_only():
        quantize_dynamic(exported.path, path, weight_type=QuantType.QInt8)
    for f in exported.files:
        f.unlink()
    float_dir.rmdir()
    return artifact_of(path, workdir)


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    path = workdir / f"{target.name}{SPEC.suffix}"
    program = onnx_program(module, examples)
    layers = strip_debug_metadata(program)
    program.save(str(path))
    return artifact_of(path, workdir, layers)


def quantize_dynamic(target: Target, model: nn.Module, examples: tuple) -> DynamicModel:
    """ONNX Runtime quantizes the float model's export itself: the artifact answers like the
    float model, quantized after export."""
    return DynamicModel(model, export_dynamic, "float model (quantized after export)")


SPEC = FormatSpec(
    format=Format.ONNX, suffix=".onnx", runtime_packages=("numpy", "onnxruntime"), export=export,
    quantize_dynamic=quantize_dynamic, quantize_static=onnx_static.quantize_static,
    dynamic_layers="MatMul/Gemm and the other op types of onnxruntime.quantization.quantize_dynamic",
    dynamic_per_channel=False,  # quantize_dynamic's default
    unsupported_layers={})
