"""Which layers a flow or a runtime cannot handle, found by trying them here (torch 2.13, torchao
0.18, executorch 1.5.1, onnxruntime 1.32), with the message each attempt failed with.

Two tables, both keyed by a module type:
- FLOAT_REQUIRED, per quantization flow: the layer cannot be int8 in that flow's artifact, but
  works in float. Leaving it float (mixed precision) makes the artifact.
- UNSUPPORTED, per artifact format: the runtime cannot run the layer in any precision. No choice
  of float layers helps; the target must fail, naming the op, before any work is spent on it.

Conv3d elsewhere, for the record: fbgemm quantizes Conv3d (quantized::conv3d, TorchScript saves
it); ONNX Runtime fuses a 5-D QDQ Conv into com.microsoft:QLinearConv (int8 kept; 3-D pooling
runs in float between DequantizeLinear and QuantizeLinear).
"""

from __future__ import annotations

from torch import nn

from edgeship.targets import Flow, Format, Target

FLOAT_REQUIRED: dict[tuple[Flow, type[nn.Module]], str] = {
    (Flow.FX_QNNPACK, nn.Conv3d):
        "quantized::conv3d: QNNPACK packs int8 Conv3d weights but cannot unpack them, so the "
        "TorchScript artifact cannot be frozen or saved ('QNNPACK only supports conv2d_unpack "
        "right now')",
    (Flow.FX_QNNPACK, nn.MaxPool3d):
        "quantized::max_pool3d: no QNNPACK kernel ('QNNPACK backend doesn't support of "
        "quantized_max_pool3d')",
}

_CONV_5D = ("aten.convolution with 5-D input: XNNPACK does not delegate it and ExecuTorch's "
            "portable kernel takes only 3-D or 4-D input ('Expect input tensor to be 3-D or 4-D, "
            "but got, 5'); int8 fails earlier, at to_executorch: 'Missing out variants: "
            "{'quantized_decomposed::dequantize_per_channel'}'")

UNSUPPORTED: dict[tuple[Format, type[nn.Module]], str] = {
    (Format.EXECUTORCH, nn.Conv3d): _CONV_5D,
    (Format.EXECUTORCH, nn.MaxPool3d):
        "aten.max_pool3d_with_indices: no ExecuTorch kernel, XNNPACK does not delegate it "
        "('Missing operator: aten::max_pool3d_with_indices.out' when the program loads)",
}


def _matches(model: nn.Module, table: dict, key) -> dict[str, str]:
    return {name: table[(key, type(module))] for name, module in model.named_modules()
            if (key, type(module)) in table}


def required_float_layers(model: nn.Module, flow: Flow) -> dict[str, str]:
    """{module name: reason} for the layers `flow` cannot quantize for its target: leave them float.

    >>> required_float_layers(nn.Sequential(nn.Conv3d(1, 2, 3), nn.MaxPool3d(2)), Flow.FX_QNNPACK).keys()
    dict_keys(['0', '1'])
    >>> required_float_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), Flow.FX_QNNPACK)
    {}
    """
    return _matches(model, FLOAT_REQUIRED, flow)


def unsupported_layers(model: nn.Module, target: Target) -> dict[str, str]:
    """{module name: reason} for the layers `target`'s runtime cannot run in any precision (its
    int8 artifact and its fp32 twin alike): the target cannot ship this model.

    >>> from edgeship.targets import get_target
    >>> list(unsupported_layers(nn.Sequential(nn.Conv3d(1, 2, 3)), get_target("executorch-fp32")))
    ['0']
    >>> unsupported_layers(nn.Sequential(nn.Conv3d(1, 2, 3)), get_target("onnx-int8"))
    {}
    """
    return _matches(model, UNSUPPORTED, target.format)
