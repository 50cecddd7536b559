"""The report's plots as PNG bytes (matplotlib, Agg backend: no display, no network).

- accuracy vs p50 latency, one panel per device, with the budgets' lines and the Pareto front;
- latency distribution per artifact and device, a summary from the report's own figures
  (min, p50, p90, p99, mean), for reports whose raw samples are gone (sample_plots draws the
  ECDF where they are there);
- size per int8 target beside its fp32 twin, with the size budget.
"""

from __future__ import annotations

import io
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from edgeship.gate.recommend import devices  # noqa: E402
from edgeship.recipe import Budget  # noqa: E402
from edgeship.report.schema import MetricInfo, Report  # noqa: E402
from edgeship.targets import TARGETS, get_target  # noqa: E402

INT8, FP32, FRONT, LIMIT = "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _is_int8(target: str) -> bool:
    return target in TARGETS and get_target(target).is_int8


def points(report: Report, device: str) -> list[tuple[str, float, float]]:
    """(target, p50 ms, accuracy) of every artifact measured on `device`."""
    out = []
    for a in report.artifacts:
        bench = next((b for b in a.benchmarks if b.device == device), None)
        if a.accuracy is not None and bench and bench.status == "ok" and bench.latency_ms:
            out.append((a.target, bench.latency_ms.p50, a.accuracy))
    return out


def pareto_front(pts: list[tuple[str, float, float]], higher_is_better: bool = True) -> list[str]:
    """Targets no other artifact beats on both latency (lower) and accuracy (higher, or lower for
    a metric such as perplexity), fastest first.

    >>> pareto_front([("a", 1.0, 0.9), ("b", 2.0, 0.95), ("c", 3.0, 0.94), ("d", 1.0, 0.8)])
    ['a', 'b']
    >>> pareto_front([("a", 1.0, 12.0), ("b", 2.0, 11.0), ("c", 3.0, 11.5)], higher_is_better=False)
    ['a', 'b']
    """
    pts = pts if higher_is_better else [(t, lat, -acc) for t, lat, acc in pts]
    front = [t for t, lat, acc in pts
             if not any((l2 <= lat and a2 >= acc) and (l2 < lat or a2 > acc) for _, l2, a2 in pts)]
    return sorted(front, key=lambda t: next(lat for n, lat, _ in pts if n == t))


def _limits(budgets: list[Budget], device: str, name: str) -> list[float]:
    return sorted({b.limits()[name] for b in budgets if name in b.limits()
                   and (b.devices is None or device in b.devices)})


def _metric_lines(ax, budgets: list[Budget], device: str, metric: MetricInfo,
                  float_accuracy: float | None, shown: list[float]) -> list[str]:
    """The float model's figure and the budgets' limits on the metric as horizontal lines where
    they fall near the points (`shown`: the points' values as plotted); the others as notes, so
    a limit far from the data does not squash the points into a line."""
    low, high = min(shown), max(shown)
    room = max(high - low, abs(high) * 0.02, 1e-9)
    lines = [(metric.shown(limit), f"{name} {limit:g}", "--") for name in ("min_accuracy", "min_metric", "max_metric")
             for limit in _limits(budgets, device, name)]
    if float_accuracy is not None:
        lines.append((metric.shown(float_accuracy), "float model", "-"))
        lines += [(metric.shown(float_accuracy) + (-drop if metric.higher_is_better else drop),
                   f"max_accuracy_drop {drop:g} {metric.short_unit}", "-.")
                  for drop in _limits(budgets, device, "max_accuracy_drop")]
    notes = []
    for value, label, style in lines:
        if low - room <= value <= high + room:
            ax.axhline(value, color="grey" if style == "-" else LIMIT, linestyle=style,
                       linewidth=0.8 if style == "-" else 1.5, label=label)
        else:
            notes.append(f"{device}: {label} ({value:.4g} as plotted) is off the scale")
    return notes


MARKERS = "osD^vP*Xhp<>"


def _span(values: list[float]) -> tuple[float, float]:
    """A log axis' range around the data: a third of a decade of room on each side."""
    low, high = min(values), max(values)
    return low / 10 ** (1 / 3), high * 10 ** (1 / 3)


def _log_axis(ax, span: tuple[float, float]) -> None:
    """A log x axis over `span`, labelled in plain numbers (0.02, not 2×10⁻²) at 1, 2 and 5 of
    each decade where two decades or fewer fit, else at each decade: matplotlib's own minor
    labels print over each other on short spans."""
    ax.set_xscale("log")
    ax.set_xlim(*span)
    decades = math.log10(span[1] / span[0])
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 2 else (1.0,)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _latency_lines(ax, budgets: list[Budget], device: str, span: tuple[float, float]) -> list[str]:
    """The p50 limits inside the axis as lines; the rest as notes (a p90 limit is not drawn on a
    p50 axis at all)."""
    notes = []
    for limit in _limits(budgets, device, "max_latency_p50_ms"):
        if span[0] <= limit <= span[1]:
            ax.axvline(limit, color=LIMIT, linestyle="--", label=f"max_latency_p50_ms {limit:g}")
        else:
            notes.append(f"{device}: max_latency_p50_ms {limit:g} ms is off the scale "
                         f"(p50 {span[0] * 10 ** (1 / 3):.3g}–{span[1] / 10 ** (1 / 3):.3g} ms)")
    notes += [f"{device}: max_latency_p90_ms {limit:g} ms is a p90 limit, not drawn on this p50 axis"
              for limit in _limits(budgets, device, "max_latency_p90_ms")]
    return notes


