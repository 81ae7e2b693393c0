"""benchmarks/learning.py statistics and page, and the op profiler, on synthetic inputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.learning import iqm, summarize, write_results
from benchmarks.profile_ops import profile_markdown, profile_ops
from mbrl_jax.logging import MetricLogger
from mbrl_jax.plotting import bootstrap_mean_ci


def test_iqm_is_the_mean_of_the_middle_half():
    values = np.array([100.0, 1.0, 3.0, 2.0, 4.0, -50.0, 5.0, 6.0])
    middle = np.sort(values)[2:6]
    assert iqm(values) == middle.mean()
    assert iqm(np.array([1.0, 2.0])) == 1.5


def test_bootstrap_ci_contains_the_mean_and_narrows_with_data():
    rng = np.random.default_rng(0)
    small, large = rng.normal(10, 1, 5), rng.normal(10, 1, 500)
    _, lo_s, hi_s = bootstrap_mean_ci(small)
    _, lo_l, hi_l = bootstrap_mean_ci(large)
    assert lo_s <= small.mean() <= hi_s and lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s


def test_summary_and_page_from_run_directories(tmp_path):
    out = tmp_path / "results"
    curves = {0: [10.0, 200.0, 460.0, 500.0], 1: [20.0, 100.0, 300.0, 420.0]}
    for seed, evals in curves.items():
        with MetricLogger(out / "runs" / f"cartpole-s{seed}", tensorboard=False) as log:
            for i, value in enumerate(evals):
                log.write({"env_steps": 1000 * (i + 1), "eval_return": value})
        (out / "runs" / f"cartpole-s{seed}" / "wall_time.json").write_text(
            json.dumps({"wall_s": 60.0 * (seed + 1)})
        )
    summary = summarize("cartpole", sorted((out / "runs").glob("cartpole-s*")))
    assert summary["finals"] == [500.0, 420.0] and summary["final_mean"] == 460.0
    assert summary["solved_at"] == [3000, None]  # threshold 450: seed 1 never gets there
    page = tmp_path / "RESULTS.md"
    write_results([summary], out, page, "python benchmarks/learning.py --task cartpole:0,1")
    text = page.read_text()
    assert "| 2 | 4,000 | 460.0 |" in text and "3,000, not reached" in text
    assert (out / "cartpole.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_profile_ranks_the_matmul_first():
    def f(a, b):
        return jnp.tanh(a @ b).sum()

    a = jnp.ones((512, 512))
    profile = profile_ops(jax.jit(f), a, a, runs=2, top=5)
    assert profile["top"] and profile["total_ms"] > 0
    assert profile["top"][0]["source"].endswith("dot_general"), profile["top"]
    assert "| op | kind |" in profile_markdown(profile)
