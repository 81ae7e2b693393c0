"""Observations of every shape, as DreamerV3 takes them: arrays that are not images go flattened into the
vector encoder, Discrete spaces one-hot, Tuple spaces as numbered keys. Every gymnax registry env gets a spec
the agent takes, or is refused before compiling with the reason; the adapters' values equal the plain envs'
(reshaped or one-hot by numpy); a 2-D (Catch) and a Discrete (FrozenLake) observation train through chunks
and resume exactly."""

import gymnasium
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import GymnaxVecEnv, env_spec, make_host_env
from mbrl_jax.envs.base import obs_dtype
from mbrl_jax.logging import read_metrics
from mbrl_jax.runner import train

# Envs that may be refused, and the words of the reason: MNISTBandit downloads MNIST when it is built.
MAY_REFUSE = {"MNISTBandit-bsuite": "could not build this env"}


def test_every_gymnax_env_gets_a_spec_the_agent_takes_or_a_reason():
    """Spec building only (abstract evaluation, nothing compiled): the config validates (which runs the
    dreamer agent's checks), and the adapter's reset and step give the spec's keys, shapes and dtypes."""
    taken = []
    for name in gymnax.registered_envs:
        try:
            config = make_config("debug", **{"env.name": name})
        except ConfigError as err:
            assert name in MAY_REFUSE and MAY_REFUSE[name] in str(err), (name, str(err))
            continue
        spec = env_spec(name)
        assert all(len(shape) in (1, 3) for shape in spec.obs_shapes.values()), (name, spec.obs_shapes)
        env = GymnaxVecEnv(name, config.env.num_envs)
        state, ts = jax.eval_shape(env.reset, jax.random.key(0))
        action = jnp.zeros((2,), jnp.int32) if spec.discrete else jnp.zeros((2, spec.action_dim))
        _, ts2 = jax.eval_shape(env.step, state, action, jax.random.key(1))
        want = {k: ((2, *s), obs_dtype(s)) for k, s in spec.obs_shapes.items()}
        for step in (ts, ts2):
            assert {k: (v.shape, v.dtype) for k, v in step.obs.items()} == want, name
        taken.append(name)
    # Those that were refused before this adapter took them: 2-D boards and a Discrete observation.
    assert {"Catch-bsuite", "DeepSea-bsuite", "SimpleBandit-bsuite", "FrozenLake-misc"} <= set(taken)
    assert len(taken) >= len(gymnax.registered_envs) - len(MAY_REFUSE)


@pytest.mark.parametrize(
    "name,want",
    [
        ("Catch-bsuite", lambda raw: raw.reshape(len(raw), -1)),  # 10 x 5 board -> 50 floats
        ("FrozenLake-misc", lambda raw: np.eye(16, dtype=np.float32)[raw]),  # cell index -> one-hot of 16
        ("CartPole-v1", lambda raw: raw),
    ],
)
def test_gymnax_observations_are_the_envs_flattened_or_one_hot(name, want):
    """The adapter's observations against gymnax's own (reset_env / step_env vmapped by hand)."""
    env = GymnaxVecEnv(name, 3)
    key = jax.random.key(5)
    _, ts = env.reset(key)
    raw, raw_state = jax.vmap(env.env.reset_env, in_axes=(0, None))(jax.random.split(key, 3), env.params)
    np.testing.assert_array_equal(np.asarray(ts.obs["vector"]), want(np.asarray(raw)).astype(np.float32))
    assert env.spec.obs_shapes["vector"] == ts.obs["vector"].shape[1:]
    # One step (no env has ended, so none resets): the adapter splits its key as (step, reset).
    state, _ = env.reset(key)
    action = jnp.ones((3,), jnp.int32)
    _, ts = env.step(state, action, jax.random.key(6))
    k_step, _ = jax.random.split(jax.random.key(6))
    raw, *_ = jax.vmap(env.env.step_env, in_axes=(0, 0, 0, None))(
        jax.random.split(k_step, 3), raw_state, action, env.params
    )
    np.testing.assert_array_equal(np.asarray(ts.obs["vector"]), want(np.asarray(raw)).astype(np.float32))


BLACKJACK = "mbrl_jax_test/BlackjackLimited-v0"  # Blackjack with a time limit (evaluation needs one)
gymnasium.register(
    id=BLACKJACK, entry_point="gymnasium.envs.toy_text.blackjack:BlackjackEnv", max_episode_steps=20
)


@pytest.mark.parametrize(
    "name,shapes",
    [
        ("gymnasium:FrozenLake-v1", {"vector": (16,)}),
        ("gymnasium:Taxi-v4", {"vector": (500,)}),
        ("gymnasium:CliffWalking-v1", "no time limit"),
        ("gymnasium:Blackjack-v1", "no time limit"),
        ("gymnasium:" + BLACKJACK, {"0": (32,), "1": (11,), "2": (2,)}),  # a Tuple: numbered keys
    ],
)
def test_toy_text_envs_get_a_spec_or_a_reason(name, shapes):
    if isinstance(shapes, str):
        with pytest.raises(ConfigError, match=shapes):
            make_config("debug", **{"env.name": name})
    else:
        make_config("debug", **{"env.name": name})
        assert env_spec(name).obs_shapes == shapes


