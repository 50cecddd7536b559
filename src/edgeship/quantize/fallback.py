"""Accuracy-aware fallback: leave the most sensitive layers in float, one at a time, until
post-training int8 accuracy (the recipe's metric) on the calibration split is within the
recipe's drop, in the metric's drop unit (points for top1)."""

from __future__ import annotations

from edgeship.quantize.flow import QuantSettings
from edgeship.quantize.sensitivity import PtqProbe
from edgeship.targets import Flow


def _within(step: dict, max_drop_points: float) -> bool:
    return round(step["drop_points"], 6) <= max_drop_points  # 1.0000000000000009 is one point


def fallback(probe: PtqProbe, flow: Flow, settings: QuantSettings, float_accuracy: float,
             ranking: list[str], max_drop_points: float, max_float_layers: int) -> dict:
    """Leave layers in float, most sensitive first, one at a time, until the drop is within
    `max_drop_points` or `max_float_layers` are float. Never ends with nothing: if the target is
    not met, the best set tried is kept."""
    chosen: list[str] = []
    drop = probe.metric.worsening
    steps = [{"float_layers": [], "drop_points": drop(float_accuracy, probe.accuracy(flow, settings))}]
    for name in ranking:
        if _within(steps[-1], max_drop_points) or len(chosen) >= max_float_layers:
            break
        chosen.append(name)
        accuracy = probe.accuracy(flow, settings.and_float(chosen))
        steps.append({"float_layers": list(chosen), "drop_points": drop(float_accuracy, accuracy)})
    met = [s for s in steps if _within(s, max_drop_points)]
    best = met[0] if met else min(steps, key=lambda s: s["drop_points"])
    return {"flow": flow.value, "max_accuracy_drop": max_drop_points, "met": bool(met),
            "float_layers": best["float_layers"], "drop_points": best["drop_points"], "steps": steps}
