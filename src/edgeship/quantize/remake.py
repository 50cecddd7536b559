"""A converted model made again in another process (a Ray task). torch pickles neither FX's nor
PT2E's GraphModules, so what travels is what the model was converted from: the flow, the float
model with its example inputs, and the prepared graph's state; the other process captures,
prepares, loads that state and converts, as the stage cache's resumed runs do."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from edgeship.quantize.flow import QuantFlow


@dataclass(frozen=True)
class Remake:
    flow: QuantFlow
    model: nn.Module  # the float model the flow captured
    examples: tuple[torch.Tensor, ...]
    state: dict[str, torch.Tensor]  # the prepared graph's, calibrated (and fine-tuned)
    qat: bool  # prepared for QAT (fake-quant) or with observers

    @classmethod
    def of(cls, flow: QuantFlow, model: nn.Module, examples: tuple, prepared: nn.Module, *, qat: bool) -> Remake:
        return cls(flow, model, examples, {k: v.detach().clone() for k, v in prepared.state_dict().items()}, qat)

    def module(self) -> nn.Module:
        """The converted model, as `flow.convert` made it from the prepared graph."""
        captured = self.flow.capture(self.model, self.examples, qat=self.qat)
        return self.flow.convert(self.flow.restore(captured, self.examples, self.state, qat=self.qat))
