"""Seed sweeps on the host loop (`--seeds` with `env.loop=host` or a Gymnasium env): one set of host envs per
seed, reset as that seed's single run resets its own, the jitted pieces vmapped over seeds. A 2-seed envpool
CartPole sweep against its single host runs seed by seed, each stopped after its first chunk and resumed
from that checkpoint; a Gymnasium sweep's start against its single runs'."""

import jax
import numpy as np
import pytest
from test_sweep import assert_records_match_single_run

from mbrl_jax.config import make_config
from mbrl_jax.host_loop import make_host_train
from mbrl_jax.logging import read_metrics
from mbrl_jax.parallel import check_devices
from mbrl_jax.runner import train, train_sweep

# Compiled as users run them (tests/conftest.py): at -O0 one of 2,560 parameters of a swept seed ended 3% off
# its single run's, where the optimized programs agree as these tests require.
pytestmark = pytest.mark.optimized

SEEDS = [0, 1]
# prefill 36 steps, then 2 chunks of 16 (2 envs), a checkpoint after each; the jitted pieces of a single run
# are those of tests/test_host_envs.py's host runs (the same shapes), so their compiles are reused
SMALL = {
    "env.name": "envpool:CartPole-v1",
    "env.loop": "host",
    "run.steps": 68,
    "run.chunk_steps": 16,
    "run.checkpoint_every": 16,
    "replay.prefill": 36,
    "replay.batch_length": 16,
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The sweep and each seed's single run, each stopped after its first chunk (checkpointed there), then
    run again: the resume. Returns the folders and the final states."""
    config = make_config("debug", **SMALL)
    root = tmp_path_factory.mktemp("host-sweep")
    folders = {"sweep": root / "sweep", **{seed: root / f"s{seed}" for seed in SEEDS}}
    train_sweep(config, SEEDS, folders["sweep"], progress=False, stop_after_chunks=1)
    for seed in SEEDS:
        train(config.replace(**{"run.seed": seed}), folders[seed], progress=False, stop_after_chunks=1)
    first = {
        name: read_metrics(folder if name != "sweep" else folder / "seed0")
        for name, folder in folders.items()
    }
    assert all(len(rows) == 1 for rows in first.values())
    states = {"sweep": train_sweep(config, SEEDS, folders["sweep"], progress=False)[0]}
    for seed in SEEDS:
        states[seed] = train(config.replace(**{"run.seed": seed}), folders[seed], progress=False)[0]
    return folders, states


def test_each_seed_of_a_host_sweep_matches_its_single_host_run_and_resumes_as_it_does(runs):
    """The first chunk (prefill, 8 iterations, an evaluation) to the compiled sweeps' tolerance
    (tests/test_sweep.py: env steps, episodes and returns exactly, losses to 1e-4); then the resume: as a
    single host run (tests/test_host_envs.py), every env restarts at the checkpoint with a reset seeded from
    the state, and the resumed sweep's seed s equals seed s's single run resumed from the same point."""
    folders, states = runs
    for i, seed in enumerate(SEEDS):
        swept, single = read_metrics(folders["sweep"] / f"seed{seed}"), read_metrics(folders[seed])
        assert [r["env_steps"] for r in swept] == [r["env_steps"] for r in single] == [52, 68]
        assert_records_match_single_run(swept, single, seed)
        sweep_agent, single_agent = (
            jax.tree.leaves(states["sweep"].agent),
            jax.tree.leaves(states[seed].agent),
        )
        for a, b in zip(sweep_agent, single_agent, strict=True):
            np.testing.assert_allclose(np.asarray(a[i]), np.asarray(b), rtol=1e-4, atol=1e-5)
        first = jax.device_get(states["sweep"].replay.data["is_first"])[i]
        assert first[:, 52 // 2].all()  # the envs restarted at the resume point
    assert read_metrics(folders["sweep"] / "seed0") != read_metrics(folders["sweep"] / "seed1")


def test_a_gymnasium_sweep_starts_as_its_single_runs():
    """Each seed's own `SyncVectorEnv`, reset with the seed its single run draws: after the prefill (random
    actions from each seed's key), a Gymnasium CartPole sweep's envs and replay hold its single runs'."""
    config = make_config("debug", **{**SMALL, "env.name": "gymnasium:CartPole-v1", "env.loop": "auto"})
    check_devices(config, SEEDS)  # quiet: a host sweep is one program on one device
    keys = np.stack([jax.random.PRNGKey(seed) for seed in SEEDS])
    swept = jax.device_get(make_host_train(config, SEEDS).init(keys))
    for i, seed in enumerate(SEEDS):
        single = jax.device_get(make_host_train(config.replace(**{"run.seed": seed})).init(keys[i]))
        for field in ("timestep", "replay", "key", "env_steps"):
            for a, b in zip(
                jax.tree.leaves(getattr(swept, field)), jax.tree.leaves(getattr(single, field)), strict=True
            ):
                np.testing.assert_array_equal(a[i], b, err_msg=f"seed {seed} {field}")
    assert not np.array_equal(swept.replay.data["obs"]["vector"][0], swept.replay.data["obs"]["vector"][1])
