"""Latency statistics from a runner's raw samples. Pure math, computed on the host."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy.stats import binom


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


Verdict = Literal["slower", "faster", "no change"]

# The smallest change in the median called slower or faster. Within one run the interval is
# narrow (tens of thousands of samples), but two runs of the same artifacts differ by more than
# it: two demo runs on one idle 2-core host, 5 Dec 2026, gave median ratios 0.976 to 1.015 with
# every interval excluding 1. A change smaller than this is not one a release should act on.
MIN_EFFECT = 0.03


@dataclass(frozen=True)
class MedianRatio:
    """B's median over A's, with a bootstrap confidence interval [low, high]."""

    ratio: float
    low: float
    high: float
    confidence: float
    min_effect: float = MIN_EFFECT

    @property
    def verdict(self) -> Verdict:
        """slower (B) when the whole interval is above 1 and the median grew by at least
        `min_effect`; faster the other way round; else no change."""
        if self.low > 1 and self.ratio >= 1 + self.min_effect:
            return "slower"
        if self.high < 1 and self.ratio <= 1 - self.min_effect:
            return "faster"
        return "no change"

    def interval(self) -> str:
        return f"{self.low:.3f}–{self.high:.3f}"


def _bootstrap_medians(samples: np.ndarray, draws: int, rng: np.random.Generator) -> np.ndarray:
    """`draws` medians of bootstrap resamples of `samples`, drawn from their exact distribution
    rather than by resampling: a resample of n has its median at or below the j-th smallest
    sample when at least k = ceil(n/2) of its n draws are, each with probability j/n, so
    P(median <= x_(j)) = P(Binomial(n, j/n) >= k). (The lower median for even n: at the thousands
    of samples a run holds, the two middle values are as good as equal.) This costs O(n) where
    resampling costs O(n x draws): a run holds tens of thousands of samples per benchmark."""
    x = np.sort(samples)
    n = len(x)
    k = (n + 1) // 2
    cdf = binom.sf(k - 1, n, np.arange(1, n + 1) / n)
    return x[np.minimum(np.searchsorted(cdf, rng.random(draws)), n - 1)]


def median_ratio(a_ms: list[float] | np.ndarray, b_ms: list[float] | np.ndarray, *,
                 confidence: float = 0.95, draws: int = 20_000, seed: int = 0) -> MedianRatio:
    """median(B) / median(A) with a percentile-bootstrap interval, the two runs resampled
    independently. Seeded: the same samples give the same interval. The interval covers the
    spread within each run, not between processes or machines (a run is one process)."""
    a, b = np.asarray(a_ms, dtype=float), np.asarray(b_ms, dtype=float)
    if not len(a) or not len(b):
        raise ValueError("no latency samples")
    if a.min() <= 0 or b.min() <= 0 or not np.isfinite([a.max(), b.max()]).all():
        raise ValueError("latency samples must be finite and positive")
    rng = np.random.default_rng(seed)
    ratios = _bootstrap_medians(b, draws, rng) / _bootstrap_medians(a, draws, rng)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(ratios, [tail, 100 - tail])
    return MedianRatio(float(np.median(b) / np.median(a)), float(low), float(high), confidence)
