"""`edgeship gate REPORT`: the verdict of an existing report again, with its own budgets or a
recipe's, optionally against a baseline report. Nothing is re-run; nothing is written here (the
CLI publishes the result when asked)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeship.errors import UserError
from edgeship.gate.budgets import Outcome, budgets_of
from edgeship.gate.decide import Decision, decide
from edgeship.recipe import Budget, load_recipe
from edgeship.report.schema import Report


@dataclass(frozen=True)
class Regated:
    report: Report  # a copy of the input with gate, recommendations, exit_code (and budgets) new
    decision: Decision
    summary: str  # one line: how many checks, from where, with or without a baseline


def regate(report: Report, recipe_path: Path | None = None, baseline: Report | None = None) -> Regated:
    if recipe_path is not None:
        recipe = load_recipe(recipe_path)
        if recipe.data.metric != report.metric.name:  # its budgets are in another metric's units
            raise UserError(f"{recipe_path}: data.metric {recipe.data.metric!r}, but the report's "
                            f"figures are {report.metric.name!r}: its budgets do not apply")
        budgets, source = list(recipe.budgets), f"recipe {recipe_path}"
    else:
        budgets, source = budgets_of(report), "the report"
    check_scope(budgets, report, source)
    decision = decide(budgets, report, baseline)
    skipped = sum(c.outcome is Outcome.SKIPPED for c in decision.checks)
    summary = (f"{len(decision.checks)} check{'s' * (len(decision.checks) != 1)} of {len(budgets)} "
               f"budget{'s' * (len(budgets) != 1)} from {source}")
    if not budgets:
        summary = f"no budgets in {source}: nothing to check"
    elif skipped:
        summary += f"; {skipped} max_regression checks not evaluated: no --baseline"
    return Regated(decision.applied_to(report), decision, summary)


def check_scope(budgets: list[Budget], report: Report, source: str) -> None:
    """A budget naming a target or a device the report has no figures for would check nothing
    and pass: UserError naming the budget and what the report has."""
    targets = [a.target for a in report.artifacts]
    devices = [d.name for d in report.devices]
    for i, budget in enumerate(budgets):
        for key, named, present in (("targets", budget.targets, targets),
                                    ("devices", budget.devices, devices)):
            absent = [n for n in named or [] if n not in present]
            if absent:
                raise UserError(f"{source}: budgets[{i}].{key}: {', '.join(map(repr, absent))} not "
                                f"in the report; its {key}: {', '.join(present) or 'none'}")
