"""Host envs: the Gymnasium adapter against hand-stepped Gymnasium envs, and the host loop's runs, errors and
resume (mbrl_jax.envs.gymnasium_env, mbrl_jax.host_loop)."""

import dataclasses
import shutil

import gymnasium
import jax
import numpy as np
import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import HostVecEnv, env_spec, make_host_env
from mbrl_jax.logging import read_metrics
from mbrl_jax.memory import check_memory
from mbrl_jax.parallel import check_devices
from mbrl_jax.runner import train

CARTPOLE = "gymnasium:CartPole-v1"
SHORT = "mbrl_jax_test/CartPoleShort-v0"  # CartPole cut at 6 steps: episodes end by truncation too
gymnasium.register(
    id=SHORT, entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv", max_episode_steps=6
)
# A host-loop run: prefill 64 steps, then 4 chunks of 100 steps; a checkpoint every 2 chunks.
SMALL = {
    "env.name": CARTPOLE,
    "run.steps": 464,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 200,
    "replay.prefill": 64,
    "replay.batch_length": 16,
}


def _hand_rollout(env_id: str, seed: int, n: int, actions: np.ndarray) -> list[dict]:
    """The expected TimeStep fields, from n plain Gymnasium envs stepped by hand in the DreamerV3 convention:
    after an episode ends, the next call resets that env (unseeded, as auto-reset does) with reward 0."""
    envs = [gymnasium.make(env_id) for _ in range(n)]
    for i, env in enumerate(envs):
        env.reset(seed=seed + i)
    last, ret, length = [False] * n, [0.0] * n, [0] * n
    out = []
    for action in actions:
        row = {k: [] for k in ("obs", "reward", "is_first", "is_last", "is_terminal", "ret", "len")}
        for i, env in enumerate(envs):
            if last[i]:
                o, r, term, trunc = env.reset()[0], 0.0, False, False
                ret[i], length[i], first = 0.0, 0, True
            else:
                o, r, term, trunc, _ = env.step(int(action[i]))
                ret[i], length[i], first = ret[i] + r, length[i] + 1, False
            last[i] = term or trunc
            for k, v in zip(row, (o, r, first, last[i], term, ret[i], length[i]), strict=True):
                row[k].append(v)
        out.append(row)
    return out


@pytest.mark.parametrize("env_id", ["CartPole-v1", SHORT])
def test_gymnasium_timesteps_match_hand_stepped_envs(env_id):
    n, steps = 3, 40
    actions = np.random.default_rng(0).integers(0, 2, (steps, n))
    env = make_host_env("gymnasium:" + env_id, n)
    first = env.reset(seed=7)
    assert first.is_first.all() and not first.is_last.any() and first.obs["vector"].dtype == np.float32
    expected = _hand_rollout(env_id, 7, n, actions)
    hand_first = [gymnasium.make(env_id).reset(seed=7 + i)[0] for i in range(n)]
    np.testing.assert_array_equal(first.obs["vector"], np.asarray(hand_first, np.float32))
    firsts = 0
    for action, want in zip(actions, expected, strict=True):
        ts = env.step(action)
        np.testing.assert_array_equal(ts.obs["vector"], np.asarray(want["obs"], np.float32))
        np.testing.assert_array_equal(ts.reward, np.asarray(want["reward"], np.float32))
        np.testing.assert_array_equal(ts.is_first, want["is_first"])
        np.testing.assert_array_equal(ts.is_last, want["is_last"])
        np.testing.assert_array_equal(ts.is_terminal, want["is_terminal"])
        np.testing.assert_array_equal(ts.episode_return, np.asarray(want["ret"], np.float32))
        np.testing.assert_array_equal(ts.episode_length, want["len"])
        assert not (ts.is_first & ts.is_last).any()
        assert (ts.reward[ts.is_first] == 0).all() and (ts.episode_length[ts.is_first] == 0).all()
        firsts += ts.is_first.sum()
    assert firsts >= n  # episode boundaries were crossed


