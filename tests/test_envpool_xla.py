"""envpool through its XLA interface (the compiled loop): the adapter against the host-loop adapter stepped
with the same actions, the choice of loop and its errors, and runs, checkpoints and resume
(mbrl_jax.envs.envpool_env.EnvpoolXlaVecEnv, mbrl_jax.envs.resolve_loop, Trainer.restart)."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import EnvpoolXlaVecEnv, make_host_env, resolve_loop
from mbrl_jax.logging import read_metrics
from mbrl_jax.parallel import check_devices
from mbrl_jax.runner import train

FIELDS = ("reward", "is_first", "is_last", "is_terminal", "episode_return", "episode_length")
# A compiled-loop run on envpool CartPole: prefill 64 steps, then 4 chunks of 100; a checkpoint every 2.
SMALL = {
    "env.name": "envpool:CartPole-v1",
    "run.steps": 464,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 200,
    "replay.prefill": 64,
    "replay.batch_length": 16,
}


def _xla_rollout(env: EnvpoolXlaVecEnv, actions: np.ndarray):
    """The reset TimeStep and the stacked TimeSteps of `actions` [T, N], stepped in one jitted scan."""

    def run(actions):
        state, first = env.reset(jax.random.key(0))

        def step(state, action):
            state, ts = env.step(state, action, jax.random.key(0))
            return state, ts

        return first, jax.lax.scan(step, state, actions)[1]

    return jax.device_get(jax.jit(run)(jnp.asarray(actions)))


def test_loop_choice_and_its_errors_without_envpool():
    assert resolve_loop("CartPole-v1") == "compiled"
    assert resolve_loop("gymnasium:CartPole-v1") == "host"
    with pytest.raises(ConfigError, match="env.loop=host with env.name='CartPole-v1': a gymnax env runs on"):
        make_config("debug", **{"env.loop": "host"})
    with pytest.raises(ConfigError, match="env.loop=compiled with env.name='gymnasium:CartPole-v1'"):
        make_config("debug", **{"env.name": "gymnasium:CartPole-v1", "env.loop": "compiled"})
    with pytest.raises(ConfigError, match=r"env.loop='xla' must be one of 'auto', 'compiled', 'host'"):
        make_config("debug", **{"env.loop": "xla"})


def test_xla_timesteps_match_the_host_adapter():
    """Same seed, same actions: every TimeStep field of the XLA adapter equals the host-loop adapter's
    (itself tested against a hand-stepped pool), across CartPole's episode ends and on Pong's frames."""
    n, steps = 3, 120
    actions = np.random.default_rng(2).integers(0, 2, (steps, n)).astype(np.int32)
    xla = EnvpoolXlaVecEnv("envpool:CartPole-v1", n, seed=5)
    first, rollout = _xla_rollout(xla, actions)
    host = make_host_env("envpool:CartPole-v1", n)
    want = host.reset(seed=5)
    np.testing.assert_array_equal(first.obs["vector"], want.obs["vector"])
    assert first.is_first.all()
    for t, action in enumerate(actions):
        want = host.step(action)
        np.testing.assert_array_equal(rollout.obs["vector"][t], want.obs["vector"])
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(rollout, field)[t], getattr(want, field), err_msg=field)
    assert rollout.is_first.sum() >= n and rollout.is_last.sum() >= n  # episodes ended and restarted
    pong_actions = np.random.default_rng(3).integers(0, 6, (40, 2)).astype(np.int32)
    pong = EnvpoolXlaVecEnv("envpool:Pong-v5", 2, seed=1, sticky_actions=0.0)
    first, rollout = _xla_rollout(pong, pong_actions)
    host = make_host_env("envpool:Pong-v5", 2, sticky_actions=0.0)
    np.testing.assert_array_equal(first.obs["image"], host.reset(seed=1).obs["image"])
    for t, action in enumerate(pong_actions):
        np.testing.assert_array_equal(rollout.obs["image"][t], host.step(action).obs["image"])
    assert rollout.obs["image"].shape == (40, 2, 64, 64, 3) and rollout.obs["image"].dtype == np.uint8


def test_envpool_loop_choice():
    assert resolve_loop("envpool:CartPole-v1") == "compiled"
    assert resolve_loop("envpool:CartPole-v1", "host") == "host"
    assert resolve_loop("envpool:HalfCheetah-v4") == "host"  # float64 observations and actions
    with pytest.raises(ConfigError, match=r"loop=compiled .*HalfCheetah-v4.*64-bit.*env.loop=auto or host"):
        make_config("debug", **{"env.name": "envpool:HalfCheetah-v4", "env.loop": "compiled"})
    config = make_config("debug", **{"env.name": "envpool:CartPole-v1", "env.loop": "host"})
    check_devices(config, [0, 1])  # a sweep on the host loop too (tests/test_host_sweep.py)


def _params(state):
    return jax.tree.leaves(jax.device_get(state.agent.params))


@pytest.mark.slow  # a straight run and two resumes, each building its pool
def test_xla_run_resumes_deterministically_and_exactly_up_to_the_checkpoint(tmp_path):
    """The compiled loop on envpool: learns without non-finite values, stores episode starts; a run cut
    after its checkpoint resumes to the uninterrupted run's records up to the checkpoint, and the same
    checkpoint resumed twice gives the same run (the pool restarts every env, as the host loop does)."""
    config = make_config("debug", **SMALL)
    state, records = train(config, tmp_path / "straight", progress=False)
    assert [r["env_steps"] for r in records] == [164, 264, 364, 464]
    assert all(np.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    assert sum(r["episodes"] for r in records) > 0 and "eval_return" in records[-1]
    data = jax.device_get(state.replay.data)
    first, action = data["is_first"][:, :232], data["action"][:, :232]
    assert first[:, 0].all() and first.sum() > 4 and (action[first] == 0).all()
    np.testing.assert_array_equal(action[~first].sum(-1), 1.0)
    cut = tmp_path / "a"
    shutil.copytree(tmp_path / "straight", cut)
    shutil.rmtree(cut / "checkpoints" / "464")  # as if stopped in chunk 4, after its checkpoint at 264
    shutil.copytree(cut, tmp_path / "b")
    state_a, _ = train(config, cut, progress=False)
    state_b, _ = train(config, tmp_path / "b", progress=False)
    rows_a, rows_b = read_metrics(cut), read_metrics(tmp_path / "b")
    assert [r["env_steps"] for r in rows_a] == [164, 264, 364, 464]
    assert rows_a[:2] == records[:2] and rows_a == rows_b
    for x, y in zip(_params(state_a), _params(state_b), strict=True):
        np.testing.assert_array_equal(x, y)
    resumed = jax.device_get(state_a.replay.data)
    assert resumed["is_first"][:, 264 // 2].all()  # the envs restarted at the resume point
