"""Learning-curve figures from runs' `metrics.jsonl`.

Figures are built with `matplotlib.figure.Figure` and saved by the Agg canvas, without pyplot, so no display
is needed and the importer's global matplotlib backend is left alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from mbrl_jax.logging import JSONL, Metrics, read_metrics
from mbrl_jax.stats import bootstrap_mean_ci

GRID_POINTS = 200


def metric_series(records: Sequence[Metrics], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(env_steps [N], values [N]) of the finite `key` entries of one run's records, sorted by env_steps."""
    pairs = [
        (r["env_steps"], float(r[key]))
        for r in records
        if isinstance(r.get(key), int | float) and math.isfinite(r[key])
    ]
    pairs.sort(key=lambda p: p[0])
    steps = np.array([p[0] for p in pairs], dtype=np.float64)
    return steps, np.array([p[1] for p in pairs], dtype=np.float64)


def _draw(ax: Axes, series: list[tuple[np.ndarray, np.ndarray]], label: str | None) -> None:
    """One run: its curve. Several: faint curves, mean and 95% bootstrap band on the steps all runs cover."""
    if len(series) == 1:
        ax.plot(*series[0], label=label)
        return
    for steps, values in series:
        ax.plot(steps, values, alpha=0.25, linewidth=0.8, color="C0")
    start, stop = max(s[0] for s, _ in series), min(s[-1] for s, _ in series)
    if stop <= start:  # runs do not overlap: nothing to average
        return
    grid = np.linspace(start, stop, GRID_POINTS)
    curves = np.stack([np.interp(grid, s, v) for s, v in series])  # [R, G]
    mean, low, high = bootstrap_mean_ci(curves)
    ax.plot(grid, mean, color="C0", linewidth=2.0, label=f"{label or 'mean'} (n={len(series)})")
    ax.fill_between(grid, low, high, color="C0", alpha=0.25, linewidth=0, label="95% bootstrap CI")


def plot_curves(
    run_dirs: Sequence[str | Path], out_png: str | Path, key: str = "eval_return", label: str | None = None
) -> Path:
    """Plot `key` against env_steps for one or more runs (seeds) into `out_png`; returns its path.

    Runs without any finite `key` value are skipped; ValueError if none has one.
    """
    series = [s for s in (metric_series(read_metrics(d), key) for d in run_dirs) if len(s[0])]
    if not series:
        raise ValueError(f"no run in {[str(d) for d in run_dirs]} has any '{key}' values")
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    _draw(ax, series, label if label is not None else (key if len(series) == 1 else None))
    ax.set_xlabel("env steps")
    ax.set_ylabel(key)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing is labelled when the seeds' curves have no common span
        ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    return out_png


def plot_run(logdir: str | Path) -> Path:
    """`<logdir>/curves.png`: one panel each for eval_return, episode_return and every loss* key present."""
    logdir = Path(logdir)
    if not (logdir / JSONL).exists():
        raise FileNotFoundError(f"{logdir} has no {JSONL}")
    records = read_metrics(logdir)
    present = dict.fromkeys(k for r in records for k in r)
    keys = [k for k in ("eval_return", "episode_return") if k in present]
    keys += sorted(k for k in present if k.startswith("loss"))
    series = {k: s for k in keys if len((s := metric_series(records, k))[0])}
    if not series:
        raise ValueError(f"{logdir / JSONL} has no eval_return, episode_return or loss* values")
    cols = min(3, len(series))
    rows = math.ceil(len(series) / cols)
    width, height = 4.0 * cols, 3.0 * rows
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    # margins fixed in inches (room for tick labels, titles and the x label) instead of tight_layout, which
    # measures every text and was half of this function's time for a run's 11 panels
    axes = fig.subplots(
        rows,
        cols,
        squeeze=False,
        gridspec_kw={
            "left": 0.75 / width,
            "right": 1 - 0.15 / width,
            "bottom": 0.55 / height,
            "top": 1 - 0.35 / height,
            "wspace": 0.3,
            "hspace": 0.45,
        },
    )
    for ax, (key, (steps, values)) in zip(axes.flat, series.items(), strict=False):
        ax.plot(steps, values)
        ax.set_title(key, fontsize="medium")
        ax.set_xlabel("env steps")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(series) :]:
        ax.set_visible(False)
    out_png = logdir / "curves.png"
    fig.savefig(out_png, dpi=110)
    return out_png
