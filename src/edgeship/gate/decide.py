"""The gate's decision on a report: its verdict, the checks behind it, what to ship on each device
and the exit code. One decision serves `edgeship run` and `edgeship gate`; the checks are made once.

>>> from edgeship.recipe import Budget
>>> from edgeship.report.schema import Report
>>> empty = Report(edgeship_version="0.1.0", recipe_name="r", recipe_sha256="0", environment={})
>>> decision = decide([Budget(max_size_mb=1)], empty)
>>> decision.gate.passed, decision.checks, decision.exit_code
(True, [], 0)
>>> decision.applied_to(empty).budgets
[{'max_size_mb': 1.0}]
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeship.gate.budgets import Check, applies, checks, concerns, exit_code, gate_of
from edgeship.gate.recommend import recommendations
from edgeship.recipe import Budget
from edgeship.report.schema import Gate, Recommendation, Report


@dataclass(frozen=True)
class Decision:
    budgets: list[Budget]
    gate: Gate
    checks: list[Check]  # the gate's checks, every outcome: what junit.xml shows
    recommendations: list[Recommendation]
    exit_code: int

    def applied_to(self, report: Report) -> Report:
        """A copy of `report` with this decision in it (and the budgets it was made with)."""
        decided = report.model_copy(deep=True)
        decided.budgets = [b.model_dump(mode="json", exclude_none=True) for b in self.budgets]
        decided.gate = self.gate.model_copy(deep=True)
        decided.recommendations = [r.model_copy(deep=True) for r in self.recommendations]
        decided.exit_code = self.exit_code
        return decided


def decide(budgets: list[Budget], report: Report, baseline: Report | None = None) -> Decision:
    """Check every budget once, on every artifact it concerns (the recommendation's scope); the
    gate's checks are those of them on artifacts the budget applies to (named, or int8)."""
    concerning = list(checks(budgets, report, baseline, scope=concerns))
    artifacts = {a.target: a for a in report.artifacts}
    gated = [c for c in concerning if applies(budgets[c.budget], artifacts[c.target])]
    gate = gate_of(gated)
    return Decision(budgets=list(budgets), gate=gate, checks=gated,
                    recommendations=recommendations(report, concerning),
                    exit_code=exit_code(report, gate))
