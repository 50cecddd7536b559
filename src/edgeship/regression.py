"""Regression expressions: limits relative to a baseline report, in the pytest-benchmark
`--benchmark-compare-fail` form `metric:amount`.

>>> parse("median:5%")
Regression(metric=<Metric.MEDIAN: 'median'>, amount=5.0, unit='%', text='median:5%')
>>> parse("accuracy:-0.5").allowed(0.9960)  # points: an accuracy fraction may fall to 0.991
0.991
>>> parse("p90:0.2ms").allowed(1.0)
1.2
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum


class Metric(str, Enum):
    MEDIAN = "median"  # latency p50 per device, ms
    P90 = "p90"  # latency p90 per device, ms
    MEAN = "mean"  # mean latency per device, ms
    SIZE = "size"  # size_bytes of the artifact
    PEAK_RSS = "peak_rss"  # peak RSS of the runner per device, MB
    ACCURACY = "accuracy"  # accuracy of the artifact, in points (percent of the test set)

    @property
    def per_device(self) -> bool:
        return self not in (Metric.SIZE, Metric.ACCURACY)


# The units each metric accepts after its amount; "" is a bare number (accuracy points).
_UNITS: dict[Metric, tuple[str, ...]] = {
    Metric.MEDIAN: ("%", "ms"), Metric.P90: ("%", "ms"), Metric.MEAN: ("%", "ms"),
    Metric.SIZE: ("%", "MB"), Metric.PEAK_RSS: ("%", "MB"), Metric.ACCURACY: ("",),
}

ACCEPTED_FORMS = (
    "median:5% or median:0.2ms (p50 latency per device may grow by at most this), "
    "p90:3% or p90:0.2ms, mean:5% or mean:0.2ms, "
    "size:2% or size:0.01MB (size_bytes), peak_rss:10% or peak_rss:5MB, "
    "accuracy:-0.5 (accuracy may drop by at most 0.5 points)"
)

_FORM = re.compile(r"^\s*(?P<metric>[a-z_0-9]+)\s*:\s*(?P<amount>[+-]?\d+(?:\.\d*)?|[+-]?\.\d+)"
                   r"\s*(?P<unit>%|ms|MB|mb)?\s*$")


class ExpressionError(ValueError):
    """An expression that does not parse; the message lists the accepted forms."""


@dataclass(frozen=True)
class Regression:
    metric: Metric
    amount: float  # >= 0 growth for latency, size, RSS; <= 0 points for accuracy
    unit: str  # "%", "ms", "MB" or "" (accuracy points)
    text: str  # as written in the recipe: the name of the check in reports

    @property
    def upper(self) -> bool:
        """True when the measured value must stay at or under the allowed one (all but accuracy)."""
        return self.metric is not Metric.ACCURACY

    def allowed(self, baseline: float) -> float:
        """The worst value that still passes, in the unit of the measured figure (accuracy as a
        fraction, size in bytes, latency in ms, RSS in MB)."""
        if self.metric is Metric.ACCURACY:
            return round(baseline + self.amount / 100, 12)
        if self.unit == "%":
            return baseline * (1 + self.amount / 100)
        if self.metric is Metric.SIZE:  # MB: 10^6 bytes
            return baseline + self.amount * 1e6
        return round(baseline + self.amount, 12)


def _fail(text: str, why: str) -> ExpressionError:
    return ExpressionError(f"{why} in {text!r}; accepted forms: {ACCEPTED_FORMS}")


def parse(text: str) -> Regression:
    match = _FORM.match(text)
    if not match:
        raise _fail(text, "not a 'metric:amount' expression")
    try:
        metric = Metric(match["metric"])
    except ValueError:
        raise _fail(text, f"unknown metric {match['metric']!r}") from None
    unit = match["unit"] or ""
    unit = "MB" if unit == "mb" else unit
    if unit not in _UNITS[metric]:
        expected = " or ".join(repr(u) for u in _UNITS[metric] if u) or "a bare number of points"
        raise _fail(text, f"{metric.value} takes {expected}")
    amount = float(match["amount"])
    if metric is Metric.ACCURACY and amount > 0:
        raise _fail(text, "accuracy takes the drop allowed, written negative (accuracy:-0.5)")
    if metric is not Metric.ACCURACY and amount < 0:
        raise _fail(text, f"{metric.value} takes the growth allowed, not negative")
    return Regression(metric=metric, amount=amount, unit=unit, text=text.strip())
