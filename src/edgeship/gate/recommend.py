"""What to ship on each device: the fastest artifact that meets every budget, or the plain
statement that none does and which budget came closest.

The rule: on each device, the candidates are the artifacts (int8 and fp32 alike) that exported,
verified and were benchmarked there. A candidate meets every budget when each limit of each budget
that concerns it passes: a budget that names `targets` concerns those; one that names none concerns
every candidate — an fp32 twin shipped instead of its int8 target must fit the same release limits.
Per-device limits count on their own device only. Among the candidates that meet every budget the
one with the lowest p50 latency is recommended. When none does, the closest failed limit is the one
with the smallest excess relative to its limit (8% over a size limit is closer than 20% over a
latency limit). An int8 artifact notably worse than the float model that no accuracy budget
limits (gate/notable.py) is never recommended, and the statement says it was left out."""

from __future__ import annotations

from edgeship.gate.budgets import Check, Outcome, checks, concerns
from edgeship.gate.notable import notably_worse
from edgeship.recipe import Budget
from edgeship.report.schema import Artifact, ClosestBudget, Recommendation, Report


def devices(report: Report, emulated: bool = True) -> list[str]:
    """The run's devices, then any other a benchmark names, each once, in order; without the
    emulated ones when `emulated` is False (nothing is recommended for an emulator)."""
    names = [d.name for d in report.devices]
    names += [b.device for a in report.artifacts for b in a.benchmarks]
    skip = set() if emulated else {d.name for d in report.devices if d.emulated}
    return [n for n in dict.fromkeys(names) if n not in skip]


def recommendations(report: Report, concerning: list[Check]) -> list[Recommendation]:
    """One per device, from every check of the budgets on the artifacts they concern."""
    every = [c for c in concerning if c.outcome is not Outcome.SKIPPED]
    return [_for_device(device, report, every) for device in devices(report, emulated=False)]


def recommend(budgets: list[Budget], report: Report, baseline: Report | None = None) -> list[Recommendation]:
    return recommendations(report, list(checks(budgets, report, baseline, scope=concerns)))


def _for_device(device: str, report: Report, every: list[Check]) -> Recommendation:
    measured: list[tuple[float, Artifact]] = []
    for a in report.artifacts:
        bench = next((b for b in a.benchmarks if b.device == device), None)
        if a.status == "ok" and bench is not None and bench.status == "ok" and bench.latency_ms:
            measured.append((bench.latency_ms.p50, a))
    if not measured:
        return Recommendation(device=device, target=None, candidates=0, meeting=0,
                              statement=f"{device}: no artifact was measured on this device")
    failed = [c for c in every if not c.passed and c.device in (None, device)]
    failing_targets = {c.target for c in failed}
    worse = notably_worse(report)
    meeting = sorted((p50, a.target) for p50, a in measured if a.target not in failing_targets | set(worse))
    left_out = "".join(f"; not {t}, {by} worse than the float model" for t, by in sorted(worse.items())
                       if any(a.target == t for _, a in measured) and t not in failing_targets)
    if meeting:
        p50, target = meeting[0]
        return Recommendation(
            device=device, target=target, p50_ms=p50, candidates=len(measured), meeting=len(meeting),
            statement=f"{device}: ship {target} (p50 {p50:.3f} ms), the fastest of the "
                      f"{len(meeting)} artifacts that meet every budget ({len(measured)} measured{left_out})")
    candidates = {a.target for _, a in measured}
    if not any(c.target in candidates for c in failed):  # every one is notably worse, none over budget
        return Recommendation(device=device, target=None, candidates=len(measured), meeting=0,
                              statement=f"{device}: no artifact to ship{left_out}")
    best = min((c for c in failed if c.target in candidates), key=lambda c: c.excess)
    excess = "not measured" if best.excess == float("inf") else f"{best.excess:.1%} past its limit"
    return Recommendation(
        device=device, target=None, candidates=len(measured), meeting=0,
        closest=ClosestBudget(target=best.target, limit_name=best.limit_name, message=best.message,
                              excess=None if best.excess == float("inf") else best.excess),
        statement=f"{device}: no artifact meets every budget; the closest to it: {best.message} "
                  f"({excess})")