def accuracy_vs_latency_figure(report: Report, budgets: list[Budget]) -> tuple[Figure, list[str]] | None:
    """One panel per device: each artifact a marker of its own, named in the legend with its
    figures (no text beside the points, so no label can cover another, however close the
    points); a log p50 axis clipped to the data; the notes for limits it does not show."""
    panels = [(d, pts) for d in devices(report) if (pts := points(report, d))]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(7.0 * len(panels), 4.6), squeeze=False)
    float_accuracy, metric, notes = (report.float.accuracy if report.float else None), report.metric, []
    for ax, (device, pts) in zip(axes[0], panels):
        front = pareto_front(pts, metric.higher_is_better)
        for i, (target, lat, acc) in enumerate(pts):
            ax.scatter(lat, metric.shown(acc), s=70, color=INT8 if _is_int8(target) else FP32, zorder=3,
                       marker=MARKERS[i % len(MARKERS)], edgecolors=FRONT if target in front else "none",
                       linewidths=2.0, label=f"{target}: {lat:.3g} ms, {metric.format(acc)}")
        line = sorted((lat, metric.shown(acc)) for t, lat, acc in pts if t in front)
        ax.step([x for x, _ in line], [y for _, y in line], where="post", color=FRONT, alpha=0.6,
                zorder=2, label="Pareto front (green ring)")
        span = _span([lat for _, lat, _ in pts])
        _log_axis(ax, span)
        notes += _latency_lines(ax, budgets, device, span)
        notes += _metric_lines(ax, budgets, device, metric, float_accuracy,
                               [metric.shown(acc) for _, _, acc in pts])
        ax.set(title=f"{metric.label} vs p50 latency · {device} (blue int8, orange fp32)",
               xlabel="p50 latency (ms, log scale)",
               ylabel="accuracy (%)" if metric.name == "top1" else f"{metric.name} "
               f"({'higher' if metric.higher_is_better else 'lower'} is better)")
        ax.margins(y=0.3)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig, notes


def accuracy_vs_latency(report: Report, budgets: list[Budget]) -> tuple[bytes | None, list[str]]:
    made = accuracy_vs_latency_figure(report, budgets)
    return (None, []) if made is None else (_png(made[0]), made[1])


def latency_distribution(report: Report) -> bytes | None:
    """One row per artifact and device: a line from min to p99, a box from p50 to p90, a tick at
    p50, a dot at the mean."""
    rows = [(f"{a.target} · {b.device}", a.target, b.latency_ms) for a in report.artifacts
            for b in a.benchmarks if b.status == "ok" and b.latency_ms]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(rows) + 1.4))
    for y, (_, target, lat) in enumerate(rows):
        color = INT8 if _is_int8(target) else FP32
        ax.hlines(y, lat.min, lat.p99, color=color, linewidth=1.2)
        ax.barh(y, lat.p90 - lat.p50, left=lat.p50, height=0.5, color=color, alpha=0.45,
                edgecolor=color)
        ax.vlines(lat.p50, y - 0.3, y + 0.3, color="black", linewidth=2)
        ax.plot(lat.mean, y, "o", color="black", markersize=3.5)
    ax.set_yticks(range(len(rows)), [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set(title="latency per artifact: line min–p99, box p50–p90, tick p50, dot mean",
           xlabel="latency (ms)")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def size_vs_twin(report: Report, budgets: list[Budget]) -> bytes | None:
    sizes = {a.target: a.size_bytes for a in report.artifacts if a.size_bytes}
    pairs = [(t, sizes[t], sizes.get(get_target(t).twin)) for t in sizes if _is_int8(t)]
    if not pairs:
        return None
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(pairs) + 2), 4))
    xs = range(len(pairs))
    ax.bar([x - 0.2 for x in xs], [s / 1e6 for _, s, _ in pairs], width=0.4, color=INT8, label="int8")
    ax.bar([x + 0.2 for x in xs], [(tw or 0) / 1e6 for _, _, tw in pairs], width=0.4, color=FP32,
           label="fp32 twin")
    for x, (_, size, twin) in zip(xs, pairs):
        if twin:
            ax.annotate(f"{size / twin:.2f}x", (x - 0.2, size / 1e6), ha="center",
                        textcoords="offset points", xytext=(0, 3), fontsize=8)
    for limit in sorted({b.max_size_mb for b in budgets if b.max_size_mb is not None}):
        ax.axhline(limit, color=LIMIT, linestyle="--", label=f"max_size_mb {limit:g}")
    ax.set_xticks(list(xs), [t for t, _, _ in pairs], rotation=15, fontsize=8)
    ax.set(title="size per target against its fp32 twin", ylabel="size (MB, 10^6 bytes)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
