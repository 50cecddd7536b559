"""ONNX graphs as edgeship writes and reads them: the dynamo exporter's program, the checked
artifact with its external data, and the kernels ONNX Runtime's optimizer makes of it."""

from __future__ import annotations

import ast
import logging
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch import nn

from edgeship.engines import captures_logged
from edgeship.formats.artifact import ExportedArtifact
from edgeship.formats.compute import measured_share
from edgeship.formats.onnx_attention import attention_decomposed
from edgeship.formats.onnx_compute import compute_ops


def onnx_program(module: nn.Module, examples: tuple):
    """The dynamo exporter's ONNXProgram of `module`, quietly; attention it refuses is decomposed
    (formats/onnx_attention.py)."""
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        # A PT2E-converted graph keeps training=True but has no train/eval behaviour left:
        # torch.export froze it in eval form, so this warning is wrong for it.
        warnings.filterwarnings("ignore", message="Exporting a model while it is in training mode")
        with captures_logged():
            try:
                return torch.onnx.export(module, examples, dynamo=True, verbose=False)
            except Exception as refused:
                decomposed = attention_decomposed(module, examples)
                if decomposed is None:
                    raise
                try:
                    return torch.onnx.export(decomposed, examples, dynamo=True, verbose=False)
                except Exception:  # noqa: BLE001 - the first error is the one to report
                    raise refused from None


def strip_debug_metadata(program) -> dict[str, str]:
    """Drop the exporter's debug annotations; returns {node name: module path} from them.

    The exporter annotates every node with its FX node, name scopes and stack trace: debug
    information a device never reads, 20% of a small int8 model's file."""
    layers, folded = {}, conv_of_batch_norm(program)
    for node in program.model.graph.all_nodes():
        scopes = ast.literal_eval(node.metadata_props.get("pkg.torch.onnx.name_scopes", "[]"))
        if len(scopes) >= 2 and scopes[-2]:  # [.., the module path, the FX node]
            # a Conv with its batch norm folded in carries the batch norm's path: name the conv's
            layers[node.name] = folded.get(scopes[-2], scopes[-2])
        node.metadata_props.clear()
    return layers


def conv_of_batch_norm(program) -> dict[str, str]:
    """{batch norm module name: the module name of the convolution whose output it normalises}."""
    graph = program.exported_program.graph if program.exported_program is not None else None
    out: dict[str, str] = {}
    for node in graph.nodes if graph is not None else ():
        if "batch_norm" in str(node.target) and node.args and hasattr(node.args[0], "meta"):
            producer = node.args[0]
            if "conv" in str(producer.target):
                bn, conv = (list(n.meta.get("nn_module_stack", {}).values())[-1][0]
                            for n in (node, producer))
                out[bn] = conv
    return out


def artifact_of(path: Path, workdir: Path, layers: dict[str, str] | None = None) -> ExportedArtifact:
    """The checked artifact at `path` with its external data files, its ONNX op counts, the
    kernels ONNX Runtime's optimizer makes of it on this machine and its int8 share (compute ops
    named by `layers`, {node name: module path}, where the exporter told them)."""
    import onnx

    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path), load_external_data=False)
    external = sorted({entry.value for init in model.graph.initializer
                       for entry in init.external_data if entry.key == "location"})
    ops = Counter(node.op_type for node in model.graph.node)
    files = (path, *(workdir / name for name in external))
    return ExportedArtifact(path, files, {"onnx_ops": dict(sorted(ops.items())),
                                          "external_data_files": external,
                                          "onnxruntime_kernels": runtime_kernels(path, workdir),
                                          "int8_share": measured_share(compute_ops, path, layers)})


# Compute ops ONNX Runtime runs in int8, and their float counterparts, after its graph optimizer
INT8_KERNELS = ("QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "ConvInteger",
                "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention",
                "DynamicQuantizeLSTM", "QLinearSigmoid", "QLinearLeakyRelu", "QLinearAveragePool",
                "QLinearGlobalAveragePool", "QLinearConcat", "QLinearSoftmax")
FLOAT_KERNELS = ("Conv", "FusedConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul", "FusedMatMul",
                 "LSTM", "GRU", "Attention")


def runtime_kernels(path: Path, workdir: Path) -> dict:
    """What ONNX Runtime's optimizer (all levels, as the runner loads it) turns the graph into here:
    the counts of int8 and of float compute kernels, and every op. A DequantizeLinear feeding a
    float Conv is a layer the QDQ graph meant int8 that ONNX Runtime runs in float."""
    import onnx
    import onnxruntime as ort

    optimized = workdir / f".{path.stem}.ort-optimized.onnx"
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    options.log_severity_level = 3  # its note that the file is specific to this CPU: we know
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    ops = Counter(node.op_type for node in onnx.load(str(optimized), load_external_data=False).graph.node)
    for leftover in workdir.glob(f".{path.stem}.ort-optimized.onnx*"):
        leftover.unlink()
    return {"int8_compute": sum(ops[k] for k in INT8_KERNELS),
            "float_compute": sum(ops[k] for k in FLOAT_KERNELS), "ops": dict(sorted(ops.items()))}
