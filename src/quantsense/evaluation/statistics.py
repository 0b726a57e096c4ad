"""Paired statistics for a quantized model against its FP32 reference on the same examples.

- :func:`bootstrap_mean_ci`: percentile CI of a mean, resampling independent examples (seeded).
- :func:`block_bootstrap_mean_ci`: the same for a dependent series (per-token values of a language
  model): the series is cut into consecutive blocks of ``block`` values and whole blocks are resampled,
  so correlation inside a block is kept (a non-overlapping block bootstrap). Resampling single tokens
  would treat strongly correlated neighbours as independent and give intervals that are too narrow.
- :func:`mcnemar_exact`: two-sided exact McNemar test on the discordant pairs
  (b = fixed, c = broken): p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]).
- :func:`overlap_tiers`: tiers as connected components of overlapping intervals.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_RESAMPLES = 2000
# An interval is resampled from at least this many independent blocks (sentences, or runs of consecutive tokens):
# with one block every resample is the same and the interval has zero width; with a handful it is little better.
# Evaluations that would compute one from fewer are refused before any work, and data segments are cut no smaller.
MIN_BOOTSTRAP_BLOCKS = 8
_CHUNK = 250


def _bootstrap_means(sums: np.ndarray, counts: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    """Means of resampled groups: each resample draws len(sums) groups with replacement."""
    rng = np.random.default_rng(seed)
    n = len(sums)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(count, n))
        means[start : start + count] = sums[idx].sum(axis=1) / counts[idx].sum(axis=1)
    return means


def _percentile_ci(means: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_mean_ci(
    values: np.ndarray, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """CI of mean(values), resampling single values (independent examples)."""
    return block_bootstrap_mean_ci(values, block=1, seed=seed, resamples=resamples, level=level)


def paired_bootstrap_ci(
    diff: np.ndarray, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """CI of mean(diff) where diff[i] = metric_ref[i] - metric_quant[i] on the same example i."""
    return bootstrap_mean_ci(diff, seed=seed, resamples=resamples, level=level)


def block_bootstrap_mean_ci(
    values: np.ndarray, block: int, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """CI of mean(values) resampling consecutive blocks of ``block`` values (the last may be shorter)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap needs at least one value")
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    starts = np.arange(0, len(values), block)
    sums = np.add.reduceat(values, starts)
    counts = np.diff(np.append(starts, len(values))).astype(np.float64)
    return _percentile_ci(_bootstrap_means(sums, counts, seed, resamples), level)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts; 1.0 when there are none."""
    n = fixed + broken
    if n == 0:
        return 1.0
    k = min(fixed, broken)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return float(min(1.0, 2.0 * tail))


def overlap_tiers(intervals: list[tuple[float, float]]) -> list[int]:
    """Tier of each interval: connected components of the overlap graph, numbered from the highest.

    Two intervals that overlap (share a point) are in the same tier, and so are intervals chained by
    overlaps; intervals in different tiers never overlap. Tier 1 holds the highest values.
    """
    order = sorted(range(len(intervals)), key=lambda i: -intervals[i][1])
    tiers = [0] * len(intervals)
    tier, reach = 0, math.inf
    for i in order:
        low, high = intervals[i]
        if high < reach:  # no interval seen so far reaches down to this one
            tier += 1
            reach = low
        else:
            reach = min(reach, low)
        tiers[i] = tier
    return tiers
