"""Seeds of an envpool task in one compiled program (`--seeds` with envpool:<task>): one pool per seed on
envpool's XLA interface (`EnvpoolXlaSweep`), each seeded as its single run seeds its pool, the agent vmapped
over seeds. The pools against single pools stepped with the same actions (CartPole and Pong's frames), and
sweeps of CartPole and of Pong from pixels against their single runs seed by seed, and their resume."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_sweep import assert_records_match_single_run

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import EnvpoolXlaSweep, EnvpoolXlaVecEnv
from mbrl_jax.logging import read_metrics
from mbrl_jax.parallel import check_devices
from mbrl_jax.runner import train, train_sweep

SEEDS = [0, 1, 2]
SMALL = {  # two chunks, each ending in a checkpoint: the resume starts the second
    "env.name": "envpool:CartPole-v1",
    "run.steps": 264,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 100,
    "replay.prefill": 64,
    "replay.batch_length": 16,
}
# Pong from 64 x 64 x 3 frames with the atari100k env settings in the compiled loop (envpool's XLA step inside
# the chunk), at the debug sizes; an update every 4 env steps: the tests check the plumbing, not learning. A
# replay of 256 frames holds the 160 steps (debug's 4,000 made each seed's state 52 MB, saved and copied).
PONG = {
    "env.name": "envpool:Pong-v5",
    "run.steps": 160,
    "run.chunk_steps": 48,
    "run.checkpoint_every": 48,
    "run.eval_episodes": 1,
    "run.eval_steps": 30,
    "replay.prefill": 64,
    "replay.batch_length": 16,
    "replay.train_ratio": 16.0,
    "replay.capacity": 256,
}
RUNS = {  # task -> (config, env steps at the end of each chunk)
    "CartPole": (lambda: make_config("debug", **SMALL), [164, 264]),
    "Pong": (lambda: make_config("atari100k", "debug", **PONG), [112, 160]),
}
FIELDS = ("reward", "is_first", "is_last", "is_terminal", "episode_return", "episode_length")


def _rollout(env, actions, vmapped: bool):
    def run(key, actions):
        state, first = env.reset(key)

        def step(state, action):
            return env.step(state, action, key)

        return first, jax.lax.scan(step, state, actions)[1]

    key = jax.random.PRNGKey(0)  # unused by envpool's reset and step
    if vmapped:
        run, key = jax.vmap(run), jnp.stack([key] * len(SEEDS))
    return jax.device_get(jax.jit(run)(key, jnp.asarray(actions)))


@pytest.mark.parametrize(("task", "steps"), [("CartPole-v1", 60), ("Pong-v5", 12)])
def test_sweep_pools_step_as_each_seeds_own_pool(task, steps):
    """Under vmap over 3 seeds, pool s steps as seed s's own pool does with the same actions, across
    CartPole's episode ends and on Pong's 64 x 64 x 3 frames."""
    n = 2
    sweep = EnvpoolXlaSweep(f"envpool:{task}", n, SEEDS)
    actions = np.random.default_rng(0).integers(0, sweep.spec.action_dim, (len(SEEDS), steps, n))
    first, swept = _rollout(sweep, actions.astype(np.int32), vmapped=True)
    for s, seed in enumerate(SEEDS):
        single_first, single = _rollout(
            EnvpoolXlaVecEnv(f"envpool:{task}", n, seed), actions[s], vmapped=False
        )
        for field in ("obs", *FIELDS):
            for got, want in zip(
                jax.tree.leaves(getattr(swept, field)), jax.tree.leaves(getattr(single, field)), strict=True
            ):
                np.testing.assert_array_equal(got[s], want, err_msg=f"{task} seed {seed} {field}")
        for got, want in zip(jax.tree.leaves(first.obs), jax.tree.leaves(single_first.obs), strict=True):
            np.testing.assert_array_equal(got[s], want)
    if task == "CartPole-v1":
        assert swept.is_last.any()  # episodes ended and restarted within the rollout
    observations = jax.tree.leaves(swept.obs)[0]
    assert not np.array_equal(observations[0], observations[1])  # the seeds' pools really differ


@pytest.fixture(scope="module", params=list(RUNS))
def straight_sweep(request, tmp_path_factory):
    """A 3-seed sweep of CartPole or of Pong, run to its end: (config, its chunks' env steps, folder, state,
    records per seed)."""
    make, steps = RUNS[request.param]
    config = make()
    logdir = tmp_path_factory.mktemp(f"envpool-sweep-{request.param}")
    state, records = train_sweep(config, SEEDS, logdir, progress=False)
    return config, steps, logdir, state, records


@pytest.mark.slow  # the sweep and its three single runs
def test_each_seed_of_an_envpool_sweep_matches_its_single_run(straight_sweep):
    """The tolerance of the gymnax sweep tests (tests/test_sweep.py: vmapped matmuls sum in another order):
    env steps, episodes and returns exactly, losses to 1e-4."""
    config, steps, logdir, state, sweep_records = straight_sweep
    for seed in SEEDS:
        _, single = train(config.replace(**{"run.seed": seed}), None, progress=False)
        swept = sweep_records[seed]
        assert read_metrics(logdir / f"seed{seed}") == swept
        assert [r["env_steps"] for r in swept] == [r["env_steps"] for r in single] == steps
        assert all(np.isfinite(v) for r in swept for k, v in r.items() if k.startswith("loss"))
        assert_records_match_single_run(swept, single, seed)
    assert sweep_records[0][-1]["eval_return"] != sweep_records[1][-1]["eval_return"] or (
        sweep_records[0][-1]["loss_model"] != sweep_records[1][-1]["loss_model"]
    )
    if config.env.name == "envpool:Pong-v5":  # the frames as the replay keeps them, each seed's its own
        frames = jax.device_get(state.replay.data["obs"]["image"])
        assert frames.dtype == np.uint8 and frames.shape[-3:] == (64, 64, 3) and frames[:, :, :80].max() > 0
        assert not np.array_equal(frames[0, :, :80], frames[1, :, :80])


@pytest.mark.slow  # two resumed sweeps
def test_an_envpool_sweep_resumes_as_exactly_as_a_single_envpool_run(straight_sweep, tmp_path):
    """As a single envpool run (tests/test_envpool_xla.py): the pools restart every env at the resume
    point, so a sweep resumed from its last checkpoint but one equals the uninterrupted sweep up to there,
    and the same checkpoint resumed twice gives the same sweep, seed by seed."""
    config, steps, logdir, _, straight = straight_sweep
    cut = tmp_path / "a"
    shutil.copytree(logdir, cut)
    shutil.rmtree(cut / "checkpoints" / str(steps[-1]))  # as if stopped after its checkpoint before the end
    shutil.copytree(cut, tmp_path / "b")
    state_a, _ = train_sweep(config, SEEDS, cut, progress=False)
    state_b, _ = train_sweep(config, SEEDS, tmp_path / "b", progress=False)
    for seed in SEEDS:
        rows_a, rows_b = read_metrics(cut / f"seed{seed}"), read_metrics(tmp_path / "b" / f"seed{seed}")
        assert [r["env_steps"] for r in rows_a] == steps
        assert rows_a[:-1] == straight[seed][:-1] and rows_a == rows_b
    for x, y in zip(jax.tree.leaves(state_a.agent), jax.tree.leaves(state_b.agent), strict=True):
        np.testing.assert_array_equal(x, y)
    restarted = jax.device_get(state_a.replay.data["is_first"])[:, :, steps[-2] // config.env.num_envs]
    assert restarted.all()  # every seed's envs restarted at the resume point


def test_host_env_sweeps_are_one_program_and_multi_device_envpool_sweeps_are_refused():
    """A sweep on the host loop (envpool with env.loop=host, a Gymnasium env) is one host-loop program
    (tests/test_host_sweep.py); an envpool sweep over several devices is refused with the reason (a config
    that the validation stops earlier, as for any host env, built here past it)."""
    check_devices(make_config("debug", **{**SMALL, "env.loop": "host"}), SEEDS)
    check_devices(make_config("debug", **{**SMALL, "env.name": "gymnasium:CartPole-v1"}), SEEDS)
    config = make_config("debug", **SMALL)
    check_devices(config, SEEDS)  # quiet: the compiled loop on one device
    spread = dataclasses.replace(config, run=dataclasses.replace(config.run, devices=3))
    with pytest.raises(
        ConfigError, match=r"run.devices=3 with env.name='envpool:CartPole-v1': a sweep's envpool"
    ):
        check_devices(spread, SEEDS)
