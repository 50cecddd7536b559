"""Plots drawn from raw latency samples (PNG bytes, matplotlib's Agg backend):

- the empirical CDF of each series' samples, one line each, with a legend;
- an input sweep: p50 and p90 per input set as horizontal bars, so long shape labels never
  overlap each other.
"""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend
import numpy as np  # noqa: E402

from matplotlib.figure import Figure  # noqa: E402

from edgeship.report.plots import _log_axis, _png  # noqa: E402

P50, P90 = "#1f77b4", "#9ecae1"


def latency_ecdf_figure(series: list[tuple[str, list[float]]], title: str) -> Figure | None:
    """Each series' share of runs at or below a latency; a log axis, labelled in plain numbers,
    where they span 10x or more."""
    series = [(label, np.sort(np.asarray(s, dtype=float))) for label, s in series if len(s)]
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(9, 4))
    for label, ms in series:
        ax.step(ms, np.arange(1, len(ms) + 1) / len(ms), where="post", label=f"{label} (n={len(ms)})")
    low, high = min(s[0] for _, s in series), max(s[-1] for _, s in series)
    if low > 0 and high / low >= 10:
        _log_axis(ax, (low / 1.2, high * 1.2))
    ax.set(title=title, xlabel="latency (ms)", ylabel="share of runs ≤ latency", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def latency_ecdf(series: list[tuple[str, list[float]]], title: str) -> bytes | None:
    fig = latency_ecdf_figure(series, title)
    return None if fig is None else _png(fig)


def input_sweep(rows: list[tuple[str, float, float]], title: str) -> bytes | None:
    """(input set, p50 ms, p90 ms) per row, in the order measured."""
    if len(rows) < 2:
        return None
    fig, ax = plt.subplots(figsize=(9, 0.55 * len(rows) + 1.4))
    ys = np.arange(len(rows))
    ax.barh(ys - 0.18, [p90 for _, _, p90 in rows], height=0.36, color=P90, label="p90")
    ax.barh(ys + 0.18, [p50 for _, p50, _ in rows], height=0.36, color=P50, label="p50")
    for y, (_, p50, _) in zip(ys, rows):
        ax.annotate(f"{p50:.3g} ms", (p50, y + 0.18), xytext=(3, 0), textcoords="offset points",
                    va="center", fontsize=8)
    ax.set_yticks(ys, [label for label, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.margins(x=0.2)
    ax.set(title=title, xlabel="latency (ms)")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _png(fig)


def qat_history_figure(flows: list[tuple[str, list[tuple[int, float]], int]], ylabel: str,
                       ceiling: float | None = None) -> Figure | None:
    """Per flow (name, [(epoch, metric)], shipped epoch): the metric after calibration (epoch 0)
    and after each epoch of QAT, the shipped state ringed. `ceiling`: the metric's largest
    possible value (100 for accuracy in percent), above which the axis does not go."""
    if not flows:
        return None
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (name, points, shipped) in enumerate(flows):
        dodge = (i - (len(flows) - 1) / 2) * 0.05  # flows with the same figures stay visible side by side
        (line,) = ax.plot([e + dodge for e, _ in points], [m for _, m in points], marker="o", label=name)
        ax.plot([e + dodge for e, m in points if e == shipped], [m for e, m in points if e == shipped], "o",
                markersize=13, markerfacecolor="none", markeredgecolor=line.get_color())
    values = [m for _, points, _ in flows for _, m in points]
    # matplotlib pads a flat line by 4% of its value: 96-104 for an accuracy of 99.5
    pad = max((max(values) - min(values)) * 0.15, 0.5)
    top = max(values) + pad if ceiling is None else min(max(values) + pad, max(ceiling, max(values)) + pad / 4)
    ax.set_ylim(min(values) - pad, top)
    ax.set(title="QAT: the metric after each epoch (epoch 0: calibrated; ringed: shipped)",
           xlabel="epoch", ylabel=ylabel)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return fig


def qat_history(flows: list[tuple[str, list[tuple[int, float]], int]], ylabel: str,
                ceiling: float | None = None) -> bytes | None:
    fig = qat_history_figure(flows, ylabel, ceiling)
    return None if fig is None else _png(fig)