def test_gymnasium_spec_and_truncation_flags():
    spec = env_spec(CARTPOLE)
    assert spec.obs_shapes == {"vector": (4,)} and spec.discrete and spec.action_dim == 2
    assert spec.max_episode_steps == 500
    assert make_host_env(CARTPOLE, 2).spec == spec
    pendulum = env_spec("gymnasium:Pendulum-v1")
    assert not pendulum.discrete and pendulum.action_dim == 1 and pendulum.max_episode_steps == 200
    env = make_host_env("gymnasium:" + SHORT, 2)
    env.reset(seed=0)
    ends = []
    for t in range(14):
        ts = env.step(np.full(2, t % 2))  # alternating pushes keep the pole up: the limit ends episodes
        ends.append((ts.is_last.copy(), ts.is_terminal.copy()))
    truncated = [last & ~term for last, term in ends]
    assert np.any(truncated), "the 6-step limit should end episodes as truncations"


def test_gymnasium_continuous_actions_are_rescaled():
    env = make_host_env("gymnasium:Pendulum-v1", 2)
    np.testing.assert_allclose(env._env_action(np.array([[-1.0], [1.0]])), [[-2.0], [2.0]])
    np.testing.assert_allclose(env._env_action(np.array([[5.0], [0.0]])), [[2.0], [0.0]])  # clipped


def test_bad_host_env_names_fail_before_compiling():
    with pytest.raises(ConfigError, match=r"'CartPol-v1' is not a registered Gymnasium env.*CartPole-v1"):
        make_config("debug", **{"env.name": "gymnasium:CartPol-v1"})
    with pytest.raises(ConfigError, match="gymnasium:<id>"):
        make_config("debug", **{"env.name": "CartPoleX-v1"})
    with pytest.raises(ConfigError, match="host env is one set of envs on the host, which feeds one device"):
        make_config("debug", **{"env.name": CARTPOLE, "run.devices": 2})
    config = make_config("debug", **{"env.name": CARTPOLE})  # the healthy name passes
    check_devices(config)
    assert check_memory(config).replay > 0  # the CLI's memory check reads the host loop's state shapes
    check_devices(config, [0, 1])  # a host-loop sweep (tests/test_host_sweep.py)
    check_devices(make_config("debug"), [0, 1])  # a gymnax sweep is fine
    with pytest.raises(ConfigError, match="agent='tdmpc2' needs"):  # the agents' own checks still run
        make_config("tdmpc2", **{"env.name": CARTPOLE})
    with pytest.raises(ValueError, match="not a host env"):
        make_host_env("CartPole-v1", 2)


def _params(state):
    return jax.tree.leaves(jax.device_get(state.agent.params))


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("host_straight")
    state, records = train(make_config("debug", **SMALL), logdir, progress=False)
    return logdir, state, records


def test_host_loop_run_learns_and_stores_episode_starts(straight_run):
    _, state, records = straight_run
    assert [r["env_steps"] for r in records] == [164, 264, 364, 464]
    for r in records:
        losses = {k: v for k, v in r.items() if k.startswith("loss")}
        assert losses and all(np.isfinite(v) for v in losses.values())
    assert records[-1]["updates"] > 0 and "eval_return" in records[-1]
    assert sum(r["episodes"] for r in records) > 0 and records[0]["episode_return"] > 0
    data = jax.device_get(state.replay.data)
    written = int(state.replay.written)
    assert written == 464 // 2  # every env step (prefill included) is stored once, per env
    first, action = data["is_first"][:, :written], data["action"][:, :written]
    assert first[:, 0].all() and first.sum() > 2  # the reset, and later episode starts
    assert (action[first] == 0).all()  # the action that led to an episode's first step is zeroed
    np.testing.assert_array_equal(action[~first].sum(-1), 1.0)  # elsewhere: the one-hot action taken
    last = data["is_last"][:, :written]
    # an episode start follows each episode end in the same env (the NEXT_STEP auto-reset)
    np.testing.assert_array_equal(first[:, 1:][last[:, :-1]], True)


