"""An int8 artifact notably worse than the float model, where no budget speaks of accuracy: said
under the table (report/findings.py) and never recommended (recommend.py), budget or not."""

from __future__ import annotations

import math

from edgeship.report.schema import Report

# int8 usually costs well under a point of top-1 and a few percent of other metrics: past these,
# a kernel or a flow is more often at fault than rounding (a kernel bug once cost 88 points).
NOTABLE_TOP1_DROP = 1.0  # points
NOTABLE_WORSENING = 0.10  # of the float model's value, for metrics other than top1
ACCURACY_LIMITS = ("max_accuracy_drop", "min_accuracy", "min_metric", "max_metric")


def accuracy_budgeted(report: Report, target: str) -> bool:
    """A budget of the run limits the target's metric against a fixed figure."""
    return any(any(b.get(limit) is not None for limit in ACCURACY_LIMITS)
               and (b.get("targets") is None or target in b["targets"]) for b in report.budgets)


def notably(report: Report, value: float, worse: bool = True) -> str | None:
    """How much worse (or better) than the float model `value` is, `12.50 points` or `30%`, when
    that is past NOTABLE_TOP1_DROP points of top1 or NOTABLE_WORSENING of float's value; else None."""
    metric, reference = report.metric, report.float.accuracy
    change = metric.worsening(reference, value) * (1 if worse else -1)
    if metric.name == "top1":  # rounded: 0.9457 - 0.9357 is 1.0000000000000009 points
        return f"{change:.2f} points" if round(change, 9) > NOTABLE_TOP1_DROP else None
    share = change / metric.drop_scale / abs(reference) if reference else math.inf
    return f"{share:.0%}" if round(share, 9) > NOTABLE_WORSENING else None


def notably_worse(report: Report) -> dict[str, str]:
    """{target: how much worse} for each int8 artifact notably worse than the float model that no
    accuracy budget limits (one that does is the gate's to judge)."""
    if report.float is None:
        return {}
    out = {}
    for a in report.artifacts:
        if a.precision == "int8" and a.accuracy is not None and not accuracy_budgeted(report, a.target):
            by = notably(report, a.accuracy)
            if by is not None:
                out[a.target] = by
    return out
