"""The int8 artifacts to compare: edgeship's, made by the components its pipeline uses with default
settings (calibration only), and each runtime's own documented flow on the same float weights:

- FX graph mode fbgemm: `prepare_fx(get_default_qconfig_mapping("fbgemm"))`, calibrate,
  `convert_fx`, traced and frozen TorchScript (PyTorch's static quantization tutorial);
- PT2E + XNNPACKQuantizer (symmetric, per-channel), `convert_pt2e`, lowered with
  XnnpackPartitioner (ExecuTorch's XNNPACK quantization tutorial);
- ONNX Runtime `quant_pre_process` then `quantize_static` (QDQ, U8 activations, S8 per-channel
  weights; its defaults otherwise), from the float ONNX edgeship exports for the fp32 twin.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import TensorDataset

from edgeship.benchmarks.runner import load
from edgeship.formats import ExportedArtifact, export_atomically, spec_for
from edgeship.quantize.calibrate import calibrate
from edgeship.quantize.float_layers import required_float_layers
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.targets import get_target

INT8 = ("torchscript-fbgemm", "onnx-int8", "executorch-xnnpack")
PEER_OF = {"torchscript-fbgemm": "FX fbgemm", "onnx-int8": "ORT quantize_static",
           "executorch-xnnpack": "PT2E XNNPACK"}


def edgeship_artifact(name: str, model: nn.Module, calibration: np.ndarray, folder: Path) -> Path:
    return edgeship_export(name, model, calibration, folder).path


def edgeship_export(name: str, model: nn.Module, calibration: np.ndarray, folder: Path) -> ExportedArtifact:
    """`name`'s artifact as edgeship's pipeline makes it with default settings, QAT off: the
    layers the flow needs float left float, the recipe's calibration (batch 64, 4 batches) in the
    target's flow, then its exporter."""
    target = get_target(name)
    examples = (torch.from_numpy(calibration[:1]),)
    spec = spec_for(target.format)
    if not target.is_int8:
        return export_atomically(spec.export, model, examples, target, folder)
    flow = flow_for(target.flow, QuantSettings().and_float(required_float_layers(model, target.flow)))
    prepared = calibrate(flow, model, examples, _dataset(calibration), batches=4, batch_size=64, qat=False)
    with flow.engine():
        converted = flow.convert(prepared)
    export = (spec.quantize_static((calibration,), flow.settings, 4 * 64)[0] if flow.quantizes_at_export
              else spec.export)
    with spec.running(target):
        return export_atomically(export, converted, examples, target, folder)


def answers(path: Path | str, engine: str | None, inputs: np.ndarray) -> np.ndarray:
    """The artifact at `path`, loaded in its own runtime on one thread, answering `inputs` one
    sample at a time (the artifacts are exported at batch 1): its first output, stacked."""
    runtime = load(str(path), engine, 1)
    return np.concatenate([runtime(runtime.to_native([inputs[i:i + 1]]))[0] for i in range(len(inputs))])


def error_share(path: Path | str, engine: str | None, model: nn.Module, inputs: torch.Tensor) -> float:
    """The artifact's largest error against `model` on `inputs`, as a share of `model`'s largest
    output."""
    with torch.no_grad():
        expected = model(inputs).numpy()
    return float(np.abs(answers(path, engine, inputs.numpy()) - expected).max() / np.abs(expected).max())


def peer_artifact(name: str, model: nn.Module, calibration: np.ndarray, float_onnx: Path,
                  folder: Path) -> Path:
    """The runtime's own documented flow for `name`'s runtime, on the same weights."""
    make = {"torchscript-fbgemm": _fx_fbgemm, "executorch-xnnpack": _pt2e_xnnpack,
            "onnx-int8": _ort_quantize_static}[name]
    return make(model, calibration[:256], float_onnx, folder)


def _dataset(inputs: np.ndarray) -> TensorDataset:
    return TensorDataset(torch.from_numpy(inputs), torch.zeros(len(inputs), dtype=torch.int64))


def _batches(calibration: np.ndarray):
    return [torch.from_numpy(calibration[i:i + 64]) for i in range(0, len(calibration), 64)]


def _fx_fbgemm(model, calibration, float_onnx, folder: Path) -> Path:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    examples = (torch.from_numpy(calibration[:1]),)
    torch.backends.quantized.engine = "fbgemm"
    prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("fbgemm"), examples)
    with torch.no_grad():
        for batch in _batches(calibration):
            prepared(batch)
        scripted = torch.jit.freeze(torch.jit.trace(convert_fx(prepared), examples))
    path = folder / "fx-fbgemm.pt"
    scripted.save(str(path))
    return path


def _pt2e_xnnpack(model, calibration, float_onnx, folder: Path) -> Path:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    examples = (torch.from_numpy(calibration[:1]),)
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(copy.deepcopy(model).eval(), examples).module(), quantizer)
    with torch.no_grad():
        for i in range(len(calibration)):  # exported at batch 1
            prepared(torch.from_numpy(calibration[i:i + 1]))
    program = to_edge_transform_and_lower(torch.export.export(convert_pt2e(prepared), examples),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    path = folder / "pt2e-xnnpack.pte"
    path.write_bytes(program.buffer)
    return path


def _ort_quantize_static(model, calibration, float_onnx: Path, folder: Path) -> Path:
    return ort_quantize_static(float_onnx, calibration, folder)


def ort_quantize_static(float_onnx: Path, calibration: np.ndarray, folder: Path, *,
                        reduce_range: bool = False) -> Path:
    """ONNX Runtime's documented static flow, calibrated one sample at a time (the float export
    has batch 1)."""
    import onnxruntime as ort
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre, path = folder / "ort-pre.onnx", folder / "ort-quantize-static.onnx"
    quant_pre_process(str(float_onnx), str(pre))
    name = ort.InferenceSession(str(float_onnx)).get_inputs()[0].name
    feeds = iter([{name: calibration[i:i + 1]} for i in range(len(calibration))])

    class Reader:
        def get_next(self):
            return next(feeds, None)

    quantize_static(str(pre), str(path), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                    reduce_range=reduce_range)
    return path