def test_host_resume_is_deterministic_and_exact_up_to_the_checkpoint(tmp_path, straight_run):
    straight_dir, _, _ = straight_run
    config = make_config("debug", **SMALL)
    first = tmp_path / "a"
    train(config, first, progress=False, stop_after_chunks=3)  # checkpoint after chunk 2; chunk 3 lost
    assert len(read_metrics(first)) == 3
    second = tmp_path / "b"
    shutil.copytree(first, second)
    state_a, _ = train(config, first, progress=False)
    state_b, _ = train(config, second, progress=False)
    rows_a, rows_b, straight = read_metrics(first), read_metrics(second), read_metrics(straight_dir)
    assert [r["env_steps"] for r in rows_a] == [164, 264, 364, 464]
    assert rows_a[:2] == straight[:2]  # the checkpoint holds exactly the uninterrupted run's state
    assert rows_a == rows_b  # the same checkpoint resumes to the same run: fresh resets seeded from the state
    for x, y in zip(_params(state_a), _params(state_b), strict=True):
        np.testing.assert_array_equal(x, y)
    # the episodes in flight were restarted: the step stored at the resume point is an episode start
    data = jax.device_get(state_a.replay.data)
    resumed_at = 264 // 2
    assert data["is_first"][:, resumed_at].all() and (data["action"][:, resumed_at] == 0).all()


def test_envpool_names_need_envpool(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "envpool", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"envpool names need the envpool package \(>= 1.2\)"):
        make_config("debug", **{"env.name": "envpool:CartPole-v1"})


def test_envpool_timesteps_match_a_hand_stepped_pool():
    import envpool

    with pytest.raises(ConfigError, match="'CartPol-v1' is not an envpool task.*CartPole-v1"):
        make_config("debug", **{"env.name": "envpool:CartPol-v1"})
    n, steps = 3, 60
    env = make_host_env("envpool:CartPole-v1", n)
    assert env.spec == dataclasses.replace(env_spec(CARTPOLE), name="envpool:CartPole-v1")
    first = env.reset(seed=5)
    raw = envpool.make("CartPole-v1", env_type="gymnasium", num_envs=n, batch_size=n, seed=5)
    obs, _ = raw.reset()
    np.testing.assert_array_equal(first.obs["vector"], obs)
    actions = np.random.default_rng(1).integers(0, 2, (steps, n))
    last, ret, firsts = np.zeros(n, bool), np.zeros(n, np.float32), 0
    for action in actions:
        ts = env.step(action)
        obs, reward, term, trunc, _ = raw.step(action)
        np.testing.assert_array_equal(ts.obs["vector"], obs)
        np.testing.assert_array_equal(ts.is_first, last)  # the call after an episode's end starts the next
        np.testing.assert_array_equal(ts.reward, np.where(last, 0.0, reward))
        ret = np.where(last, 0.0, ret + reward)
        np.testing.assert_array_equal(ts.episode_return, ret)
        np.testing.assert_array_equal(ts.is_last, (term | trunc) & ~last)
        np.testing.assert_array_equal(ts.is_terminal, term & ~last)
        last, firsts = ts.is_last, firsts + ts.is_first.sum()
    assert firsts >= n
    pong = make_host_env("envpool:Pong-v5", 2)  # DreamerV3's Atari frames: 64 x 64 RGB, channels last
    assert pong.spec.obs_shapes == {"image": (64, 64, 3)} and pong.spec.action_dim == 6
    image = pong.reset(seed=0).obs["image"]
    assert image.shape == (2, 64, 64, 3) and image.dtype == np.uint8 and image.max() > 0


