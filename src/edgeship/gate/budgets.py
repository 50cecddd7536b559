"""Check a report's measured figures against the recipe's budgets. Pure: report in, gate out.

`checks` yields every check (budget × target × device × limit) with its outcome; the gate, the
JUnit writer and the recommendation are all built on it (gate.decide runs it once for all three),
so there is one source of truth.

Something a budget needs but the run could not measure (a failed artifact, a benchmark that timed
out or was not valid) is a violation too: a release is never passed on a figure nobody saw.
Limits relative to a baseline report (`max_regression`) are checked only when a baseline is given;
without one they are skipped, never violated."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum

from pydantic import ValidationError

from edgeship.config import validation_problems
from edgeship.errors import ExitCode, UserError
from edgeship.recipe import Budget
from edgeship.regression import Metric, Regression
from edgeship.report.schema import Artifact, Benchmark, Gate, MetricInfo, Report, Violation
from edgeship.targets import get_target


class Outcome(str, Enum):
    PASSED = "passed"
    FAILED = "failed"
    SKIPPED = "skipped"  # a max_regression expression with no baseline report to compare with


@dataclass(frozen=True)
class Check:
    """One limit of one budget on one artifact (and device, for per-device figures)."""

    budget: int  # index in the recipe's [[budgets]]
    target: str
    device: str | None
    limit_name: str  # `max_latency_p90_ms`, or the expression as written (`median:5%`)
    limit: float  # the worst value that passes, in the measured figure's unit
    measured: float | None
    outcome: Outcome
    message: str
    upper: bool = True  # the measured figure must stay at or under the limit (False: at or over)
    baseline: float | None = None

    @property
    def passed(self) -> bool:
        return self.outcome is not Outcome.FAILED

    @property
    def excess(self) -> float:
        """How far past its limit, relative to it (0.08: 8% over); inf when nothing was measured."""
        if self.measured is None or self.outcome is Outcome.SKIPPED:
            return math.inf
        over = self.measured - self.limit if self.upper else self.limit - self.measured
        return over / abs(self.limit) if self.limit else (math.inf if over > 0 else 0.0)

    def violation(self) -> Violation:
        return Violation(budget=self.budget, target=self.target, device=self.device,
                         limit_name=self.limit_name, limit=self.limit, measured=self.measured,
                         message=self.message, baseline=self.baseline)


@dataclass(frozen=True)
class _Figure:
    """A measured figure a limit reads: what it is called in messages, its unit, how to print it."""

    what: str
    unit: str
    spec: str
    per_device: bool
    latency: bool  # a benchmark that is not valid cannot pass a limit on this figure
    read: Callable[[Artifact, Benchmark | None, float | None], float | None]

    def show(self, value: float) -> str:
        return f"{value:{self.spec}}" + (f" {self.unit}" if self.unit else "")


def _latency(key: str) -> Callable:
    return lambda a, b, f: getattr(b.latency_ms, key) if b is not None and b.latency_ms else None


@dataclass(frozen=True)
class _Float:
    """What the metric's figures are read against: the float model's value, and the metric."""

    accuracy: float | None
    metric: MetricInfo


def _drop(a: Artifact, b, ref: _Float | None) -> float | None:
    if a.accuracy is None or ref is None or ref.accuracy is None:
        return None
    return ref.metric.worsening(ref.accuracy, a.accuracy)


def _int8_fraction(a: Artifact, b, f) -> float | None:
    return a.int8_share.macs_fraction if a.int8_share is not None else None


def _emulated_agreement(a: Artifact, b, f) -> float | None:
    """The lowest top-1 agreement with x86 over the emulated devices that ran the artifact; None
    when one of them failed on it, or none ran it."""
    ran = [c for c in a.emulated if c.status != "skipped"]
    if not ran or any(c.status != "ok" or c.top1_agreement is None for c in ran):
        return None
    return min(c.top1_agreement for c in ran)


_SIZE_MB = _Figure("size", "MB", ".3f", False, False,
                   lambda a, b, f: None if a.size_bytes is None else a.size_bytes / 1e6)
_ACCURACY = _Figure("accuracy", "", ".4f", False, False, lambda a, b, f: a.accuracy)
_RSS = _Figure("peak RSS", "MB", ".3f", True, False, lambda a, b, f: b.peak_rss_mb if b else None)

# Absolute limits, in the order they are checked; True: an upper limit.
ABSOLUTE: dict[str, tuple[_Figure, bool]] = {
    "max_accuracy_drop": (_Figure("accuracy drop", "points", ".3f", False, False, _drop), True),
    "max_size_mb": (_SIZE_MB, True),
    "min_accuracy": (_ACCURACY, False),
    "min_metric": (_ACCURACY, False),
    "max_metric": (_ACCURACY, True),
    "min_int8_fraction": (_Figure("int8 share of MACs", "", ".3f", False, False, _int8_fraction), False),
    "min_emulated_agreement": (_Figure("top-1 agreement with x86 on emulated ARM", "", ".4f", False, False,
                                       _emulated_agreement), False),
    "max_latency_p50_ms": (_Figure("latency p50", "ms", ".3f", True, True, _latency("p50")), True),
    "max_latency_p90_ms": (_Figure("latency p90", "ms", ".3f", True, True, _latency("p90")), True),
    "max_peak_rss_mb": (_RSS, True),
}

RELATIVE: dict[Metric, _Figure] = {
    Metric.MEDIAN: _Figure("median", "ms", ".3f", True, True, _latency("p50")),
    Metric.P90: _Figure("p90", "ms", ".3f", True, True, _latency("p90")),
    Metric.MEAN: _Figure("mean", "ms", ".3f", True, True, _latency("mean")),
    Metric.SIZE: _Figure("size", "bytes", "d", False, False, lambda a, b, f: a.size_bytes),
    Metric.PEAK_RSS: _Figure("peak RSS", "MB", ".1f", True, False,
                             lambda a, b, f: b.peak_rss_mb if b else None),
    Metric.ACCURACY: _ACCURACY,
}


def applies(budget: Budget, artifact: Artifact) -> bool:
    """A budget gates the targets it names, or every int8 target when it names none."""
    if budget.targets is not None:
        return artifact.target in budget.targets
    return get_target(artifact.target).is_int8


def concerns(budget: Budget, artifact: Artifact) -> bool:
    """A budget concerns the targets it names, or every artifact when it names none: the scope of
    the recommendation, where an fp32 twin shipped instead of its int8 target must fit too. Wider
    than `applies`: every check the gate makes is one of these."""
    return budget.targets is None or artifact.target in budget.targets


def _not_measured(figure: _Figure, artifact: Artifact, bench: Benchmark | None) -> str | None:
    """Why the figure cannot be read, or None when it can."""
    if artifact.status != "ok":
        return f"not measured: the artifact {artifact.status}"
    if figure.per_device:
        if bench is None or bench.status != "ok":
            return f"not measured: benchmark {bench.status if bench else 'missing'}"
        if figure.latency and not bench.valid:
            return f"benchmark not valid: {'; '.join(bench.invalid_reasons)}"
    return None


def _benches(budget: Budget, artifact: Artifact, report: Report) -> list[Benchmark]:
    """The artifact's benchmarks on the budget's devices (every device that is not emulated, when
    it names none), a `missing` one for each not run."""
    emulated = {d.name for d in report.devices if d.emulated}
    expected = budget.devices if budget.devices is not None else [d.name for d in report.devices
                                                                   if d.name not in emulated]
    named = set(budget.devices) if budget.devices is not None else None
    benches = [b for b in artifact.benchmarks if (b.device in named if named is not None else b.device not in emulated)]
    missing = sorted(set(expected) - {b.device for b in benches})
    return benches + [Benchmark(device=d, status="missing", error="no benchmark on this device")
                      for d in missing]


def _in_metric(figure: _Figure, name: str, metric: MetricInfo) -> _Figure:
    """The figure of limit `name` as the report's metric names and prints it (top1 is the
    `accuracy` messages have always said)."""
    if metric.name == "top1":
        return figure
    spec = ".3f" if metric.drop_scale == 100 else ".4g"
    if name == "max_accuracy_drop":
        return dataclasses.replace(figure, what=f"{metric.name} drop", unit=metric.drop_unit, spec=spec)
    if figure is _ACCURACY:
        return dataclasses.replace(figure, what=metric.name, spec=spec)
    return figure


def _absolute(index: int, name: str, limit: float, artifact: Artifact, bench: Benchmark | None,
              ref: _Float) -> Check:
    figure, upper = ABSOLUTE[name]
    figure = _in_metric(figure, name, ref.metric)
    where = artifact.target if bench is None else f"{artifact.target} on {bench.device}"
    value = figure.read(artifact, bench, ref)
    why = _not_measured(figure, artifact, bench)
    if why is None and value is None:
        why = "not measured"
    if why is None:
        ok = value <= limit if upper else value >= limit
        sign = ("<=" if ok else ">") if upper else (">=" if ok else "<")
        why = f"{figure.show(value)} {sign} {name} {limit:g}"
    else:
        ok = False
    return Check(index, artifact.target, bench.device if bench else None, name, limit, value,
                 Outcome.PASSED if ok else Outcome.FAILED, f"{where}: {figure.what} {why}", upper)


def _change(rule: Regression, value: float, base: float, metric: MetricInfo) -> str:
    if rule.metric is Metric.ACCURACY:
        return f"{metric.format_drop(-metric.worsening(base, value))} {metric.drop_unit}"
    if rule.unit == "%":
        pct = (value / base - 1) * 100 if base else (math.inf if value > base else 0.0)
        return f"{pct:+.1f}%"
    delta = (value - base) / 1e6 if rule.metric is Metric.SIZE else value - base
    return f"{delta:+.3f} {rule.unit}"


def _allowed(rule: Regression, base: float, metric: MetricInfo) -> tuple[float, bool]:
    """The worst value that passes and whether it is an upper limit: `accuracy:-X` lets the
    metric get worse by X drop units, whichever way it points."""
    if rule.metric is not Metric.ACCURACY:
        return rule.allowed(base), rule.upper
    worse = -rule.amount / metric.drop_scale
    return round(base - worse if metric.higher_is_better else base + worse, 12), not metric.higher_is_better


def _relative(index: int, rule: Regression, artifact: Artifact, bench: Benchmark | None,
              baseline: Report | None, metric: MetricInfo) -> Check:
    figure = _in_metric(RELATIVE[rule.metric], "", metric)
    device = bench.device if bench else None
    where = artifact.target if bench is None else f"{artifact.target} on {bench.device}"
    if baseline is None:
        return Check(index, artifact.target, device, rule.text, math.nan, None, Outcome.SKIPPED,
                     f"{where}: {rule.text} not evaluated: no baseline report", rule.upper)
    old = baseline.artifact(artifact.target)
    old_bench = next((b for b in old.benchmarks if b.device == device), None) if bench else None
    base = figure.read(old, old_bench, None)
    limit, upper = _allowed(rule, base, metric)
    value = figure.read(artifact, bench, None)
    why = _not_measured(figure, artifact, bench) or ("not measured" if value is None else None)
    ok = why is None and (value <= limit if upper else value >= limit)
    if why is None:
        sign = ("<=" if ok else ">") if upper else (">=" if ok else "<")
        why = (f"{figure.show(value)} is {_change(rule, value, base, metric)} vs baseline "
               f"{figure.show(base)} {sign} {rule.text}")
    return Check(index, artifact.target, device, rule.text, limit, value,
                 Outcome.PASSED if ok else Outcome.FAILED, f"{where}: {figure.what} {why}", upper, base)


def _no_device(index: int, limits: dict[str, float], rules: list[Regression], artifact: Artifact,
               baseline: Report | None, report: Report) -> Iterator[Check]:
    """A per-device limit in a run that measured on no device (`devices = []`, or emulated ones
    only): nobody saw the figure, so each limit is a violation naming it (a regression limit
    without a baseline is skipped, as everywhere)."""
    metric, emulated = report.metric, [d.name for d in report.devices if d.emulated]
    why = ("not measured: the run has no device to measure it on " +
           (f"(its devices are emulated: {', '.join(emulated)}; an emulator's timings are not valid)"
            if emulated else "(recipe `devices` is empty)"))
    for name, limit in limits.items():
        figure, upper = ABSOLUTE[name]
        yield Check(index, artifact.target, None, name, limit, None, Outcome.FAILED,
                    f"{artifact.target}: {figure.what} {why}; budgets[{index}].{name} {limit:g}", upper)
    for rule in rules:
        if baseline is None:
            yield _relative(index, rule, artifact, None, baseline, metric)
            continue
        yield Check(index, artifact.target, None, rule.text, math.nan, None, Outcome.FAILED,
                    f"{artifact.target}: {RELATIVE[rule.metric].what} {why}; "
                    f"budgets[{index}].max_regression {rule.text}", rule.upper)


def check_baseline(budgets: list[Budget], report: Report, baseline: Report, *,
                   scope: Callable[[Budget, Artifact], bool] = applies) -> None:
    """Raise UserError naming everything the baseline lacks for this report's regression limits."""
    problems = []
    if baseline.recipe_name != report.recipe_name:
        problems.append(f"it is a report of recipe {baseline.recipe_name!r}, this one of "
                        f"{report.recipe_name!r}")
    if baseline.metric.name != report.metric.name:
        problems.append(f"its accuracy is {baseline.metric.name!r}, this report's {report.metric.name!r}")
    old = {a.target: a for a in baseline.artifacts}
    for budget in budgets:
        rules = budget.regressions()
        if not rules:
            continue
        for artifact in (a for a in report.artifacts if scope(budget, a)):
            base = old.get(artifact.target)
            if base is None:
                problems.append(f"no artifact for target {artifact.target} (it has: "
                                f"{', '.join(old) or 'none'})")
                continue
            if base.status != "ok":
                problems.append(f"its {artifact.target} {base.status}: no figures to compare with")
                continue
            if any(r.metric.per_device for r in rules):
                for bench in _benches(budget, artifact, report):
                    found = next((b for b in base.benchmarks if b.device == bench.device), None)
                    if found is None or found.status != "ok":
                        state = "no benchmark" if found is None else f"a benchmark {found.status}"
                        problems.append(f"{state} of {artifact.target} on device {bench.device}")
    if problems:
        unique = list(dict.fromkeys(problems))
        raise UserError(f"the baseline report does not match this one: {'; '.join(unique)}")


