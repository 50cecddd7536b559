"""Dynamic quantization: int8 weights, activations quantized at run time from their own range.
No calibration, no QAT. For models dominated by Linear (and LSTM/GRU) layers: language models.

Each format has its own runtime support, so each target has its own path:
- TorchScript: torch.ao's quantize_dynamic (quantized::linear_dynamic, on fbgemm or qnnpack);
- ExecuTorch: PT2E with the XNNPACK quantizer's dynamic config (XNNPACK's dynamically quantized
  fully-connected; Linear only);
- ONNX: ONNX Runtime's own quantize_dynamic on the fp32 export (DynamicQuantizeLinear,
  MatMulInteger), done by the ONNX exporter: there is no PyTorch model in between.
"""

from __future__ import annotations

import copy

from torch import nn

from edgeship.errors import UserError
from edgeship.pipeline.flows import Pt2eXnnpackFlow, _quiet_fx_deprecation, quantized_engine
from edgeship.targets import Format, Target

DYNAMIC_TYPES = {nn.Linear, nn.LSTM, nn.GRU}

# What each path quantizes dynamically, for the report.
LAYERS = {
    Format.TORCHSCRIPT: "Linear, LSTM, GRU (torch.ao quantize_dynamic)",
    Format.EXECUTORCH: "Linear (XNNPACK dynamic fully-connected)",
    Format.ONNX: "MatMul/Gemm and the other op types of onnxruntime.quantization.quantize_dynamic",
}


def check_quantizable(model: nn.Module, targets: list[Target]) -> None:
    """Before any training: dynamic quantization of a model without such layers does nothing."""
    if targets and not any(isinstance(m, tuple(DYNAMIC_TYPES)) for m in model.modules()):
        names = ", ".join(t.name for t in targets)
        raise UserError(f"quantization.mode dynamic ({names}): the model has no Linear, LSTM or GRU "
                        f"layer to quantize dynamically; use mode = 'static'")


def quantize(target: Target, model: nn.Module, examples: tuple) -> nn.Module | None:
    """The dynamically quantized PyTorch model for `target`, or None where the quantization
    happens in the target's own toolchain after export (ONNX)."""
    if target.format is Format.TORCHSCRIPT:
        from torch.ao.quantization import quantize_dynamic

        with _quiet_fx_deprecation(), quantized_engine(target.engine):
            return quantize_dynamic(copy.deepcopy(model).eval(), DYNAMIC_TYPES)
    if target.format is Format.EXECUTORCH:
        return Pt2eXnnpackFlow().convert_dynamic(model, examples)
    return None
