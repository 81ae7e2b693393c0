"""benchmarks/learning.py statistics and page, and the op profiler, on synthetic inputs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks.learning import ab_section, conv_layouts_section, summarize, write_results
from benchmarks.profile_ops import profile_markdown, profile_ops
from mbrl_jax.checkpoint import save_config
from mbrl_jax.config import make_config
from mbrl_jax.logging import MetricLogger
from mbrl_jax.stats import bootstrap_mean_ci, iqm


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
        logdir = out / "runs" / f"cartpole-s{seed}"
        with MetricLogger(logdir, tensorboard=False) as log:
            for i, value in enumerate(evals):
                # training episodes end in every chunk but the last one of seed 1
                train = {"episode_return": value - 5.0} if seed == 0 or i < 3 else {}
                record = {"env_steps": 1000 * (i + 1), "eval_return": value, "wall_s": 30.0 * (i + 1)}
                log.write({**record, **train})
        save_config(logdir, make_config("cartpole", **{"run.seed": seed}).to_dict())
    # seed 0 finished (its wall time from wall_time.json); seed 1 is still running (from its last record)
    (out / "runs" / "cartpole-s0" / "wall_time.json").write_text(json.dumps({"wall_s": 600.0}))
    # the random baseline is found by env, whichever task measured it
    (out / "runs" / "random-pendulum.json").write_text(json.dumps({"env": "Pendulum-v1", "return": -1200.0}))
    (out / "runs" / "random-other.json").write_text(json.dumps({"env": "CartPole-v1", "return": 22.0}))
    summary = summarize("cartpole", sorted((out / "runs").glob("cartpole-s*")))
    assert summary["random_return"] == 22.0
    assert summary["finals"] == [500.0, 420.0] and summary["final_mean"] == 460.0
    assert summary["solved_at"] == [3000, None]  # CartPole's threshold 450: seed 1 never gets there
    assert summary["wall_s"] == [600.0, 120.0] and summary["finished"] == [True, False]
    assert summary["train_finals"] == [495.0, 295.0]  # seed 1: from the last chunk in which episodes ended
    page = tmp_path / "RESULTS.md"
    write_results([summary], out, page, "python benchmarks/learning.py --task cartpole:0,1")
    text = page.read_text()
    assert "| 2 | 4,000 | 460.0 |" in text and "3,000, not reached" in text
    assert "10 min, 2 min so far" in text
    assert "every run's config.yaml equals its task's preset except seed" in text
    assert (out / "cartpole.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(("env", "threshold"), [("Pendulum-v1", -250.0), ("MountainCarContinuous-v0", None)])
def test_a_task_threshold_holds_only_on_its_own_env(tmp_path, env, threshold):
    logdir = tmp_path / "runs" / "tdmpc2-s0"  # TD-MPC2's -250 is issue 13's for Pendulum, not for other envs
    with MetricLogger(logdir, tensorboard=False) as log:
        log.write({"env_steps": 2000, "eval_return": -200.0})
    save_config(logdir, make_config("tdmpc2", **{"env.name": env}).to_dict())
    summary = summarize("tdmpc2", [logdir])
    assert summary["threshold"] == threshold
    assert summary["solved_at"] == [2000 if threshold else None]


def test_profile_ranks_the_matmul_first():
    def f(a, b):
        return jnp.tanh(a @ b).sum()

    a = jnp.ones((512, 512))
    profile = profile_ops(jax.jit(f), a, a, runs=2, top=5)
    assert profile["top"] and profile["total_ms"] > 0
    assert profile["top"][0]["source"].endswith("dot_general"), profile["top"]
    assert "| op | kind |" in profile_markdown(profile)


def test_ab_section_from_its_json(tmp_path):
    """benchmarks/ab_learner.py's JSON becomes a table: every round, the best of each side and their ratio."""
    commit = lambda c, subject: {"rev": c, "commit": c * 40, "subject": subject}
    report = {
        "name": "layout",
        "command": "python benchmarks/ab_learner.py --base a --name layout",
        "machine": {
            "device_kind": "cpu",
            "cpu_count": 2,
            "jax_version": "0",
            "loadavg_before": [3.0, 0, 0],
            "loadavg_after": [4.0, 0, 0],
        },
        "settings": {"preset": "cartpole", "updates": 5, "repeats": 3, "rounds": 2, "overrides": []},
        "base": commit("a", "old"),
        "head": commit("b", "new"),
        "rounds": [
            {"base_ms": 100.0, "head_ms": 90.0, "ratio": 0.9},
            {"base_ms": 110.0, "head_ms": 80.0, "ratio": 80 / 110},
        ],
        "base_ms": 100.0,
        "head_ms": 80.0,
        "ratio": 0.8,
        "profiles": {"head": "| op | kind |"},
    }
    (tmp_path / "ab-layout.json").write_text(json.dumps(report))
    text = "\n".join(ab_section(tmp_path))
    assert (
        "## A/B: `ab-layout.json` (layout)" in text and "`bbbbbbb` (new) against base `aaaaaaa` (old)" in text
    )
    assert "| 2 | 110.0 | 80.0 | 0.727 |" in text and "| best | 100.0 | 80.0 | 0.800 |" in text
    assert "**head profile, one update:**" in text and "base profile" not in text
    assert ab_section(tmp_path / "empty") == []


