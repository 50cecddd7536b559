"""Quantization flows: how a float model is prepared (observers or fake-quant), switched between
training and evaluation, and converted to int8 for one family of kernels.

Two flows exist in PyTorch today and edgeship needs both: torch.ao's FX graph mode (fx.py) is the
path to int8 TorchScript (fbgemm, qnnpack); torchao's PT2E (pt2e.py) is the path to ExecuTorch, and
fine-tunes for ONNX Runtime, whose own quantizer makes the QDQ graph at export. flows.py finds the
one a target names.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass

from torch import nn

from edgeship.targets import Flow


@dataclass(frozen=True)
class QuantSettings:
    """What the recipe chose about how to quantize, the same for every flow."""

    observer: str | None = None  # minmax, moving_average_minmax, histogram; None: the flow's own
    per_channel: bool = True
    float_layers: frozenset[str] = frozenset()  # module names left in float

    def and_float(self, names) -> QuantSettings:
        """These settings with `names` float too: the recipe's float layers stay float whatever a
        probe or the flow adds."""
        return dataclasses.replace(self, float_layers=self.float_layers | frozenset(names))


class QuantFlow(ABC):
    flow: Flow
    # True: `convert` gives a float model (with the fine-tuned weights) and the target's format
    # quantizes it at export, calibrating in its own runtime
    quantizes_at_export: bool = False

    def __init__(self, settings: QuantSettings = QuantSettings()) -> None:
        self.settings = settings
        # {module name: why} for the layers the last `capture` found it must leave float (FX: those
        # it cannot trace); the recipe-independent ones are float_layers.FLOAT_REQUIRED
        self.untraceable: dict[str, str] = {}
        # where the ops are that the last `prepare_captured` left float because an attention
        # mask's huge values reach a softmax through them (mask_paths.py)
        self.float_for_masks: list[str] = []

    def capture(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        """The graph this flow quantizes; reusable by many prepare_captured calls."""
        return model

    @abstractmethod
    def prepare_captured(self, captured: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        """A copy of the captured graph with observers (PTQ) or fake-quant (QAT) inserted."""

    def prepare(self, model: nn.Module, example_inputs: tuple, *, qat: bool) -> nn.Module:
        return self.prepare_captured(self.capture(model, example_inputs, qat=qat), example_inputs, qat=qat)

    def restore(self, captured: nn.Module, example_inputs: tuple, state: dict, *, qat: bool) -> nn.Module:
        """A prepared graph holding `state` (a prepared graph's state_dict), in eval form as
        calibration leaves it. Raises RuntimeError when `state` does not fit the graph."""
        prepared = self.prepare_captured(captured, example_inputs, qat=qat)
        prepared.load_state_dict(state)
        self.set_eval(prepared)
        return prepared

    @abstractmethod
    def set_train(self, prepared: nn.Module) -> None: ...

    @abstractmethod
    def set_eval(self, prepared: nn.Module) -> None: ...

    @abstractmethod
    def convert(self, prepared: nn.Module) -> nn.Module:
        """The int8 model, in eval mode. `prepared` is left as it was."""

    def int8_in_pytorch(self, prepared: nn.Module) -> nn.Module:
        """The int8 model as PyTorch runs it, for probes that score int8 before any export."""
        return self.convert(prepared)

    @abstractmethod
    def freeze_bn(self, prepared: nn.Module) -> None:
        """Batch norm stops updating its statistics; training goes on."""

    @abstractmethod
    def freeze_observers(self, prepared: nn.Module) -> None:
        """Quantization ranges stop moving; fake quantization goes on."""

    def engine(self):
        """Context in which the converted model must be built and run."""
        return nullcontext()
