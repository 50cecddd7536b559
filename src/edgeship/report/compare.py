"""What changed between two reports A (before) and B (after). Pure: two reports in, a table out.

Per target: size in bytes with the ratio B/A, accuracy with the change in points. Per target and
device: latency p50 and p90 and peak RSS, each with the ratio B/A.

Noise rule: a latency change is *beyond the noise* when the medians differ by more than the
larger of the two runs' own standard deviations of latency, |p50_B - p50_A| > max(stdev_A,
stdev_B). A report holds no quartiles, and the stdev is the spread each run itself showed across
its timed iterations; a shift smaller than that spread is within what one run varies by. It is
not decided (None) when either benchmark is missing, failed or was marked not valid.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    noise_ms: float | None  # max(stdev_A, stdev_B)
    beyond_noise: bool | None  # |p50 change| > noise_ms; None when not decidable


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


def _device(device: str, a: Benchmark | None, b: Benchmark | None) -> DeviceDiff:
    p50 = Change(_latency(a, "p50"), _latency(b, "p50"))
    noise = beyond = None
    stdevs = (_latency(a, "stdev"), _latency(b, "stdev"))
    decidable = all(x is not None and x.valid is not False for x in (a, b))
    if decidable and p50.delta is not None and None not in stdevs:
        noise = max(stdevs)
        beyond = abs(p50.delta) > noise
    rss = Change(a.peak_rss_mb if a else None, b.peak_rss_mb if b else None)
    return DeviceDiff(device, p50, Change(_latency(a, "p90"), _latency(b, "p90")), rss, noise, beyond)


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


def _num(value: float | None, spec: str) -> str:
    return "—" if value is None else f"{value:{spec}}"


def _pair(change: Change, spec: str) -> str:
    return f"{_num(change.a, spec)} → {_num(change.b, spec)}"


def _ratio(change: Change) -> str:
    return "—" if change.ratio is None else f"{change.ratio:.3f}x"


HEADERS = ["target", "device", "size bytes A → B", "size B/A", "accuracy B", "Δ pts",
           "p50 ms A → B", "p50 B/A", "beyond noise", "p90 B/A", "peak RSS MB A → B", "RSS B/A"]


def headers(comparison: Comparison) -> list[str]:
    """HEADERS, with the accuracy columns named for B's metric (top1: as always)."""
    metric = comparison.metrics[1]
    if metric.name == "top1":
        return HEADERS
    return [{"accuracy B": f"{metric.name} B", "Δ pts": f"better by ({metric.short_unit})"}.get(h, h)
            for h in HEADERS]


def rows(comparison: Comparison) -> list[list[str]]:
    """One row per target and device, the columns of HEADERS."""
    out, metric = [], comparison.metrics[1]
    for t in comparison.targets:
        better = None if t.accuracy.delta is None else -metric.worsening(t.accuracy.a, t.accuracy.b)
        size = [_pair(t.size_bytes, "d"), _ratio(t.size_bytes), metric.format(t.accuracy.b),
                _num(better, "+.2f" if metric.drop_scale == 100 else "+.4g")]
        for d in t.devices or [None]:
            if d is None:
                out.append([t.target, "—", *size] + ["—"] * 6)
                continue
            noise = "—" if d.beyond_noise is None else \
                f"{'yes' if d.beyond_noise else 'no'} (±{d.noise_ms:.3f})"
            out.append([t.target, d.device, *size, _pair(d.p50_ms, ".3f"), _ratio(d.p50_ms), noise,
                        _ratio(d.p90_ms), _pair(d.peak_rss_mb, ".1f"), _ratio(d.peak_rss_mb)])
    return out


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
