"""Layers a static quantization flow cannot make int8 as the rest of the model, found by trying
them here (torch 2.13, torchao 0.18, executorch 1.5.1), and what becomes of them, per layer:

- FLOAT_REQUIRED: the flow fails on them; they stay float (mixed precision) and the report says why;
- DYNAMIC_IN_STATIC: no static int8 kernel, but a dynamic one (int8 weights, activations quantized
  at run time) inside the otherwise static model;
- LEFT_FLOAT: the flow's quantizer does not annotate them, so they stay float; said, not changed.

Layers a runtime cannot run in any precision are the format's business (FormatSpec.unsupported
in edgeship.formats). Conv3d elsewhere, for the record: fbgemm quantizes Conv3d
(quantized::conv3d, TorchScript saves it); ONNX Runtime fuses a 5-D QDQ Conv into
com.microsoft:QLinearConv (int8 kept; 3-D pooling runs in float between DequantizeLinear and
QuantizeLinear).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from edgeship.targets import Flow


def _fbgemm_transposed_2x2(conv: nn.ConvTranspose2d) -> str | None:
    """fbgemm's int8 transposed convolution with a 2-wide kernel, measured wrong here against the
    float layer; 3x3 and 4x4 kernels were within int8 error, so those stay int8."""
    return ("fbgemm's int8 ConvTranspose2d answers wrong with a 2-wide kernel (torch 2.13, here on "
            "an AVX-512 CPU, in torch's own default flow too: max error 7.1 on outputs of 2.4 for 32 "
            "to 16 channels, stride 2); QNNPACK, ONNX Runtime and XNNPACK run it int8"
            ) if 2 in conv.kernel_size else None


def _ort_grouped_transposed(conv: nn.Module) -> str | None:
    return ("ONNX Runtime's quantize_static fails on a grouped transposed convolution with "
            "per-channel weights (onnxruntime 1.32: its bias quantization broadcasts the weight's "
            "per-group scales against every output channel)") if conv.groups > 1 else None


def _fx_padding_mode(conv: nn.Module) -> str | None:
    return (f"torch.ao's quantized convolution pads with zeros or by reflection only ('padding_mode' "
            f"{conv.padding_mode} is not supported by quantized convolution, at conversion, in torch's "
            f"own FX flow too); ONNX Runtime and XNNPACK run it int8"
            ) if conv.padding_mode not in ("zeros", "reflect") else None


# Measured with torch's own default qconfig mapping as well: PReLU(0.25) on 0.2 gives 0.05.
_QUANTIZED_PRELU = ("torch 2.13's quantized::prelu scales positive inputs by the slope too (0.2 at "
                    "slope 0.25 comes out 0.05), in torch's own default FX flow as well and on both "
                    "fbgemm and QNNPACK; ONNX Runtime and XNNPACK run it int8")

EMBEDDING_TABLES = (nn.Embedding, nn.EmbeddingBag)


def _fx_max_norm(embedding: nn.Module) -> str | None:
    return ("torch.ao's int8 embedding table does not renormalize the rows it looks up "
            "(max_norm): the rows calibration never saw would ship unnormalized"
            ) if embedding.max_norm is not None else None


# A reason, or a function of the module giving one (None: not this module)
FLOAT_REQUIRED: dict[tuple[Flow, type[nn.Module]], str | Callable[[nn.Module], str | None]] = {
    # first: QNNPACK's Conv3d entry below replaces it (float whatever its padding)
    **{(flow, conv): _fx_padding_mode for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK)
       for conv in (nn.Conv1d, nn.Conv2d, nn.Conv3d)},
    **{(flow, table): _fx_max_norm for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK) for table in EMBEDDING_TABLES},
    (Flow.FX_FBGEMM, nn.ConvTranspose2d): _fbgemm_transposed_2x2,
    (Flow.FX_FBGEMM, nn.PReLU): _QUANTIZED_PRELU,
    (Flow.FX_QNNPACK, nn.PReLU): _QUANTIZED_PRELU,
    (Flow.FX_QNNPACK, nn.Conv3d):
        "quantized::conv3d: QNNPACK packs int8 Conv3d weights but cannot unpack them, so the "
        "TorchScript artifact cannot be frozen or saved ('QNNPACK only supports conv2d_unpack "
        "right now')",
    (Flow.FX_QNNPACK, nn.MaxPool3d):
        "quantized::max_pool3d: no QNNPACK kernel ('QNNPACK backend doesn't support of "
        "quantized_max_pool3d')",
    (Flow.ORT_QDQ, nn.ConvTranspose1d): _ort_grouped_transposed,
    (Flow.ORT_QDQ, nn.ConvTranspose2d): _ort_grouped_transposed,
}


# torch.nn's transformer modules: torch.ao FX takes each as one leaf it does not trace into, so
# they get no static int8 there; their Linears are dynamically quantized after conversion
# (attention.py says how and why).
FX_ATTENTION_LEAVES = (nn.TransformerEncoder, nn.TransformerDecoder, nn.TransformerEncoderLayer,
                       nn.TransformerDecoderLayer, nn.MultiheadAttention)

_FX_RNN = ("no static int8 {0} in torch.ao: dynamically quantized inside the static model "
           "(int8 weights, activations quantized at run time: aten::quantized_{1})")
_FX_CELL = ("no static int8 {0} in torch.ao: dynamically quantized inside the static model (int8 "
            "weights, activations quantized at run time: quantized::quantized_{1}_cell_dynamic)")
_FX_ATTENTION = ("torch.ao FX takes torch.nn's {0} as one leaf module it does not trace into, so it "
                 "has no static int8: its Linears, attention's projections included, are dynamically "
                 "quantized inside the static model (quantized::linear_dynamic); attention's two "
                 "matrix products stay float")
DYNAMIC_IN_STATIC: dict[tuple[Flow, type[nn.Module]], str] = {
    **{(flow, nn.LSTM): _FX_RNN.format("LSTM", "lstm") for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK)},
    **{(flow, nn.GRU): _FX_RNN.format("GRU", "gru") for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK)},
    **{(flow, cell): _FX_CELL.format(cell.__name__, name) for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK)
       for cell, name in ((nn.GRUCell, "gru"), (nn.LSTMCell, "lstm"), (nn.RNNCell, "rnn_tanh or rnn_relu"))},
    **{(flow, layer): _FX_ATTENTION.format(layer.__name__)
       for flow in (Flow.FX_FBGEMM, Flow.FX_QNNPACK) for layer in FX_ATTENTION_LEAVES},
    (Flow.ORT_QDQ, nn.LSTM):
        "ONNX Runtime's quantize_static has no int8 LSTM: its quantize_dynamic makes the LSTM a "
        "DynamicQuantizeLSTM (int8 weights, activations quantized at run time) in the static graph",
}

def _projected_lstm(lstm: nn.LSTM) -> str | None:
    """An LSTM with projections is the one the XNNPACK flow leaves as it is (recurrent.py)."""
    return ("torch.ao's quantizable LSTM, which the XNNPACK flow captures instead of nn.LSTM, has no "
            "projections (proj_size), and the XNNPACK quantizer annotates no aten.lstm: XNNPACK runs "
            "its matrix products in fp32") if lstm.proj_size else None


# A reason, or a function of the module giving one (None: not this module)
LEFT_FLOAT: dict[tuple[Flow, type[nn.Module]], str | Callable[[nn.Module], str | None]] = {
    (Flow.PT2E_XNNPACK, nn.GRU): "the XNNPACK quantizer annotates no aten.gru: XNNPACK runs its "
                                 "matrix products in fp32",
    (Flow.PT2E_XNNPACK, nn.LSTM): _projected_lstm,
    (Flow.ORT_QDQ, nn.GRU): "ONNX Runtime quantizes no GRU, statically or dynamically",
    **{(Flow.PT2E_XNNPACK, table): "the XNNPACK quantizer annotates no embedding lookup and XNNPACK has "
                                   "no lookup kernel: the table stays fp32 (ExecuTorch's 8-bit "
                                   "embedding_byte is in its quantized kernels library, which an app "
                                   "links besides XNNPACK)" for table in EMBEDDING_TABLES},
}


def within(name: str, layers) -> bool:
    """`name` is one of the module names `layers`, or a module inside one (a block keeps all it
    contains).

    >>> within("features.0.conv", {"features.0"}), within("features.01", {"features.0"})
    (True, False)
    """
    return any(name == layer or name.startswith(f"{layer}.") for layer in layers)


def layers_of(table: dict, model: nn.Module, flow: Flow) -> dict[str, str]:
    """{module name: reason} for the modules of `model` that `table` lists for `flow`, outermost
    only (an encoder's layers are inside the encoder).

    >>> layers_of(DYNAMIC_IN_STATIC, nn.Sequential(nn.Linear(2, 2), nn.LSTM(2, 2)), Flow.FX_FBGEMM).keys()
    dict_keys(['1'])
    """
    found: dict[str, str] = {}
    for name, module in model.named_modules():  # parents before children
        inside = any(name.startswith(f"{outer}.") for outer in found)
        why = table.get((flow, type(module))) if not inside else None
        why = why(module) if callable(why) else why
        if why:
            found[name] = why
    return found


def required_float_layers(model: nn.Module, flow: Flow) -> dict[str, str]:
    """{module name: reason} for the layers `flow` cannot quantize for its target: leave them float.

    >>> required_float_layers(nn.Sequential(nn.Conv3d(1, 2, 3), nn.MaxPool3d(2)), Flow.FX_QNNPACK).keys()
    dict_keys(['0', '1'])
    >>> required_float_layers(nn.Sequential(nn.Conv2d(1, 2, 3)), Flow.FX_QNNPACK)
    {}
    """
    return layers_of(FLOAT_REQUIRED, model, flow)
