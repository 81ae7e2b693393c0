"""Statistics across runs (seeds): interquartile mean and percentile-bootstrap confidence intervals."""

from __future__ import annotations

import numpy as np


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: the mean of the middle 50% (with fewer than 4 values, the plain mean)."""
    values = np.sort(np.asarray(values, float))
    n = len(values)
    if n < 4:
        return float(values.mean())
    return float(values[n // 4 : n - n // 4].mean())


def bootstrap_mean_ci(
    values: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs and its percentile-bootstrap confidence interval (runs resampled with replacement).

    Args:
      values: [R, ...] one entry per run: [R] final returns, or [R, G] curves on a shared grid.
    Returns:
      (mean, low, high), each of shape [...] (numpy scalars for [R]). With one run, low = high = mean.
    """
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.shape[0], size=(resamples, values.shape[0]))
    means = values[idx].mean(axis=1)  # [resamples, G]
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=0)
    return values.mean(axis=0), low, high
