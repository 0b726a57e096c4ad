"""Paired statistics for a quantized model against its FP32 reference on the same examples.

- :func:`paired_bootstrap_ci`: percentile CI of the mean of per-example paired differences,
  resampling examples (seeded, deterministic).
- :func:`mcnemar_exact`: two-sided exact McNemar test on the discordant pairs
  (b = fixed, c = broken): p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import binom

DEFAULT_RESAMPLES = 2000
_CHUNK = 250


def _bootstrap_means(values: np.ndarray, seed: int, resamples: int) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    n = len(values)
    means = np.empty(resamples)
    for start in range(0, resamples, _CHUNK):
        count = min(_CHUNK, resamples - start)
        idx = rng.integers(0, n, size=(count, n))
        means[start : start + count] = values[idx].mean(axis=1)
    return means


def paired_bootstrap_ci(
    diff: np.ndarray, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    """CI of mean(diff) where diff[i] = metric_ref[i] - metric_quant[i] on the same example i."""
    return bootstrap_mean_ci(diff, seed=seed, resamples=resamples, level=level)


def bootstrap_mean_ci(
    values: np.ndarray, seed: int = 0, resamples: int = DEFAULT_RESAMPLES, level: float = 0.95
) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        raise ValueError("bootstrap needs at least one value")
    if np.all(values == values[0]):
        return float(values[0]), float(values[0])
    means = _bootstrap_means(values, seed, resamples)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def mcnemar_exact(fixed: int, broken: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts; 1.0 when there are none."""
    n = fixed + broken
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(fixed, broken), n, 0.5)))