def checks(budgets: list[Budget], report: Report, baseline: Report | None = None, *,
           scope: Callable[[Budget, Artifact], bool] = applies) -> Iterator[Check]:
    """Every check of every budget on every artifact it applies to (`scope`), in a stable order:
    budget, artifact, then the artifact's own figures before its per-device ones."""
    if baseline is not None:
        check_baseline(budgets, report, baseline, scope=scope)
    ref = _Float(report.float.accuracy if report.float else None, report.metric)
    for index, budget in enumerate(budgets):
        limits = budget.limits()
        rules = budget.regressions()
        for artifact in (a for a in report.artifacts if scope(budget, a)):
            for name, limit in limits.items():
                if not ABSOLUTE[name][0].per_device:
                    yield _not_on_arm(index, name, limit, artifact) or _absolute(index, name, limit, artifact, None, ref)
            for rule in rules:
                if not rule.metric.per_device:
                    yield _relative(index, rule, artifact, None, baseline, report.metric)
            device_limits = {n: v for n, v in limits.items() if ABSOLUTE[n][0].per_device}
            device_rules = [r for r in rules if r.metric.per_device]
            if not device_limits and not device_rules:
                continue
            benches = _benches(budget, artifact, report)
            if not benches:
                yield from _no_device(index, device_limits, device_rules, artifact, baseline, report)
            for bench in benches:
                for name, limit in device_limits.items():
                    yield _absolute(index, name, limit, artifact, bench, ref)
                for rule in device_rules:
                    yield _relative(index, rule, artifact, bench, baseline, report.metric)


