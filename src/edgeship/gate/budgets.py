"""Check a report's measured figures against the recipe's budgets. Pure: report in, gate out.

Something a budget needs but the run could not measure (a failed artifact, a benchmark that timed
out or was not valid) is a violation too: a release is never passed on a figure nobody saw."""

from __future__ import annotations

from collections.abc import Iterator

from edgeship.recipe import Budget
from edgeship.report.schema import Artifact, Benchmark, Gate, Report, Violation
from edgeship.targets import get_target

_ARTIFACT_LIMITS = {
    "max_accuracy_drop": ("accuracy drop", "points"),
    "max_size_mb": ("size", "MB"),
}
_DEVICE_LIMITS = {
    "max_latency_p90_ms": ("latency p90", "ms"),
    "max_peak_rss_mb": ("peak RSS", "MB"),
}


def _applies(budget: Budget, artifact: Artifact) -> bool:
    if budget.targets is not None:
        return artifact.target in budget.targets
    return get_target(artifact.target).is_int8


def _artifact_value(name: str, artifact: Artifact, float_accuracy: float | None) -> float | None:
    if name == "max_accuracy_drop":
        if artifact.accuracy is None or float_accuracy is None:
            return None
        return (float_accuracy - artifact.accuracy) * 100
    return None if artifact.size_bytes is None else artifact.size_bytes / 1e6


def _device_value(name: str, bench: Benchmark) -> float | None:
    if name == "max_latency_p90_ms":
        return bench.latency_ms.p90 if bench.latency_ms else None
    return bench.peak_rss_mb


def _violations(index: int, budget: Budget, artifact: Artifact,
                float_accuracy: float | None) -> Iterator[Violation]:
    limits = budget.limits()
    for name, (what, unit) in _ARTIFACT_LIMITS.items():
        if name not in limits:
            continue
        value = _artifact_value(name, artifact, float_accuracy)
        if value is None or value > limits[name]:
            why = f"not measured: the artifact {artifact.status}" if value is None else \
                f"{value:.3f} {unit} > {name} {limits[name]:g}"
            yield Violation(budget=index, target=artifact.target, limit_name=name,
                            limit=limits[name], measured=value, message=f"{artifact.target}: {what} {why}")
    device_limits = {n: v for n, v in limits.items() if n in _DEVICE_LIMITS}
    if not device_limits:
        return
    benches = [b for b in artifact.benchmarks if budget.devices is None or b.device in budget.devices]
    for device in sorted(set(budget.devices or []) - {b.device for b in benches}):
        benches.append(Benchmark(device=device, status="missing", error="no benchmark on this device"))
    for bench in benches:
        for name, limit in device_limits.items():
            what, unit = _DEVICE_LIMITS[name]
            value = _device_value(name, bench)
            if bench.status != "ok":
                why = f"not measured: benchmark {bench.status}"
            elif name == "max_latency_p90_ms" and not bench.valid:
                why = f"benchmark not valid: {'; '.join(bench.invalid_reasons)}"
            elif value is not None and value > limit:
                why = f"{value:.3f} {unit} > {name} {limit:g}"
            else:
                continue
            yield Violation(budget=index, target=artifact.target, device=bench.device, limit_name=name,
                            limit=limit, measured=value,
                            message=f"{artifact.target} on {bench.device}: {what} {why}")


def evaluate(budgets: list[Budget], report: Report) -> Gate:
    float_accuracy = report.float.accuracy if report.float else None
    violations = [v for i, budget in enumerate(budgets) for artifact in report.artifacts
                  if _applies(budget, artifact)
                  for v in _violations(i, budget, artifact, float_accuracy)]
    return Gate(passed=not violations, violations=violations)