def test_tuple_and_discrete_observations_are_one_hot_by_key():
    """Blackjack's (player sum, dealer card, usable ace) against the plain env stepped by hand."""
    name, n = "gymnasium:" + BLACKJACK, 3
    env = make_host_env(name, n)
    hand = [gymnasium.make(BLACKJACK) for _ in range(n)]
    rows = [(env.reset(seed=4), [h.reset(seed=4 + i)[0] for i, h in enumerate(hand)])]
    rows.append((env.step(np.ones(n, np.int64)), [h.step(1)[0] for h in hand]))  # hit: the player's sum moves
    for ts, raws in rows:
        assert ts.obs.keys() == {"0", "1", "2"}
        for key, size in (("0", 32), ("1", 11), ("2", 2)):
            want = np.eye(size, dtype=np.float32)[[raw[int(key)] for raw in raws]]
            np.testing.assert_array_equal(ts.obs[key], want)
    assert not np.array_equal(rows[0][0].obs["0"], rows[1][0].obs["0"])


def test_unsupported_observation_spaces_are_refused_with_the_reason():
    from gymnasium import spaces

    from mbrl_jax.envs.gymnasium_env import spaces_spec

    act = spaces.Discrete(2)
    with pytest.raises(ConfigError, match=r"MultiDiscrete.*takes Box arrays"):
        spaces_spec("toy", spaces.MultiDiscrete([3, 4]), act, 10)
    with pytest.raises(ConfigError, match=r"float32 images of shape \(8, 8, 3\).*uint8"):
        spaces_spec("toy", spaces.Box(0, 1, (8, 8, 3), np.float32), act, 10)
    # and the healthy neighbours: a 2-D board, a rank-4 array, a nested Tuple in a Dict, MultiBinary
    board = spaces.Box(0, 1, (6, 7), np.float32)
    spec = spaces_spec(
        "toy",
        spaces.Dict(
            {
                "board": board,
                "cube": spaces.Box(0, 1, (2, 2, 2, 2)),
                "pair": spaces.Tuple((spaces.Discrete(3, start=-1), board)),
                "bits": spaces.MultiBinary(5),
            }
        ),
        act,
        10,
    )
    assert spec.obs_shapes == {"board": (42,), "cube": (16,), "pair/0": (3,), "pair/1": (42,), "bits": (5,)}


def _params(state):
    return jax.tree.leaves(jax.device_get(state.agent.params))


# Tiny runs: 32 prefill steps, then chunks of 48 env steps; a checkpoint after every second chunk.
RUN = {
    "run.steps": 224,
    "run.chunk_steps": 48,
    "run.checkpoint_every": 96,
    "run.eval_episodes": 1,
    "run.eval_steps": 20,
    "replay.prefill": 32,
    "replay.batch_length": 8,
}


@pytest.mark.parametrize("name", ["Catch-bsuite", "gymnasium:FrozenLake-v1"])
def test_a_board_and_a_discrete_observation_train_and_resume_exactly(tmp_path, name):
    """Catch's 10 x 5 board (gymnax, compiled loop) and FrozenLake's Discrete cell (Gymnasium, host loop):
    a run trains through its chunks with finite losses, and one stopped after 3 chunks (checkpoint after
    chunk 2) and resumed ends with the uninterrupted run's parameters and metrics (the compiled loop), or
    equals it up to the checkpoint (the host loop, whose envs restart their episodes on a resume, as
    tests/test_host_envs.py checks for CartPole)."""
    config = make_config("debug", **{**RUN, "env.name": name})
    state, records = train(config, tmp_path / "straight", progress=False, announce=False)
    assert len(records) == 4
    assert all(np.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    stored = np.asarray(jax.device_get(state.replay.data["obs"]["vector"]))
    assert stored.shape[2:] == ((50,) if name == "Catch-bsuite" else (16,))
    if name != "Catch-bsuite":  # every stored observation is one-hot
        written = stored.reshape(-1, 16)[np.abs(stored.reshape(-1, 16)).sum(-1) > 0]
        assert len(written) > 0 and np.all(written.sum(-1) == 1.0) and np.all(written.max(-1) == 1.0)
    resumed = tmp_path / "resumed"
    train(config, resumed, progress=False, announce=False, stop_after_chunks=3)
    state2, _ = train(config, resumed, progress=False, announce=False)
    rows, straight = read_metrics(resumed), read_metrics(tmp_path / "straight")
    if name.startswith("gymnasium:"):
        assert len(rows) == 4 and rows[:2] == straight[:2]
        assert all(np.isfinite(x).all() for x in _params(state2))
        return
    for a, b in zip(_params(state2), _params(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert rows == straight
