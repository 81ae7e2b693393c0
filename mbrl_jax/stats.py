"""Statistics across runs (seeds): interquartile mean, percentile-bootstrap confidence intervals, and the
aggregate scores of a [runs, tasks] matrix with stratified-bootstrap intervals (Agarwal et al., 2021)."""

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


def aggregate_scores(scores: np.ndarray) -> dict[str, float]:
    """The aggregates of a [runs, tasks] score matrix that Agarwal et al. (2021) recommend and Atari 100k
    papers report: mean (over tasks of the mean over runs), median (over tasks of the mean over runs) and
    IQM (over every run of every task)."""
    scores = np.asarray(scores, float)
    per_task = scores.mean(axis=0)
    return {"mean": float(per_task.mean()), "median": float(np.median(per_task)), "iqm": iqm(scores.ravel())}


def stratified_bootstrap(scores: np.ndarray, resamples: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """`aggregate_scores` of `resamples` stratified bootstrap resamples of a [runs, tasks] matrix: each task's
    runs are drawn with replacement from that task's own runs (Agarwal et al., 2021), so the spread reflects
    run-to-run variation only, never the differences between tasks. Returns {aggregate: [resamples]}."""
    scores = np.asarray(scores, float)
    runs, tasks = scores.shape
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, runs, size=(resamples, runs, tasks))
    drawn = np.take_along_axis(scores[None], idx, axis=1)  # [resamples, runs, tasks]
    replicates = [aggregate_scores(d) for d in drawn]
    return {k: np.array([r[k] for r in replicates]) for k in replicates[0]}


def aggregate_with_ci(
    scores: np.ndarray, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> dict[str, tuple[float, float, float]]:
    """{aggregate: (point estimate, low, high)}: `aggregate_scores` with percentile stratified-bootstrap
    confidence intervals at `level`."""
    point = aggregate_scores(scores)
    replicates = stratified_bootstrap(scores, resamples, seed)
    alpha = (1.0 - level) / 2.0
    out = {}
    for name, value in point.items():
        low, high = np.quantile(replicates[name], [alpha, 1.0 - alpha])
        out[name] = (value, float(low), float(high))
    return out
