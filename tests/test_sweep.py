"""Seed sweeps: many seeds in one compiled program (the train state vmapped over a seed axis)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import DEFAULT_TEST_CACHE, LEGACY_EMITTER

import mbrl_jax.runner as runner
from mbrl_jax.checkpoint import Checkpointer, load_config
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.logging import read_metrics
from mbrl_jax.parallel import parse_seeds
from mbrl_jax.runner import train, train_sweep
from mbrl_jax.stats import iqm

# Compiled as users run them (tests/conftest.py): at -O0 a sweep with a NaN seed 1 gave seed 0 a value one ulp
# off the straight sweep's, where the optimized programs agree exactly as these tests require.
pytestmark = pytest.mark.optimized

SMALL = {  # three chunks, a checkpoint after each; a single run's program is tests/test_runner.py's
    "run.steps": 364,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 100,
    "replay.prefill": 64,
    "replay.batch_length": 16,
}
SEEDS = [0, 1, 2]
SWEEP_AGAINST_SINGLE_RUNS = Path(__file__).resolve().parent / "scripts" / "sweep_against_single_runs.py"
# The comparison with single runs trains at the train ratio the debug preset had until 2026-12-07 (64: an
# update every env step) rather than its 16. At 16 these three chunks carried seed 1's actor 8.6e-4
# (relative) from its single run's in one kernel element, and that layer's optimizer moments up to 1e-2:
# most likely one discrete draw (an action or a latent) amplifying last-bit differences. At 64
# every leaf of every seed stays within a quarter of the tolerance below.
AGAINST_SINGLE_RUNS = {**SMALL, "replay.train_ratio": 64.0}


def _seed_leaves(state, i):
    return [np.asarray(x[i]) for x in jax.tree.leaves(jax.device_get(state.agent))]


def assert_records_match_single_run(swept: list[dict], single: list[dict], seed: int) -> None:
    """A sweep seed's records against its single run's: the same keys, env steps, updates, episodes and
    returns exactly, losses to 1e-4 (see test_each_seed_of_a_sweep_matches_its_single_run for why)."""
    for a, b in zip(swept, single, strict=True):
        assert a.keys() == b.keys()
        for key in ("env_steps", "updates", "episodes", "eval_return", "episode_return"):
            assert a.get(key) == b.get(key), (seed, key)
        for key in (k for k in a if k.startswith("loss")):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=f"{seed} {key}")


@pytest.fixture(scope="module")
def straight_sweep(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("sweep")
    state, records = train_sweep(make_config("debug", **SMALL), SEEDS, logdir, progress=False)
    return logdir, state, records


@pytest.mark.slow  # trains a sweep and its single runs in a child process
def test_each_seed_of_a_sweep_matches_its_single_run(tmp_path):
    """Vmapping batches the matmuls, and XLA's CPU kernels for a batched dot sum in another order than the
    unbatched one: the same seed differs in the last bits (about 1e-6 in parameters after these three
    chunks). So a sweep matches the single runs to a tolerance, not bit for bit; the env steps, episode
    counts and evaluation returns of these chunks agree exactly.

    The runs compile with XLA's default CPU emitter, as users' do, in a child process: with the older emitter
    the rest of the suite compiles with (tests/conftest.py), batched and unbatched kernels differ in more
    places, and training carried a seed's parameters up to 4e-3 (relative) from its single run's."""
    env = {
        **os.environ,
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "").replace(LEGACY_EMITTER, "").strip(),
        "MBRL_JAX_TEST_CACHE": os.environ.get("MBRL_JAX_TEST_CACHE", DEFAULT_TEST_CACHE),
    }
    command = [
        sys.executable,
        str(SWEEP_AGAINST_SINGLE_RUNS),
        str(tmp_path),
        json.dumps(SEEDS),
        json.dumps(AGAINST_SINGLE_RUNS),
    ]
    out = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1500)
    assert out.returncode == 0, out.stderr[-3000:]
    returned = json.loads((tmp_path / "records.json").read_text())
    params = np.load(tmp_path / "params.npz")
    config = make_config("debug", **AGAINST_SINGLE_RUNS)
    leaves = sum(name.startswith("sweep/") for name in params.files)
    assert leaves > 10
    for i, seed in enumerate(SEEDS):
        swept, single = returned["sweep"][str(seed)], returned["single"][str(seed)]
        assert read_metrics(tmp_path / "sweep" / f"seed{seed}") == swept
        assert len(swept) == len(single) == config.num_chunks
        assert_records_match_single_run(swept, single, seed)
        for j in range(leaves):
            np.testing.assert_allclose(
                params[f"sweep/{j}"][i], params[f"single/{seed}/{j}"], rtol=1e-4, atol=1e-5
            )
    # seeds really differ from each other
    assert returned["sweep"]["0"][-1]["loss_model"] != returned["sweep"]["1"][-1]["loss_model"]


@pytest.mark.slow  # trains a sweep
def test_a_sweep_writes_each_seeds_folder_and_the_aggregate(straight_sweep):
    logdir, _, records = straight_sweep
    assert json.loads((logdir / "sweep.json").read_text()) == {"seeds": SEEDS}
    for seed in SEEDS:
        assert load_config(logdir / f"seed{seed}")["run"]["seed"] == seed
        assert (logdir / f"seed{seed}" / "curves.png").stat().st_size > 0
    aggregate = json.loads((logdir / "aggregate.json").read_text())
    finals = np.array([records[s][-1]["eval_return"] for s in SEEDS])
    final = aggregate["final_eval_return"]
    assert final["per_seed"] == {str(s): records[s][-1]["eval_return"] for s in SEEDS}
    assert final["mean"] == pytest.approx(finals.mean())
    assert final["iqm"] == pytest.approx(iqm(finals))
    assert min(finals) <= final["ci95"][0] <= final["mean"] <= final["ci95"][1] <= max(finals)
    curve = aggregate["curve"]
    assert curve["env_steps"] == [r["env_steps"] for r in records[0]]
    means = [np.mean([records[s][t]["eval_return"] for s in SEEDS]) for t in range(len(records[0]))]
    np.testing.assert_allclose(curve["mean"], means)
    assert (logdir / "curves.png").stat().st_size > 0


@pytest.mark.slow  # trains a sweep
def test_a_killed_sweep_resumes_exactly(tmp_path, straight_sweep):
    straight_dir, straight_state, _ = straight_sweep
    config = make_config("debug", **SMALL)
    train_sweep(config, SEEDS, tmp_path, progress=False, stop_after_chunks=2)  # saved after 1 and 2
    # what a kill after the second chunk's save and during the third leaves: a checkpoint at chunk 1 only
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        ckpt.delete_after(ckpt.all_steps()[0])
    state, _ = train_sweep(config, SEEDS, tmp_path, progress=False)
    for a, b in zip(jax.tree.leaves(state.agent), jax.tree.leaves(straight_state.agent), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for seed in SEEDS:
        assert read_metrics(tmp_path / f"seed{seed}") == read_metrics(straight_dir / f"seed{seed}")
    assert json.loads((tmp_path / "aggregate.json").read_text()) == json.loads(
        (straight_dir / "aggregate.json").read_text()
    )


@pytest.mark.slow  # trains a sweep
def test_a_non_finite_seed_is_named_and_the_others_go_on(tmp_path, straight_sweep, monkeypatch, capsys):
    """Seed 1's parameters are NaN from the start (as if it had diverged); seeds 0 and 2 train on, logged
    and checkpointed exactly as in the healthy sweep."""
    straight_dir, straight_state, _ = straight_sweep
    real_make_train = runner.make_train

    def make_train_poisoning_seed_1(cfg, mesh=None, seeds=None):
        trainer = real_make_train(cfg, mesh, seeds)

        def init(key):
            state = trainer.init(key)
            bad = jax.random.key_data(key)[-1] == 1  # PRNGKey(seed) holds the seed in its last word
            params = jax.tree.map(lambda x: jnp.where(bad, jnp.nan, x), state.agent.params)
            return state.replace(agent=state.agent.replace(params=params))

        return trainer.__class__(config=trainer.config, init=init, run_chunk=trainer.run_chunk, evaluate=None)

    monkeypatch.setattr(runner, "make_train", make_train_poisoning_seed_1)
    config = make_config("debug", **SMALL)
    state, records = train_sweep(config, SEEDS, tmp_path, progress=True)
    assert "seed 1 stopped: non-finite" in capsys.readouterr().out
    diverged = json.loads((tmp_path / "seed1" / "diverged.json").read_text())
    assert diverged["env_steps"] == records[0][0]["env_steps"] and "params/" in diverged["non_finite"]
    assert records[1] == [] and read_metrics(tmp_path / "seed1") == []
    aggregate = json.loads((tmp_path / "aggregate.json").read_text())
    assert set(aggregate["final_eval_return"]["per_seed"]) == {"0", "2"} and "1" in aggregate["diverged"]
    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        saved = ckpt.restore(ckpt.latest_step(), jax.eval_shape(lambda: state))
    for i in (0, 2):
        assert read_metrics(tmp_path / f"seed{i}") == read_metrics(straight_dir / f"seed{i}")
        for a, b in zip(_seed_leaves(saved, i), _seed_leaves(straight_state, i), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.slow  # trains a sweep
def test_sweep_and_single_run_folders_are_not_mixed_up(tmp_path, straight_sweep):
    straight_dir, _, _ = straight_sweep
    config = make_config("debug", **SMALL)
    with pytest.raises(ConfigError, match=r"holds a sweep of seeds \[0, 1, 2\]; resume it as a sweep"):
        train(config, straight_dir, progress=False)
    with pytest.raises(ConfigError, match=r"holds a sweep of seeds \[0, 1, 2\], given seeds \[0, 1\]"):
        train_sweep(config, [0, 1], straight_dir, progress=False)
    (tmp_path / "single").mkdir()
    train(config, tmp_path / "single", progress=False, stop_after_chunks=1)  # the single runs' program
    with pytest.raises(ConfigError, match="holds a single run"):
        train_sweep(config, SEEDS, tmp_path / "single", progress=False)


@pytest.mark.parametrize(
    "text, seeds",
    [("0-3", [0, 1, 2, 3]), ("5", [5]), ("0,3,5", [0, 3, 5]), ("1-2,9", [1, 2, 9]), (" 4 , 7 ", [4, 7])],
)
def test_parse_seeds(text, seeds):
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    "text, message",
    [
        ("3-1", "runs backwards"),
        ("a", "'a' is not a seed"),
        ("-1", "'-1' is not a seed"),
        ("0,1,1", r"seeds \[1\] are given more than once"),
        ("4294967296", "outside 0 to 4294967295"),
        ("", "'' is not a seed"),
    ],
)
def test_bad_seeds_are_refused_naming_them(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_seeds(text)