def _not_on_arm(index: int, name: str, limit: float, artifact: Artifact) -> Check | None:
    """An ARM agreement limit on an artifact every emulated device skipped (fbgemm is x86-only):
    skipped with their reason, neither passed nor failed."""
    if name != "min_emulated_agreement" or not artifact.emulated or \
            any(c.status != "skipped" for c in artifact.emulated):
        return None
    return Check(index, artifact.target, None, name, limit, None, Outcome.SKIPPED,
                 f"{artifact.target}: not run on an emulated device: {artifact.emulated[0].error}", False)


def gate_of(gated: Iterable[Check]) -> Gate:
    """The verdict of the gate's checks: every failed one is a violation, in their order."""
    violations = [c.violation() for c in gated if c.outcome is Outcome.FAILED]
    return Gate(passed=not violations, violations=violations)


def evaluate(budgets: list[Budget], report: Report, baseline: Report | None = None) -> Gate:
    return gate_of(checks(budgets, report, baseline))


def exit_code(report: Report, gate: Gate | None) -> int:
    """0 passed, 1 a budget failed, 3 an artifact or a benchmark failed (the user must look)."""
    broken = any(a.status != "ok" or any(b.status not in ("ok", "skipped") for b in a.benchmarks)
                 for a in report.artifacts)
    if broken:
        return ExitCode.DEVICE_FAILURE
    return ExitCode.PASSED if gate is None or gate.passed else ExitCode.BUDGET_FAILED


def budgets_of(report: Report) -> list[Budget]:
    """The budgets a report was gated with (its `budgets` field), validated again."""
    budgets, problems = [], []
    for i, data in enumerate(report.budgets):
        try:
            budgets.append(Budget.model_validate(data))
        except ValidationError as e:
            problems += [f"budgets[{i}].{p}" for p in validation_problems(e)]
    if problems:
        raise UserError(f"the report's budgets are not valid: {'; '.join(problems)}")
    return budgets
