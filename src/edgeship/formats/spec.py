"""FormatSpec: everything edgeship knows about one artifact format, in one place. Targets name a
format; the pipeline, the verify and benchmark stages and the device checks ask its spec."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from torch import nn

from edgeship.engines import quantized_engine
from edgeship.formats.artifact import Exporter
from edgeship.targets import Format, Target

if TYPE_CHECKING:
    import numpy as np

    from edgeship.quantize.flow import QuantSettings


class StaticQuantizer(Protocol):
    """Where the format's own runtime quantizes (a flow with quantizes_at_export): from the
    calibration inputs, the recipe's settings, how many samples to calibrate on and whether every
    device is ARM64, the exporter that quantizes the float model, and what it chose, for the
    report."""

    def __call__(self, calibration: tuple[np.ndarray, ...], settings: QuantSettings, samples: int, *,
                 arm: bool = False) -> tuple[Exporter, dict]: ...


@dataclass(frozen=True)
class DynamicModel:
    """What a dynamically quantized target's artifact is made from."""

    module: nn.Module  # exported by `export`; its answers are the artifact's reference
    export: Exporter
    reference: str  # what the artifact's answers are compared with, in the report's words


@dataclass(frozen=True)
class FormatSpec:
    format: Format
    suffix: str  # the runner (benchmarks/runner.py, standalone) picks its loader by it
    runtime_packages: tuple[str, ...]  # what the runner imports on a device to run it
    export: Exporter  # a float or statically quantized PyTorch model to an artifact
    # (target, float model, example inputs, module names to keep float)
    quantize_dynamic: Callable[[Target, nn.Module, tuple, frozenset[str]], DynamicModel]
    dynamic_layers: str  # what its dynamic quantization quantizes, for the report
    dynamic_per_channel: bool  # whether its dynamic path scales weights per channel (its runtime's default)
    # {module type: why} for layers its runtime cannot run in any precision
    unsupported_layers: Mapping[type[nn.Module], str]
    # int8 weights are packed for one torch quantized engine: the runner must set it before load
    packs_for_engine: bool = False
    quantize_static: StaticQuantizer | None = None

    def torch_engine(self, target: Target) -> str | None:
        """The torch quantized engine `target`'s artifact is packed for, or None."""
        return target.engine if self.packs_for_engine and target.is_int8 else None

    def runner_args(self, target: Target) -> tuple[str, ...]:
        engine = self.torch_engine(target)
        return ("--engine", engine) if engine else ()

    def running(self, target: Target) -> AbstractContextManager:
        """The context in which `target`'s PyTorch model is built, traced and run."""
        engine = self.torch_engine(target)
        return quantized_engine(engine) if engine else nullcontext()

    def unsupported(self, model: nn.Module) -> dict[str, str]:
        """{module name: reason} for the layers of `model` this format cannot run at all."""
        return {name: self.unsupported_layers[type(m)] for name, m in model.named_modules()
                if type(m) in self.unsupported_layers}
