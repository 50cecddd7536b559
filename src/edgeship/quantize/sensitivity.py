"""Where accuracy is lost, layer by layer (and the probe fallback.py uses too). Accuracy is the
recipe's metric, and a drop how much worse it got (edgeship/metrics.py): points for top1.

It measures post-training quantization in PyTorch on the calibration split: decisions are taken
on data the model did not train on, and the test split stays unseen until artifacts are verified.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torch.utils.data import Dataset

from edgeship.data import Arrays
from edgeship.metrics import TaskMetric, builtin
from edgeship.quantize.evaluate import logits
from edgeship.quantize.float_layers import within
from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.flows import flow_for
from edgeship.quantize.calibrate import calibrate
from edgeship.targets import Flow

QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def quantizable_layers(model: nn.Module, float_layers: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(module name, type name) of every conv and linear layer, in model order, but those in or
    under `float_layers`: quantizing them is not on offer, so their row would measure nothing."""
    return [(name, type(m).__name__) for name, m in model.named_modules() if isinstance(m, QUANTIZABLE)
            and not within(name, float_layers)]


@dataclass
class PtqProbe:
    """Post-training quantizes `model` with one flow and a set of float layers; returns its metric."""

    model: nn.Module
    examples: tuple
    calibration: Dataset
    validation: Arrays
    batches: int
    batch_size: int
    metric: TaskMetric = field(default_factory=lambda: builtin("top1"))
    _captured: dict = field(default_factory=dict)  # one capture per flow: exports are slow

    def float_accuracy(self) -> float:
        return self.metric.score(logits(self.model, self.validation), self.validation.labels)

    def accuracy(self, flow: Flow, settings: QuantSettings) -> float:
        qf = flow_for(flow, settings)
        if flow not in self._captured:
            self._captured[flow] = qf.capture(self.model, self.examples, qat=False)
        prepared = calibrate(qf, self.model, self.examples, self.calibration, batches=self.batches,
                             batch_size=self.batch_size, qat=False, captured=self._captured[flow])
        converted = qf.int8_in_pytorch(prepared)
        with qf.engine():
            return self.metric.score(logits(converted, self.validation), self.validation.labels)


def sensitivity(probe: PtqProbe, flow: Flow, settings: QuantSettings, float_accuracy: float) -> list[dict]:
    """Per layer: the drop (in the metric's drop unit) with only that layer quantized, and with
    all but that layer quantized. Worst first, by the first: it finds the layers that cannot be
    quantized at all. A layer `settings` keeps float (the recipe's float_layers) gets no row."""
    layers = quantizable_layers(probe.model, settings.float_layers)
    names = {name for name, _ in layers}
    rows = []
    for name, kind in layers:
        only = probe.accuracy(flow, settings.and_float(names - {name}))
        all_but = probe.accuracy(flow, settings.and_float({name}))
        rows.append({"layer": name, "type": kind,
                     "only_this_quantized_drop_points": probe.metric.worsening(float_accuracy, only),
                     "all_but_this_quantized_drop_points": probe.metric.worsening(float_accuracy, all_but)})
    return sorted(rows, key=lambda r: -r["only_this_quantized_drop_points"])
