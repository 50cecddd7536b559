"""What changed between two reports A (before) and B (after). Pure: two reports in, tables out.

Per target: size in bytes with the ratio B/A, accuracy with the change in points. Per target and
device: latency p50 and p90 and peak RSS, each with the ratio B/A.

Whether the latency changed is tested on the raw samples, not on summaries: the median ratio B/A
with a 95% bootstrap interval (benchmarks/stats.py). `slower` when the whole interval is above
1, `faster` when below, else `no change`. A mean or a stdev is a poor guide: a few
multi-millisecond outliers in a run of tens of thousands of 0.03 ms calls make the stdev ten
times the whole median shift. Not decided (None) where either run has no samples (a report
written before edgeship kept them, or its samples file is missing) or a benchmark did not run.

`regressions` checks B against A with the gate's own `max_regression` rules (gate/budgets.py), so
`compare --fail-on median:5%` and `gate --baseline` with that budget agree.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeship.benchmarks.stats import MedianRatio, median_ratio
from edgeship.gate.budgets import Check, checks
from edgeship.recipe import Budget
from edgeship.report.schema import TOP1, Artifact, Benchmark, MetricInfo, Report


@dataclass(frozen=True)
class Change:
    a: float | None
    b: float | None

    @property
    def ratio(self) -> float | None:
        """B/A, or None when either side is missing or A is 0."""
        return None if self.a is None or self.b is None or self.a == 0 else self.b / self.a

    @property
    def delta(self) -> float | None:
        return None if self.a is None or self.b is None else self.b - self.a


@dataclass(frozen=True)
class DeviceDiff:
    device: str
    p50_ms: Change
    p90_ms: Change
    peak_rss_mb: Change
    p50_test: MedianRatio | None  # from the raw samples; None when not decidable

    @property
    def verdict(self) -> str | None:
        return None if self.p50_test is None else self.p50_test.verdict


@dataclass(frozen=True)
class TargetDiff:
    target: str
    status: tuple[str, str]  # the artifact's status in A and B
    size_bytes: Change
    accuracy: Change  # the metric's values (top1: fractions; points = delta * 100)
    devices: list[DeviceDiff]


@dataclass(frozen=True)
class Comparison:
    recipe_names: tuple[str, str]
    targets: list[TargetDiff]  # the targets both reports have, in B's order
    only_in_a: list[str]
    only_in_b: list[str]
    metrics: tuple[MetricInfo, MetricInfo] = (TOP1, TOP1)  # what A's and B's accuracy are


def _latency(bench: Benchmark | None, key: str) -> float | None:
    return getattr(bench.latency_ms, key) if bench and bench.status == "ok" and bench.latency_ms else None


def latency_test(a: Benchmark | None, b: Benchmark | None) -> MedianRatio | None:
    """B's median latency over A's from their raw samples, where both ran, were valid and kept
    their samples."""
    usable = all(x is not None and x.status == "ok" and x.valid is not False and x.samples_ms
                 for x in (a, b))
    if not usable:
        return None
    try:
        return median_ratio(a.samples_ms, b.samples_ms)
    except ValueError:  # samples that are not positive latencies: nothing to test
        return None


def _device(device: str, a: Benchmark | None, b: Benchmark | None) -> DeviceDiff:
    p50 = Change(_latency(a, "p50"), _latency(b, "p50"))
    rss = Change(a.peak_rss_mb if a else None, b.peak_rss_mb if b else None)
    return DeviceDiff(device, p50, Change(_latency(a, "p90"), _latency(b, "p90")), rss,
                      latency_test(a, b))


def _target(a: Artifact, b: Artifact) -> TargetDiff:
    benches_a = {x.device: x for x in a.benchmarks}
    benches_b = {x.device: x for x in b.benchmarks}
    devices = list(dict.fromkeys([*benches_b, *benches_a]))
    return TargetDiff(a.target, (a.status, b.status), Change(a.size_bytes, b.size_bytes),
                      Change(a.accuracy, b.accuracy),
                      [_device(d, benches_a.get(d), benches_b.get(d)) for d in devices])


def compare(a: Report, b: Report) -> Comparison:
    old = {x.target: x for x in a.artifacts}
    new = {x.target: x for x in b.artifacts}
    return Comparison(
        recipe_names=(a.recipe_name, b.recipe_name),
        targets=[_target(old[t], new[t]) for t in new if t in old],
        only_in_a=[t for t in old if t not in new], only_in_b=[t for t in new if t not in old],
        metrics=(a.metric, b.metric))


def regressions(a: Report, b: Report, expressions: list[str]) -> list[Check]:
    """B checked against A with `max_regression` expressions (`median:5%`, `size:2%`, ...) on
    every target both reports have, by the gate's own rules. A bad expression: ValueError naming
    the accepted forms; reports that cannot be compared so: UserError (as `gate --baseline`)."""
    shared = [t.target for t in b.artifacts if any(x.target == t.target for x in a.artifacts)]
    if not shared:
        return []
    budget = Budget(targets=shared, max_regression=expressions)
    return list(checks([budget], b, a))


def notes(comparison: Comparison) -> list[str]:
    """What the table cannot show: other recipes, targets in one report only, failed artifacts."""
    a_name, b_name = comparison.recipe_names
    out = [f"the reports are of different recipes: A {a_name!r}, B {b_name!r}"] if a_name != b_name else []
    a_metric, b_metric = (m.name for m in comparison.metrics)
    out += [f"the reports measure different metrics: A {a_metric!r}, B {b_metric!r}; the accuracy "
            f"change compares unlike figures"] if a_metric != b_metric else []
    out += [f"{t} is only in A" for t in comparison.only_in_a]
    out += [f"{t} is only in B" for t in comparison.only_in_b]
    out += [f"{t.target} is {t.status[0]} in A and {t.status[1]} in B"
            for t in comparison.targets if t.status != ("ok", "ok")]
    return out
