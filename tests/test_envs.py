"""gymnax adapter: specs, the DreamerV3 reset convention, episode statistics, action rescaling, vmap."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.envs import TimeStep, VecEnv, env_spec, list_envs, make_env, rescale_action

N = 4


def random_action(env: VecEnv, key: jax.Array) -> jax.Array:
    """Uniform random action batch: [N] int32 or [N, action_dim] float32 in [-1, 1]."""
    if env.spec.discrete:
        return jax.random.randint(key, (env.num_envs,), 0, env.spec.action_dim)
    return jax.random.uniform(key, (env.num_envs, env.spec.action_dim), minval=-1.0, maxval=1.0)


def rollout(env: VecEnv, key: jax.Array, steps: int) -> TimeStep:
    """Reset then `steps` random steps in one jitted scan; leaves [steps + 1, N, ...] (row 0 is the reset)."""

    def run(key):
        k_reset, k_steps = jax.random.split(key)
        state, ts0 = env.reset(k_reset)

        def body(state, k):
            k_act, k_env = jax.random.split(k)
            return env.step(state, random_action(env, k_act), k_env)

        _, traj = jax.lax.scan(body, state, jax.random.split(k_steps, steps))
        return jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), ts0, traj)

    return jax.tree.map(np.asarray, jax.jit(run)(key))


@pytest.fixture(scope="module")
def cartpole() -> TimeStep:
    return rollout(make_env("CartPole-v1", N), jax.random.key(0), 600)


@pytest.fixture(scope="module")
def pendulum() -> TimeStep:
    return rollout(make_env("Pendulum-v1", N), jax.random.key(1), 450)


def check_episode_bookkeeping(tr: TimeStep) -> None:
    """The reset convention and episode statistics, recomputed with a plain loop."""
    T, n = tr.reward.shape
    assert tr.obs["vector"].dtype == np.float32 and tr.reward.dtype == np.float32
    assert tr.episode_length.dtype == np.int32
    assert tr.is_first[0].all()
    # is_first exactly after is_last; the reset step carries no reward and zero statistics.
    np.testing.assert_array_equal(tr.is_first[1:], tr.is_last[:-1])
    assert not (tr.is_first & tr.is_last).any()
    assert not (tr.is_terminal & ~tr.is_last).any()
    first = tr.is_first
    assert (tr.reward[first] == 0).all() and (tr.episode_return[first] == 0).all()
    assert (tr.episode_length[first] == 0).all()
    for e in range(n):
        length, ret = 0, 0.0
        for t in range(T):
            length, ret = (0, 0.0) if tr.is_first[t, e] else (length + 1, ret + float(tr.reward[t, e]))
            assert tr.episode_length[t, e] == length
            np.testing.assert_allclose(tr.episode_return[t, e], ret, rtol=1e-5, atol=1e-3)


def test_specs():
    cp, pe = env_spec("CartPole-v1"), env_spec("Pendulum-v1")
    assert (cp.obs_shapes, cp.discrete, cp.action_dim, cp.max_episode_steps) == (
        {"vector": (4,)},
        True,
        2,
        500,
    )
    assert (pe.obs_shapes, pe.discrete, pe.action_dim, pe.max_episode_steps) == (
        {"vector": (3,)},
        False,
        1,
        200,
    )
    assert make_env("CartPole-v1", 3).spec == cp
    assert "Acrobot-v1" in list_envs() and "MountainCarContinuous-v0" in list_envs()


def test_cartpole_episodes(cartpole: TimeStep):
    check_episode_bookkeeping(cartpole)
    assert cartpole.obs["vector"].shape == (601, N, 4)
    last = cartpole.is_last
    assert last.sum() >= N  # random play drops the pole within a few dozen steps
    # A random policy never survives 500 steps: every episode end is a pole drop, so a termination.
    np.testing.assert_array_equal(cartpole.is_terminal, last)
    # The terminal observation itself is returned (outside the bounds), then a fresh reset obs (|x| <= 0.05).
    x, theta = cartpole.obs["vector"][..., 0], cartpole.obs["vector"][..., 2]
    assert ((np.abs(x) > 2.4) | (np.abs(theta) > 12 * 2 * np.pi / 360))[last].all()
    assert (np.abs(cartpole.obs["vector"][cartpole.is_first]) <= 0.05).all()
    assert (cartpole.reward[~cartpole.is_first] == 1.0).all()


def test_pendulum_truncates(pendulum: TimeStep):
    check_episode_bookkeeping(pendulum)
    last = pendulum.is_last
    assert last.sum() == 2 * N  # 450 steps: ends at step 200 and at step 401 (200 + the reset call + 200)
    assert (pendulum.episode_length[last] == 200).all()
    assert not pendulum.is_terminal.any()
    assert pendulum.episode_length.max() == 200


def test_continuous_action_rescaling():
    env = make_env("Pendulum-v1", 5)  # torque range [-2, 2]; the state keeps the applied torque in last_u
    state, _ = env.reset(jax.random.key(0))
    action = jnp.array([[1.0], [-1.0], [0.5], [5.0], [0.0]])
    state, _ = jax.jit(env.step)(state, action, jax.random.key(1))
    np.testing.assert_allclose(state.env.last_u, [2.0, -2.0, 1.0, 2.0, 0.0], atol=1e-6)
    np.testing.assert_allclose(rescale_action(jnp.array([-1.0, 0.0, 1.0, 3.0]), 0.0, 10.0), [0, 5, 10, 10])


def test_unknown_env_name():
    with pytest.raises(ValueError, match="CartPole-v0") as err:
        make_env("CartPole-v0", 2)
    assert "(did you mean 'CartPole-v1'?)" in str(err.value) and "Pendulum-v1" in str(err.value)
    with pytest.raises(ValueError, match="pendulum"):
        env_spec("pendulum")
    with pytest.raises(ValueError, match="num_envs"):
        make_env("CartPole-v1", 0)


def test_vmap_over_keys_matches_separate_runs():
    env = make_env("CartPole-v1", 3)
    keys = jax.random.split(jax.random.key(2), 2)
    action = jnp.array([0, 1, 1], jnp.int32)

    def two_steps(key):
        k0, k1, k2 = jax.random.split(key, 3)
        state, _ = env.reset(k0)
        state, _ = env.step(state, action, k1)
        return env.step(state, action, k2)[1]

    batched = jax.jit(jax.vmap(two_steps))(keys)
    assert batched.obs["vector"].shape == (2, 3, 4) and batched.is_last.shape == (2, 3)
    for i in range(2):
        single = two_steps(keys[i])
        # atol: one float32 ulp at CartPole's scale of 1, for velocities near 0 (9e-10 apart with XLA's
        # older CPU emitter, tests/conftest.py)
        jax.tree.map(
            lambda b, s, i=i: np.testing.assert_allclose(b[i], s, rtol=1e-6, atol=1e-7), batched, single
        )