def test_conv_layouts_section_gives_each_layout_relative_to_the_library(tmp_path):
    """benchmarks/conv_layouts.py's JSON becomes a table whose ratio is to the same layer's library row."""
    machine = {"device_kind": "cpu", "platform": "cpu", "cpu_count": 2, "jax_version": "0"}
    rows = [
        {"layer": "a", "layout": "patches (library)", "ms_per_grad": 200.0},
        {"layer": "a", "layout": "col2im", "ms_per_grad": 500.0},
        {"layer": "b", "layout": "patches (library)", "ms_per_grad": 40.0},
        {"layer": "b", "layout": "channels_outer", "ms_per_grad": 30.0},
    ]
    report = {"machine": machine, "batch": 8, "steps": 2, "rows": rows}
    (tmp_path / "conv-layouts-x.json").write_text(json.dumps(report))
    text = "\n".join(conv_layouts_section(tmp_path))
    assert "## Image-layer layouts: `conv-layouts-x.json`" in text and "batch of 8" in text
    assert "| a | col2im | 500 | 2.50 |" in text and "| b | channels_outer | 30 | 0.75 |" in text


@pytest.mark.parametrize(
    "env_name, low, high",
    # A uniformly random CartPole policy lasts about 22 steps; random torques on Pendulum score about -1200.
    [("CartPole-v1", 15.0, 35.0), ("Pendulum-v1", -1500.0, -900.0)],
)
def test_random_policy_return_matches_the_known_random_scores(env_name, low, high):
    from benchmarks.learning import random_policy_return

    assert low < random_policy_return(env_name) < high


# learning.py's driver on the debug preset: 64 prefill steps + 3 chunks of 200, a checkpoint after each chunk
DRIVER = ["run.steps=664", "run.chunk_steps=200", "run.checkpoint_every=200", "replay.prefill=64"]


def _count_chunks(monkeypatch) -> list[int]:
    """Patches the runner to count the chunks it computes (one entry per seed and chunk)."""
    import mbrl_jax.runner as runner

    counted, real = [], runner.summarize_chunk
    monkeypatch.setattr(runner, "summarize_chunk", lambda raw: counted.append(1) or real(raw))
    return counted


def test_the_driver_resumes_an_interrupted_sweep_and_reads_both_layouts(tmp_path, monkeypatch):
    """learning.py trains a task's seeds as one runner sweep; killed mid-run, the same command resumes it
    from its checkpoint (the records go on, no chunk before it is computed again) and skips the runs already
    done, in the sweep or stored by the earlier driver (`<task>-s<seed>/`); the page reads both layouts."""
    from benchmarks import learning
    from mbrl_jax.checkpoint import Checkpointer
    from mbrl_jax.config import parse_overrides
    from mbrl_jax.logging import read_metrics

    out, overrides = tmp_path / "results", parse_overrides(DRIVER)
    old = out / "runs" / "debug-s2"  # the earlier driver's layout: records with wall_s, no checkpoints
    with MetricLogger(old, tensorboard=False) as log:
        for steps in (264, 464, 664):
            log.write({"env_steps": steps, "eval_return": steps / 10, "wall_s": steps / 10})
    save_config(old, make_config("debug", **{**overrides, "run.seed": 2}).to_dict())
    (old / "wall_time.json").write_text(json.dumps({"wall_s": 70.0, "commit": "abc1234"}))
    (out / "runs" / "random-debug.json").write_text(json.dumps({"env": "CartPole-v1", "return": 22.0}))
    chunks = _count_chunks(monkeypatch)

    rows = learning.run_task("debug", [0, 1], out, overrides, progress=False, stop_after_chunks=2)
    sweep = out / "runs" / "debug-seeds0-1"
    assert [(r["seed"], r["finished"], r["logdir"]) for r in rows] == [
        (s, False, str(sweep / f"seed{s}")) for s in (0, 1)
    ]
    assert len(chunks) == 4
    with Checkpointer(sweep / "checkpoints") as ckpt:  # killed during the third chunk, before the second save
        ckpt.delete_after(264)
    cut = {s: read_metrics(sweep / f"seed{s}") for s in (0, 1)}
    assert [r["env_steps"] for r in cut[0]] == [264, 464]
    assert not (sweep / "seed0" / "wall_time.json").exists()
    summary = learning.summarize("debug", list(learning.task_runs(out / "runs", "debug").values()))
    assert summary["seed_ids"] == [0, 1, 2] and summary["finished"] == [False, False, True]
    so_far = summary["wall_s"][0]
    assert 0 < so_far == json.loads((sweep / "seed0" / "run.json").read_text())["wall_s"]

    page = tmp_path / "RESULTS.md"
    argv = ["--task", "debug:0,1,2", "--out", str(out), "--results-md", str(page), *DRIVER]
    assert learning.main(argv) == 0
    assert len(chunks) == 4 + 2 * 2  # from env step 264: chunks 2 and 3 of seeds 0 and 1; seed 2 skipped
    for seed in (0, 1):
        records = read_metrics(sweep / f"seed{seed}")
        assert [r["env_steps"] for r in records] == [264, 464, 664]
        assert records[0] == cut[seed][0]  # kept from before the kill; the lost chunk 2 was redone
        assert json.loads((sweep / f"seed{seed}" / "wall_time.json").read_text())["wall_s"] > so_far
    summary = learning.summarize("debug", list(learning.task_runs(out / "runs", "debug").values()))
    assert summary["finished"] == [True] * 3 and summary["steps_per_seed"] == [664] * 3
    assert summary["wall_s"][2] == 70.0 and summary["commits"][2] == "abc1234"
    assert summary["random_return"] == 22.0  # found beside the sweep's folder, in runs/
    assert summary["finals"][:2] == [read_metrics(sweep / f"seed{s}")[-1]["eval_return"] for s in (0, 1)]
    text = page.read_text()
    assert "| debug | CartPole-v1 | 0, 1, 2 | 664, 664, 664 |" in text
    assert learning.main(argv) == 0 and len(chunks) == 8  # everything done: nothing runs


