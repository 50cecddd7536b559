"""Layers a quantization flow cannot make int8 for its target, found by trying them here (torch
2.13, torchao 0.18, executorch 1.5.1), with the message each attempt failed with. They work in
float: leaving them float (mixed precision) makes the artifact, and the report says why.

Layers a runtime cannot run in any precision are the format's business (FormatSpec.unsupported
in edgeship.formats). Conv3d elsewhere, for the record: fbgemm quantizes Conv3d
(quantized::conv3d, TorchScript saves it); ONNX Runtime fuses a 5-D QDQ Conv into
com.microsoft:QLinearConv (int8 kept; 3-D pooling runs in float between DequantizeLinear and
QuantizeLinear).
"""

from __future__ import annotations

from torch import nn

from edgeship.targets import Flow

FLOAT_REQUIRED: dict[tuple[Flow, type[nn.Module]], str] = {
    (Flow.FX_QNNPACK, nn.Conv3d):
        "quantized::conv3d: QNNPACK packs int8 Conv3d weights but cannot unpack them, so the "
        "TorchScript artifact cannot be frozen or saved ('QNNPACK only supports conv2d_unpack "
        "right now')",
    (Flow.FX_QNNPACK, nn.MaxPool3d):
        "quantized::max_pool3d: no QNNPACK kernel ('QNNPACK backend doesn't support of "
        "quantized_max_pool3d')",
}


def required_float_layers(model: nn.Module, flow: Flow) -> dict[str, str]:
    """{module name: reason} for the layers `flow` cannot quantize for its target: leave them float.

    >>> required_float_layers(nn.Sequential(nn.Conv3d(1, 2, 3), nn.MaxPool3d(2)), Flow.FX_QNNPACK).keys()
    dict_keys(['0', '1'])
    >>> required_float_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), Flow.FX_QNNPACK)
    {}
    """
    return {name: FLOAT_REQUIRED[(flow, type(module))] for name, module in model.named_modules()
            if (flow, type(module)) in FLOAT_REQUIRED}