def test_envpool_cartpole_host_loop_run(tmp_path):
    settings = {**SMALL, "env.name": "envpool:CartPole-v1", "env.loop": "host", "run.steps": 264}
    config = make_config("debug", **settings)
    state, records = train(config, tmp_path, progress=False)
    assert [r["env_steps"] for r in records] == [164, 264]
    assert all(np.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    data = jax.device_get(state.replay.data)
    first, action = data["is_first"][:, :132], data["action"][:, :132]
    assert first.sum() > 2 and (action[first] == 0).all()
    np.testing.assert_array_equal(action[~first].sum(-1), 1.0)


def test_sticky_actions_are_refused_where_they_do_not_apply():
    with pytest.raises(ConfigError, match=r"env.sticky_actions=0.0 applies to Atari tasks on envpool"):
        make_config("debug", **{"env.sticky_actions": 0.0})  # CartPole on gymnax
    with pytest.raises(ConfigError, match=r"env.sticky_actions=1.5 must be in \[0, 1\]"):
        make_config("debug", **{"env.sticky_actions": 1.5})


@pytest.mark.slow  # compiles a Pong program with 64 x 64 frames
def test_envpool_pong_from_pixels_through_chunks_and_resume_on_the_host_loop(tmp_path):
    """Atari from pixels with the atari100k env settings on the host loop: chunks of act, store and learn,
    and a run cut after its first checkpoint resumes to the uninterrupted run's records up to there and runs
    to the end. (The compiled loop's Pong runs, as sweeps and single runs: tests/test_envpool_sweep.py.)"""
    settings = {
        **SMALL,
        "env.name": "envpool:Pong-v5",
        "env.loop": "host",
        "env.sticky_actions": 0.0,
        "run.steps": 160,
        "run.chunk_steps": 48,
        "run.checkpoint_every": 48,
        "run.eval_episodes": 1,
        "run.eval_steps": 30,
        "replay.train_ratio": 16.0,  # an update every 4 env steps: the test checks the plumbing, not learning
        "replay.capacity": 256,  # holds the run's 160 steps (debug's 4,000 frames are 50 MB a checkpoint)
    }
    config = make_config("atari100k", "debug", **settings)
    env = make_host_env(config.env.name, 1, config.env.sticky_actions)
    assert env.pool.spec.config.repeat_action_probability == 0.0 and not env.pool.spec.config.episodic_life
    state, records = train(config, tmp_path / "straight", progress=False)
    assert [r["env_steps"] for r in records] == [112, 160]
    assert all(np.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    frames = jax.device_get(state.replay.data["obs"]["image"])
    assert frames.dtype == np.uint8 and frames.shape[-3:] == (64, 64, 3) and frames[:, :80].max() > 0
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "straight", cut)
    shutil.rmtree(cut / "checkpoints" / "160")  # as if stopped after its first checkpoint, at 112
    resumed, _ = train(config, cut, progress=False)
    rows = read_metrics(cut)
    assert [r["env_steps"] for r in rows] == [112, 160] and rows[0] == records[0]
    assert int(resumed.env_steps) == int(state.env_steps)


class DictCartPole(gymnasium.Env):
    """CartPole whose observation is a Dict, as DMC's are: a vector key, and two scalar keys (shape ())."""

    def __init__(self):
        from gymnasium import spaces
        from gymnasium.envs.classic_control.cartpole import CartPoleEnv

        self.inner = CartPoleEnv()
        self.action_space = self.inner.action_space
        scalar = spaces.Box(-np.inf, np.inf, (), np.float64)
        cart = spaces.Box(-np.inf, np.inf, (2,), np.float64)
        self.observation_space = spaces.Dict({"cart": cart, "angle": scalar, "angle_rate": scalar})

    @staticmethod
    def _split(obs):
        obs = obs.astype(np.float64)
        return {"cart": obs[:2], "angle": obs[2], "angle_rate": obs[3]}

    def reset(self, *, seed=None, options=None):
        obs, info = self.inner.reset(seed=seed)
        return self._split(obs), info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.inner.step(action)
        return self._split(obs), reward, terminated, truncated, info


DICT_CARTPOLE = "mbrl_jax_test/DictCartPole-v0"
gymnasium.register(id=DICT_CARTPOLE, entry_point=DictCartPole, max_episode_steps=500)


def test_dict_observations_keep_their_keys_and_train(tmp_path):
    """A Dict observation space reaches the agent key by key (scalars as vectors of one, float64 as float32),
    with the values of the plain env stepped by hand, and a host-loop run trains on it."""
    name = "gymnasium:" + DICT_CARTPOLE
    spec = env_spec(name)
    assert spec.obs_shapes == {"cart": (2,), "angle": (1,), "angle_rate": (1,)}
    n, steps = 2, 40
    env = make_host_env(name, n)
    actions = np.random.default_rng(3).integers(0, 2, (steps, n))
    first = env.reset(seed=11)
    hand_first = np.asarray([gymnasium.make("CartPole-v1").reset(seed=11 + i)[0] for i in range(n)])
    expected = [np.asarray(w["obs"]) for w in _hand_rollout("CartPole-v1", 11, n, actions)]
    rows = [(first, hand_first)] + [(env.step(a), w) for a, w in zip(actions, expected, strict=True)]
    for ts, want in rows:
        assert {k: v.dtype for k, v in ts.obs.items()} == dict.fromkeys(spec.obs_shapes, np.float32)
        joined = np.concatenate([ts.obs["cart"], ts.obs["angle"], ts.obs["angle_rate"]], -1)
        np.testing.assert_array_equal(joined, want.astype(np.float32))
    settings = {**SMALL, "env.name": name, "run.steps": 164}
    state, records = train(make_config("debug", **settings), tmp_path, progress=False)
    assert records and all(np.isfinite(v) for r in records for k, v in r.items() if k.startswith("loss"))
    stored = jax.device_get(state.replay.data["obs"])
    assert {k: v.shape[2:] for k, v in stored.items()} == spec.obs_shapes
    assert all(np.abs(v[:, :100]).sum() > 0 for v in stored.values())  # every key was stored


class CountingEnvs(HostVecEnv):
    """A toy backend: env i's reward on its t-th env step of an episode is t * (i + 1); its episodes are
    truncated after `limits[i]` env steps; NEXT_STEP auto-reset; the observation is {"t": t} (a scalar)."""

    def __init__(self, limits, repeat):
        from gymnasium import spaces

        from mbrl_jax.envs.gymnasium_env import spaces_spec

        self.limits = np.asarray(limits)
        obs_space = spaces.Dict({"t": spaces.Box(0, np.inf, (), np.float64)})
        spec = spaces_spec("toy", obs_space, spaces.Discrete(2), int(self.limits.max()) // repeat)
        self._start("toy", len(limits), spec, spaces.Discrete(2), repeat)

    def _reset(self, seed):
        self.t, self.done = np.zeros(self.num_envs), np.zeros(self.num_envs, bool)
        return {"t": self.t.copy()}

    def _step(self, action):
        restart = self.done
        self.t = np.where(restart, 0, self.t + 1)
        reward = np.where(restart, 0.0, self.t * (np.arange(self.num_envs) + 1))
        self.done = ~restart & (self.t >= self.limits)
        return {"t": self.t.copy()}, reward, np.zeros(self.num_envs, bool), self.done.copy()


def test_action_repeat_sums_rewards_and_refuses_envs_out_of_step():
    env = CountingEnvs([4, 4], repeat=2)  # 2 agent steps per episode
    assert env.spec.max_episode_steps == 2 and env.spec.obs_shapes == {"t": (1,)}
    env.reset(0)
    zero = np.zeros(2, int)
    ts = env.step(zero)  # env steps 1, 2: rewards (1 + 2) * (i + 1)
    np.testing.assert_array_equal(ts.reward, [3, 6])
    np.testing.assert_array_equal(ts.obs["t"], [[2], [2]])
    assert not ts.is_last.any()
    ts = env.step(zero)  # env steps 3, 4: the episodes end on the repeat's last step
    np.testing.assert_array_equal(ts.reward, [7, 14])
    np.testing.assert_array_equal(ts.episode_return, [10, 20])
    np.testing.assert_array_equal(ts.episode_length, [2, 2])
    assert ts.is_last.all() and not ts.is_terminal.any()
    ts = env.step(zero)  # the restart call: one env step, which the backend spends on the reset
    assert ts.is_first.all() and (ts.reward == 0).all()
    np.testing.assert_array_equal(ts.obs["t"], [[0], [0]])
    ts = env.step(zero)
    np.testing.assert_array_equal(ts.reward, [3, 6])
    odd = CountingEnvs([4, 3], repeat=2)  # env 1's episode would end in the middle of a repeat
    odd.reset(0)
    odd.step(zero)
    with pytest.raises(RuntimeError, match=r"env\(s\) \[1\] ended out of step .* action repeat of 2"):
        odd.step(zero)


def test_action_repeat_is_refused_where_it_does_not_apply():
    with pytest.raises(ConfigError, match=r"env.action_repeat=2 applies to DMC tasks on envpool"):
        make_config("debug", **{"env.action_repeat": 2})  # CartPole on gymnax
    with pytest.raises(ConfigError, match=r"env.action_repeat=2 applies to DMC tasks .*'gymnasium:CartPole"):
        make_config("debug", **{"env.name": CARTPOLE, "env.action_repeat": 2})
    with pytest.raises(ConfigError, match=r"env.action_repeat=0 must be"):
        make_config("debug", **{"env.action_repeat": 0})


def test_envpool_dmc_dict_observations_and_action_repeat():
    """envpool's DMC Walker Walk with action repeat 2 equals a repeat-1 pool of the same seed stepped twice
    per action: observations, summed rewards, and episodes of 500 agent steps (1,000 env steps)."""
    import envpool

    name, n = "envpool:WalkerWalk-v1", 2
    env = make_host_env(name, n, action_repeat=2)
    assert env.spec.obs_shapes == {"orientations": (14,), "height": (1,), "velocity": (9,)}
    assert env.spec.max_episode_steps == 500 and not env.spec.discrete and env.spec.action_dim == 6
    raw = envpool.make("WalkerWalk-v1", env_type="gymnasium", num_envs=n, batch_size=n, seed=4)
    first, (obs, _) = env.reset(seed=4), raw.reset()
    np.testing.assert_array_equal(first.obs["velocity"], obs["velocity"].astype(np.float32))
    rng = np.random.default_rng(0)
    for t in range(501):
        action = rng.uniform(-1, 1, (n, 6))
        ts = env.step(action)
        total = np.zeros(n)
        for _ in range(1 if t == 500 else 2):
            obs, reward, term, trunc, _ = raw.step(env._env_action(action))  # the adapter's float32 action
            total += reward
        # the restart call's reward is 0 by this project's convention (envpool's DMC reports a stale one)
        np.testing.assert_allclose(ts.reward, 0.0 if t == 500 else total, rtol=1e-6)
        for key in ("orientations", "velocity"):
            np.testing.assert_array_equal(ts.obs[key], obs[key].astype(np.float32))
        np.testing.assert_array_equal(ts.obs["height"][:, 0], obs["height"].astype(np.float32))
        assert ts.is_last.all() == (t == 499) and ts.is_first.all() == (t == 500)
    with pytest.raises(ConfigError, match=r"episodes last 1000 env steps, not a multiple of the repeat"):
        make_config("debug", **{"env.name": name, "env.action_repeat": 3})
    with pytest.raises(ConfigError, match=r"env.loop=compiled .*its observations are a Dict"):
        make_config("dmc", **{"env.loop": "compiled"})
    assert make_config("dmc").env.action_repeat == 2
