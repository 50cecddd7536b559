"""Inside edgeship's calls, the libraries' own notices are silenced and the user's are not."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from edgeship.quiet import quiet_libraries


class _BranchOnWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(4, 4, batch_first=True)

    def forward(self, x):
        if x.size(-1) > 2:  # a branch on a size: TorchScript's trace keeps the one it took
            x = x * 2
        return self.lstm(x)[0]


def test_tracing_warns_about_the_models_code_only():
    from torch.ao.quantization import quantize_dynamic

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            model = quantize_dynamic(_BranchOnWidth().eval(), {nn.LSTM}, dtype=torch.qint8)
            torch.jit.trace(model, (torch.randn(1, 3, 4),))
    # torch's dynamic int8 LSTM checks its input's width twice while traced: silenced
    assert {(type(w.message).__name__, w.filename) for w in seen} == {("TracerWarning", __file__)}, \
        [(w.filename, w.lineno, str(w.message)) for w in seen]
