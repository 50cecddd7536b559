"""Budgets for a model file edgeship did not make (`edgeship bench MODEL --budgets FILE`): a
recipe's `[[budgets]]`, or any TOML with only those tables, validated like a recipe's. A model
file has no float model and no baseline beside it, so only what the file and its benchmark say
is checked (size, latency, peak RSS); the rest is named as not checked, never passed silently."""

from __future__ import annotations

from pathlib import Path

from pydantic import TypeAdapter, ValidationError

from edgeship.config import read_toml, validation_problems
from edgeship.errors import UserError
from edgeship.recipe import Budget
from edgeship.targets import TARGETS, Format

# per-benchmark limit → (what it limits, how to read it off a benchmark)
BENCHMARK_LIMITS = {
    "max_latency_p50_ms": ("p50 latency ms", lambda b: b.latency_ms and b.latency_ms.p50),
    "max_latency_p90_ms": ("p90 latency ms", lambda b: b.latency_ms and b.latency_ms.p90),
    "max_peak_rss_mb": ("peak RSS MB", lambda b: b.peak_rss_mb)}
MEASURABLE = ("max_size_mb", *BENCHMARK_LIMITS)


def read_budgets(path: Path) -> list[Budget]:
    data = read_toml(path, "budgets file")
    raw = data.get("budgets")
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{path}: no [[budgets]] tables (a recipe's, or a TOML file with only those)")
    try:
        return TypeAdapter(list[Budget]).validate_python(raw)
    except ValidationError as e:
        raise UserError(f"{path}: budgets{validation_problems(e, Budget)[0]}") from None


def _applies(budget: Budget, device: str, fmt: Format) -> bool:
    """A budget for every device or naming this one, and for every target or naming a target of
    the file's format (a budget for executorch-xnnpack applies to a .pte)."""
    if budget.devices and device not in budget.devices:
        return False
    return not budget.targets or any(TARGETS[t].format == fmt for t in budget.targets)


def file_limits(budgets: list[Budget], device: str, fmt: Format) -> tuple[dict[str, float], list[str]]:
    """The tightest value of each measurable limit among the budgets that apply, and the names
    of the limits that apply but cannot be checked on a bare file."""
    applicable = [b for b in budgets if _applies(b, device, fmt)]
    limits = tightest(*({n: v for n, v in b.limits().items() if n in MEASURABLE} for b in applicable))
    unchecked = {n for b in applicable for n in b.limits() if n not in MEASURABLE}
    unchecked |= {"max_regression"} if any(b.max_regression for b in applicable) else set()
    return limits, sorted(unchecked)


def tightest(*limit_sets: dict[str, float]) -> dict[str, float]:
    merged: dict[str, float] = {}
    for limits in limit_sets:
        for name, value in limits.items():
            merged[name] = min(value, merged.get(name, value))
    return merged
