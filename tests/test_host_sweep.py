"""Seed sweeps on the host loop (`--seeds` with `env.loop=host` or a Gymnasium env): one set of host envs per
seed, reset as that seed's single run resets its own, the jitted pieces vmapped over seeds. A 2-seed envpool
CartPole sweep against its single host runs seed by seed, straight and resumed from the same checkpoint."""

import jax
import numpy as np
import pytest
from test_sweep import assert_records_match_single_run

from mbrl_jax.checkpoint import Checkpointer
from mbrl_jax.config import make_config
from mbrl_jax.logging import read_metrics
from mbrl_jax.parallel import check_devices
from mbrl_jax.runner import train, train_sweep

SEEDS = [0, 1]
# prefill 36 steps, then 2 chunks of 32 (2 envs), a checkpoint after each; the jitted pieces of a single run
# are those of tests/test_host_envs.py's envpool host run (the same shapes), so its compiles are reused
SMALL = {
    "env.name": "envpool:CartPole-v1",
    "env.loop": "host",
    "run.steps": 100,
    "run.chunk_steps": 32,
    "run.checkpoint_every": 32,
    "replay.prefill": 36,
    "replay.batch_length": 16,
}


def _cut_to_first_checkpoint(folder):
    """What a kill during the second chunk leaves: the checkpoint after the first chunk only."""
    with Checkpointer(folder / "checkpoints") as ckpt:
        ckpt.delete_after(ckpt.all_steps()[0])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sweep and each seed's single run, straight; then each cut after its first chunk and resumed."""
    config = make_config("debug", **SMALL)
    root = tmp_path_factory.mktemp("host-sweep")
    straight = {"sweep": train_sweep(config, SEEDS, root / "sweep", progress=False)[1]}
    for seed in SEEDS:
        straight[seed] = train(config.replace(**{"run.seed": seed}), root / f"s{seed}", progress=False)[1]
    resumed = {}
    for name in ("sweep", *SEEDS):
        _cut_to_first_checkpoint(root / str(name) if name == "sweep" else root / f"s{name}")
    resumed["sweep"] = train_sweep(config, SEEDS, root / "sweep", progress=False)
    for seed in SEEDS:
        resumed[seed] = train(config.replace(**{"run.seed": seed}), root / f"s{seed}", progress=False)
    return root, straight, resumed


def test_each_seed_of_a_host_sweep_matches_its_single_host_run(runs):
    """The tolerance of the compiled sweeps (tests/test_sweep.py): env steps, episodes and returns exactly,
    losses to 1e-4; each seed's folder holds its records."""
    _, straight, _ = runs
    for seed in SEEDS:
        swept, single = straight["sweep"][seed], straight[seed]
        assert [r["env_steps"] for r in swept] == [r["env_steps"] for r in single] == [68, 100]
        assert_records_match_single_run(swept, single, seed)
    assert straight["sweep"][0] != straight["sweep"][1]  # the seeds' envs really differ


def test_a_host_sweep_resumes_as_its_single_host_runs_resume(runs):
    """As a single host run resumes (tests/test_host_envs.py): every env restarts at the checkpoint with a
    reset seeded from the state, so the resumed sweep's seed s equals seed s's single run resumed from the
    same point (not its uninterrupted run after it), and both equal their uninterrupted selves up to there."""
    root, straight, resumed = runs
    sweep_state, _ = resumed["sweep"]
    for i, seed in enumerate(SEEDS):
        rows, single_state = read_metrics(root / "sweep" / f"seed{seed}"), resumed[seed][0]
        single_rows = read_metrics(root / f"s{seed}")
        assert rows[:1] == straight["sweep"][seed][:1] and single_rows[:1] == straight[seed][:1]
        assert_records_match_single_run(rows, single_rows, seed)
        for a, b in zip(jax.tree.leaves(sweep_state.agent), jax.tree.leaves(single_state.agent), strict=True):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-4, atol=1e-5)
        first = jax.device_get(sweep_state.replay.data["is_first"])[i]
        assert first[:, 68 // 2].all()  # the envs restarted at the resume point


def test_a_gymnasium_sweep_matches_its_single_runs(tmp_path):
    """Each seed's own `SyncVectorEnv`, reset as its single run's: a Gymnasium CartPole sweep's first chunk
    equals its single runs' (the same shapes as the envpool sweep's, so its programs are compiled already)."""
    config = make_config("debug", **{**SMALL, "env.name": "gymnasium:CartPole-v1", "env.loop": "auto"})
    check_devices(config, SEEDS)  # quiet: a host sweep is one program on one device
    _, swept = train_sweep(config, SEEDS, tmp_path, progress=False, stop_after_chunks=1)
    for seed in SEEDS:
        _, single = train(config.replace(**{"run.seed": seed}), None, progress=False, stop_after_chunks=1)
        assert [r["env_steps"] for r in swept[seed]] == [r["env_steps"] for r in single] == [68]
        assert_records_match_single_run(swept[seed], single, seed)
    assert swept[0] != swept[1]
