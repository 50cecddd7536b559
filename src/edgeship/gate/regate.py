"""`edgeship gate REPORT`: the verdict of an existing report again, with its own budgets or a
recipe's, optionally against a baseline report. Nothing is re-run; nothing is written unless asked."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgeship.gate.budgets import Check, Outcome, budgets_of, checks, evaluate, exit_code
from edgeship.recipe import Budget, load_recipe
from edgeship.report.schema import Report


@dataclass(frozen=True)
class Regated:
    report: Report  # a copy of the input with gate, recommendations, exit_code (and budgets) new
    budgets: list[Budget]
    checks: list[Check]
    summary: str  # one line: how many checks, from where, with or without a baseline

    def write(self, report_path: Path) -> list[Path]:
        """Rewrite the report and the report.md, junit.xml and report.html beside it."""
        from edgeship.report.html import write_html
        from edgeship.report.junit import write_junit
        from edgeship.report.writers import write_json, write_markdown

        folder = report_path.parent
        paths = [report_path, folder / "report.md", folder / "junit.xml", folder / "report.html"]
        write_json(self.report, paths[0])
        write_markdown(self.report, paths[1])
        write_junit(self.report, self.checks, paths[2])
        write_html(self.report, self.budgets, paths[3])
        return paths


def regate(report: Report, recipe_path: Path | None = None, baseline: Report | None = None) -> Regated:
    from edgeship.report.recommend import recommend

    if recipe_path is not None:
        budgets = list(load_recipe(recipe_path).budgets)
        source = f"recipe {recipe_path}"
    else:
        budgets = budgets_of(report)
        source = "the report"
    new = report.model_copy(deep=True)
    new.budgets = [b.model_dump(mode="json", exclude_none=True) for b in budgets]
    found = list(checks(budgets, new, baseline))
    new.gate = evaluate(budgets, new, baseline)
    new.recommendations = recommend(budgets, new, baseline)
    new.exit_code = exit_code(new)
    skipped = sum(c.outcome is Outcome.SKIPPED for c in found)
    summary = f"{len(found)} checks of {len(budgets)} budgets from {source}"
    if not budgets:
        summary = f"no budgets in {source}: nothing to check"
    elif skipped:
        summary += f"; {skipped} max_regression checks not evaluated: no --baseline"
    return Regated(new, budgets, found, summary)
