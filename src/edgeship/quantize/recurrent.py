"""nn.LSTM in the XNNPACK flow. The XNNPACK quantizer annotates no aten.lstm, and XNNPACK runs int8
linears only: left as it is, an LSTM runs in fp32 inside the int8 artifact. torch.ao's quantizable
LSTM computes the same cell from nn.Linear gates and elementwise ops, which torch.export unrolls
over the sequence and the quantizer annotates like any linear: with it, the LSTM's matrix products
run int8 in XNNPACK. (No such module exists for nn.GRU: it stays float, with its reason.)"""

from __future__ import annotations

import copy

from torch import nn

from edgeship.quantize.rebuild import from_float_unobserved, rebuilt_each


def quantizable_lstms(model: nn.Module) -> nn.Module:
    """A copy of `model` with every nn.LSTM (itself included) rebuilt as torch.ao's quantizable
    LSTM, float, holding the same weights; `model` itself when it has none. An LSTM that module
    cannot hold (projections) stays as it is."""
    if not any(type(m) is nn.LSTM for m in model.modules()):
        return model
    return rebuilt_each(copy.deepcopy(model), nn.LSTM, _quantizable)


def _quantizable(lstm: nn.LSTM) -> nn.Module:
    from torch.ao.nn.quantizable import LSTM as QuantizableLSTM

    if lstm.proj_size:
        return lstm
    return from_float_unobserved(QuantizableLSTM.from_float, lstm).train(lstm.training)
