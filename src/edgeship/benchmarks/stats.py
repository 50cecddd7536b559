"""Latency statistics from a runner's raw samples. Pure math, computed on the host."""

from __future__ import annotations

import statistics

import numpy as np


def latency_summary(samples_ms: list[float]) -> dict[str, float]:
    """min, p50, p90, p99, mean, stdev (sample stdev; 0 for a single sample), in milliseconds.

    Percentiles interpolate linearly between order statistics (numpy's default)."""
    if not samples_ms:
        raise ValueError("no latency samples")
    a = np.asarray(samples_ms, dtype=float)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "min": float(a.min()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
        "mean": float(a.mean()),
        "stdev": statistics.stdev(samples_ms) if len(samples_ms) > 1 else 0.0,
    }
