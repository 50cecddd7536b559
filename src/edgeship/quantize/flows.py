"""The quantization flow each target names, by its Flow."""

from __future__ import annotations

from edgeship.quantize.flow import QuantFlow, QuantSettings
from edgeship.quantize.fx import FxFlow
from edgeship.quantize.pt2e import OrtQdqFlow, Pt2eXnnpackFlow
from edgeship.targets import Flow


def flow_for(flow: Flow, settings: QuantSettings = QuantSettings()) -> QuantFlow:
    if flow is Flow.PT2E_XNNPACK:
        return Pt2eXnnpackFlow(settings)
    if flow is Flow.ORT_QDQ:
        return OrtQdqFlow(settings)
    engines = {Flow.FX_FBGEMM: "fbgemm", Flow.FX_QNNPACK: "qnnpack"}
    if flow not in engines:
        raise KeyError(f"unknown flow {flow!r}; known: {', '.join(f.value for f in Flow)}")
    return FxFlow(flow, engines[flow], settings)
