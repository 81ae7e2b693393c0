"""Learning-curve plots: PNG files are written, the aggregate is right, and the CLI fails clearly."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from mbrl_jax.logging import MetricLogger
from mbrl_jax.plotting import plot_curves, plot_run
from mbrl_jax.stats import bootstrap_mean_ci

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(logdir: Path, seed: int, every: int) -> Path:
    """A run whose eval_return rises with env steps; evaluations on a seed-specific grid."""
    rng = np.random.default_rng(seed)
    with MetricLogger(logdir, tensorboard=False) as logger:
        for step in range(every, 10_000 + 1, every):
            record = {
                "env_steps": step,
                "episode_return": step / 100 + rng.normal(),
                "loss_model": 1e3 / step,
            }
            if step % (2 * every) == 0:
                record["eval_return"] = step / 50 + rng.normal()
                record["loss_actor"] = -0.1
            logger.write(record)
    return logdir


def assert_png(path: Path, min_pixels: int = 100 * 100) -> None:
    assert path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = imread(path)
    assert image.shape[0] * image.shape[1] >= min_pixels
    assert image.std() > 0  # something was drawn


def test_plot_curves_several_runs_and_one(tmp_path: Path) -> None:
    runs = [fake_run(tmp_path / f"s{i}", seed=i, every=every) for i, every in enumerate((250, 400, 500))]
    assert_png(plot_curves(runs, tmp_path / "out/mean.png"))
    assert_png(plot_curves(runs[:1], tmp_path / "one.png", key="episode_return", label="seed 0"))
    with pytest.raises(ValueError, match="no run .* 'nope'"):
        plot_curves(runs, tmp_path / "x.png", key="nope")


def test_seeds_with_one_evaluation_each_plot_without_a_legend_warning(tmp_path: Path) -> None:
    runs = []
    for seed in (0, 1):  # a short sweep: one evaluation per seed, so no span to average over
        with MetricLogger(tmp_path / f"s{seed}", tensorboard=False) as logger:
            logger.write({"env_steps": 300, "eval_return": -100.0 - seed})
        runs.append(tmp_path / f"s{seed}")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when legend() finds nothing labelled
        assert_png(plot_curves(runs, tmp_path / "sweep.png"), min_pixels=1)


def test_plot_run_writes_curves_png(tmp_path: Path) -> None:
    run = fake_run(tmp_path / "run", seed=0, every=500)
    out = plot_run(run)
    assert out == run / "curves.png"
    assert_png(out)


def test_bootstrap_band_matches_a_plain_computation() -> None:
    values = np.random.default_rng(0).normal(size=(5, 7))  # [runs, grid]
    mean, low, high = bootstrap_mean_ci(values, resamples=4000)
    np.testing.assert_allclose(mean, values.mean(axis=0))
    assert np.all(low <= mean) and np.all(mean <= high)
    # the 95% band of a mean of 5 is close to +-1.96 standard errors (plug-in, ddof=0)
    se = values.std(axis=0) / np.sqrt(5)
    np.testing.assert_allclose(high - low, 2 * 1.96 * se, rtol=0.25)
    same = np.tile(np.arange(7.0), (4, 1))
    _, low, high = bootstrap_mean_ci(same)
    np.testing.assert_allclose(low, high)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "experiments/plot.py"), *args], capture_output=True, text=True, timeout=60
    )


def test_cli(tmp_path: Path) -> None:
    runs = [str(fake_run(tmp_path / f"s{i}", seed=i, every=500)) for i in range(2)]
    out = tmp_path / "cli.png"
    done = run_cli(*runs, "--key", "eval_return", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert_png(out)

    (tmp_path / "empty").mkdir()
    bad = run_cli(runs[0], str(tmp_path / "empty"), "--out", str(tmp_path / "bad.png"))
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"plot.py: error: {tmp_path / 'empty'} has no metrics.jsonl"]
    assert not (tmp_path / "bad.png").exists()
