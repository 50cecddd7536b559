"""ONNX: the dynamo exporter; int8 models are QDQ graphs (QuantizeLinear/DequantizeLinear) made by
ONNX Runtime's own quantizer (static: onnx_static.py; dynamic: quantize_dynamic), which its
optimizer fuses into int8 kernels. Checked with onnx's checker."""

from __future__ import annotations

import functools
from pathlib import Path

from torch import nn

from edgeship.formats import onnx_static
from edgeship.formats.artifact import ExportedArtifact
from edgeship.formats.onnx_graph import artifact_of, onnx_program, strip_debug_metadata
from edgeship.formats.spec import DynamicModel, FormatSpec
from edgeship.targets import Format, Target


def export_dynamic(module: nn.Module, examples: tuple, target: Target, workdir: Path,
                   float_layers: frozenset[str] = frozenset()) -> ExportedArtifact:
    """The float model exported, then quantized dynamically by ONNX Runtime's own tool, the nodes
    of `float_layers` excluded."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    program = onnx_program(module, examples)
    # its dynamic mode rewrites each Gemm as a MatMul named `<gemm>_MatMul` before excluding nodes
    excluded = [f"{name}{gemm}" for name in onnx_static.nodes_of_layers(program, float_layers)
                for gemm in ("", "_MatMul")]
    layers = strip_debug_metadata(program)
    layers.update({f"{node}_MatMul": layer for node, layer in layers.items()})
    scratch = workdir / "float"
    scratch.mkdir()
    program.save(str(scratch / "float.onnx"))
    path = workdir / f"{target.name}{SPEC.suffix}"
    # its root-logger warning advises pre-processing, which only the static path runs: the
    # dynamic one quantizes the export as written, and the user can do nothing about the warning
    with onnx_static.ort_quantizer_quiet():
        quantize_dynamic(scratch / "float.onnx", path, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()
    return artifact_of(path, workdir, layers)


def export(module: nn.Module, examples: tuple, target: Target, workdir: Path) -> ExportedArtifact:
    path = workdir / f"{target.name}{SPEC.suffix}"
    program = onnx_program(module, examples)
    layers = strip_debug_metadata(program)
    program.save(str(path))
    return artifact_of(path, workdir, layers)


def quantize_dynamic(target: Target, model: nn.Module, examples: tuple,
                     float_layers: frozenset[str] = frozenset()) -> DynamicModel:
    """ONNX Runtime quantizes the float model's export itself: the artifact answers like the
    float model, quantized after export."""
    return DynamicModel(model, functools.partial(export_dynamic, float_layers=frozenset(float_layers)),
                        "float model (quantized after export)")


SPEC = FormatSpec(
    format=Format.ONNX, suffix=".onnx", runtime_packages=("numpy", "onnxruntime"), export=export,
    quantize_dynamic=quantize_dynamic, quantize_static=onnx_static.quantize_static,
    dynamic_layers="MatMul/Gemm and the other op types of onnxruntime.quantization.quantize_dynamic",
    dynamic_per_channel=False,  # quantize_dynamic's default
    unsupported_layers={})