def test_the_driver_records_a_run_that_turns_non_finite(tmp_path, monkeypatch, poison_run):
    """A single seed trains with the runner's `train` in `<task>-s<seed>/`; its guard stops the run whose
    parameters turn non-finite (test_guard's run, so its compiled program is shared), and learning.py marks
    where (diverged.json), counts the run as done (a re-run skips it, keeping its records) and the page
    counts it."""
    from benchmarks import learning
    from mbrl_jax.logging import read_metrics

    out = tmp_path / "results"
    overrides = {
        "run.steps": 700,
        "run.chunk_steps": 100,
        "replay.prefill": 64,
        "replay.batch_length": 16,
        "run.checkpoint_every": 400,
    }
    poison_run(364, float("inf"), params="wm")  # from the third chunk on
    rows = learning.run_task("debug", [3], out, overrides, progress=False)
    logdir = out / "runs" / "debug-s3"
    assert rows == [{"task": "debug", "seed": 3, "logdir": str(logdir), "finished": True, "diverged_at": 364}]
    mark = json.loads((logdir / "diverged.json").read_text())
    assert mark["env_steps"] == 364 and "params/wm/" in mark["non_finite"]
    assert [r["env_steps"] for r in read_metrics(logdir)] == [164, 264]
    chunks = _count_chunks(monkeypatch)
    assert learning.run_task("debug", [3], out, overrides) == [{"task": "debug", "seed": 3, "skipped": True}]
    assert chunks == [] and [r["env_steps"] for r in read_metrics(logdir)] == [164, 264]
    summary = learning.summarize("debug", [logdir])
    assert summary["seed_ids"] == [3] and summary["diverged"] == [364] and summary["finished"] == [True]


def test_every_stored_run_folder_still_loads():
    """RESULTS.md is regenerated from these folders, and a run is resumed from them: each stored config
    reads to a valid config of today's code (the legacy key map covers older layouts)."""
    from pathlib import Path

    from mbrl_jax.checkpoint import load_config
    from mbrl_jax.config import config_from_dict

    stored = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "results").rglob("config.yaml"))
    assert len(stored) >= 60
    agents = {config_from_dict(load_config(path.parent)).agent for path in stored}
    assert agents == {"dreamer", "tdmpc2"}


def test_peer_section_shows_both_sides_and_their_ratios(tmp_path):
    """`benchmarks/peer_sidebyside.py`'s JSON as RESULTS.md's table: each side's figures and the ratios
    mbrl_jax / official, and a pair measured without the peer shown without ratios."""
    from benchmarks.learning import peer_section
    from benchmarks.peer_sidebyside import make_pair

    peer = {"updates_per_s": 0.2, "max_rss_mib": 2048.0}
    report = {
        "machine": {"device_kind": "cpu", "platform": "cpu", "cpu_count": 2},
        "date": "2026-12-06",
        "mbrl_jax_commit": "abc1234",
        "peer": "danijar/dreamerv3@e3f0224",
        "quiet": False,
        "load_before": [2.5, 1.0, 0.5],
        "method": "how",
        "pairs": [
            make_pair("image64", "size1m", peer, {"updates_per_s": 0.5, "max_rss_mib": 1024.0}),
            make_pair("vector4", "size1m", None, {"updates_per_s": 1.5, "max_rss_mib": 3072.0}),
        ],
    }
    (tmp_path / "peer-sidebyside-cpu-x.json").write_text(json.dumps(report))
    text = "\n".join(peer_section(tmp_path))
    assert "a BUSY machine" in text and "load average before: 2.50 1.00 0.50" in text
    assert "| image64 | size1m | 0.200 | 0.500 | **2.50×** | 2.00 | 1.00 | **0.50×** |" in text
    assert "| vector4 | size1m | – | 1.500 | – | – | 3.00 | – |" in text
