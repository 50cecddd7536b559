"""The typed values the stages pass along, in the order the pipeline makes them:

    Loaded ─► FloatModel ─► FloatLayers ─► Calibrated ─► (fine-tuned in place) ─► Converted
                       └──────────────────── DynamicModel (per dynamic target) ──┘
    ─► Source (per target) ─► Exported ─► Verified ─► benchmarks ─► Report

Per-flow and per-target stages return Results: what worked, and for each target that failed in
that stage, why. A failed target is carried no further; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch
from torch import nn

from edgeship.data import Arrays, Splits
from edgeship.formats import ExportedArtifact, Exporter
from edgeship.quantize.flow import QuantFlow
from edgeship.quantize.remake import Remake
from edgeship.report.schema import (FallbackResult, Parity, PruneResult, QatHistory,
                                    QuantizationDetails, SensitivityResult)
from edgeship.targets import Flow

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class Results(Generic[K, V]):
    ok: dict[K, V] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # target name: why


@dataclass(frozen=True)
class Loaded:
    """The user's model (trained when the recipe trains it, in eval mode) and data."""

    model: nn.Module
    splits: Splits
    examples: tuple[torch.Tensor, ...]  # real test samples in the recipe's shapes
    test: Arrays  # the test split, stacked: what every artifact answers
    key: str  # stage-cache key of the float model: its recipe sections, weights, data, versions
    train_loss: float | None
    epoch_losses: tuple[float, ...] = ()  # float training's mean loss per epoch, when it trained
    qat_teacher: nn.Module | None = None  # QAT's separate teacher; None: the float model teaches
    arrays: dict[str, Arrays] = field(default_factory=dict)  # every split stacked, by name


@dataclass(frozen=True)
class FloatModel:
    """The float model every int8 figure is compared with (pruned, when the recipe prunes)."""

    module: nn.Module
    key: str  # stage-cache key: everything it was made from
    accuracy: float  # the recipe's metric on the test split
    logits: np.ndarray  # its answers on the test split
    prune: PruneResult | None = None
    warning: str | None = None  # not_learning's line, when it has one


@dataclass(frozen=True)
class FloatLayers:
    """Layers each flow leaves float after sensitivity analysis and accuracy-aware fallback."""

    per_flow: dict[Flow, list[str]] = field(default_factory=dict)
    sensitivity: list[SensitivityResult] = field(default_factory=list)
    fallback: list[FallbackResult] = field(default_factory=list)


@dataclass(frozen=True)
class Calibrated:
    """One flow's prepared graph with calibrated ranges. QAT fine-tunes `prepared` in place."""

    flow: QuantFlow
    prepared: nn.Module
    key: str
    fresh: bool  # calibrated in this run; False: the (fine-tuned) state came from the cache
    required_float_layers: dict[str, str]  # layers the flow cannot make int8, and why
    qat_distributed: dict | None = None  # how a distributed fine-tune ran
    qat_history: QatHistory | None = None  # QAT's scores per epoch, and which state it kept


@dataclass(frozen=True)
class Converted:
    """One flow's int8 PyTorch model, the reference its targets' artifacts are compared with. For
    a flow whose targets' runtime quantizes at export: the float model with the fine-tuned
    weights, and the exporter that quantizes it."""

    module: nn.Module | None  # None: a Ray task converted it, and `remake` makes it again
    reference: np.ndarray  # its answers on the test split
    key: str
    quantization: QuantizationDetails
    export: Exporter | None = None  # None: the target format's own exporter
    remake: Remake | None = None  # with a cluster: how a Ray task makes `module` again


@dataclass(frozen=True)
class Source:
    """What one target's artifact is made from, and what its runtime's answers must match."""

    module: nn.Module | None  # None: a Ray task converted it, and `remake` makes it again
    export: Exporter
    reference_name: str
    reference: np.ndarray  # `module`'s answers on the test split
    key: str
    quantization: QuantizationDetails | None = None  # int8 targets
    # the reference is the quantized PyTorch model: the artifact runs the same int8 arithmetic
    int8_reference: bool = False
    remake: Remake | None = None  # with a cluster, where `module` does not pickle: how a task makes it

    def model(self) -> nn.Module:
        """The model the artifact is made from (converted again when a Ray task converted it)."""
        return self.module if self.module is not None else self.remake.module()


@dataclass(frozen=True)
class Exported:
    artifact: ExportedArtifact
    sha256: str


@dataclass(frozen=True)
class Verified:
    accuracy: float
    parity: Parity
