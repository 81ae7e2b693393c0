"""DreamSmooth: gaussian and uniform smoothing equal the authors' scipy 'nearest' filters on each episode
alone (`gaussian_filter1d`; `ndimage.convolve` with a box of delta, which for an even delta is not
`uniform_filter1d`), EMA equals a hand loop, and the windows the trainer samples get the whole-episode values
from the replay."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.ndimage import convolve, gaussian_filter1d, uniform_filter1d

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.replay import replay_add, replay_init, replay_sample
from mbrl_jax.returns import smooth_rewards, smoothing_margins
from mbrl_jax.trainer import smoothed_window_rewards

# Episode lengths of two rows, 1- and 2-step episodes included: every filter reaches across a boundary.
ROWS = [[5, 1, 13, 2, 19, 8], [30, 3, 1, 14]]


def episodes(lengths: list[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Sparse rewards (a few large spikes, as DreamSmooth targets) and is_first for consecutive episodes."""
    total = sum(lengths)
    reward = np.where(rng.random(total) < 0.2, rng.normal(0, 5, total), 0.0).astype(np.float32)
    is_first = np.zeros(total, bool)
    is_first[np.cumsum([0, *lengths[:-1]])] = True
    return reward, is_first


def per_episode(reward: np.ndarray, is_first: np.ndarray, filter_one) -> np.ndarray:
    """`filter_one` applied to each episode (from one is_first to the step before the next) on its own."""
    bounds = [*np.flatnonzero(is_first), len(reward)]
    return np.concatenate(
        [filter_one(reward[a:b].astype(np.float64)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    )


def box(delta: int):
    """The authors' uniform smoothing (dreamsmooth's `uniform_rewards`): a box of delta convolved."""
    return lambda r: convolve(r, np.full(delta, 1.0 / delta), mode="nearest")


def ema_loop(reward: np.ndarray, is_first: np.ndarray, alpha: float) -> np.ndarray:
    out, prev = np.zeros(len(reward)), 0.0
    for t, r in enumerate(reward.astype(np.float64)):
        prev = r if is_first[t] else alpha * prev + (1 - alpha) * r
        out[t] = prev
    return out


def batch(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rows = [episodes(lengths, rng) for lengths in ROWS]
    length = min(len(r) for r, _ in rows)
    return np.stack([r[:length] for r, _ in rows]), np.stack([f[:length] for _, f in rows])


@pytest.mark.parametrize("sigma", [0.7, 3.0, 5.5])
def test_gaussian_equals_scipy_per_episode(sigma):
    reward, is_first = batch(0)
    got = np.asarray(smooth_rewards(jnp.asarray(reward), jnp.asarray(is_first), "gaussian", sigma=sigma))
    for row in range(len(reward)):
        want = per_episode(reward[row], is_first[row], lambda r: gaussian_filter1d(r, sigma, mode="nearest"))
        np.testing.assert_allclose(got[row], want, atol=1e-5)


@pytest.mark.parametrize("delta", [1, 2, 4, 9, 12])
def test_uniform_equals_scipy_convolve_per_episode(delta):
    reward, is_first = batch(1)
    got = np.asarray(smooth_rewards(jnp.asarray(reward), jnp.asarray(is_first), "uniform", delta=delta))
    for row in range(len(reward)):
        want = per_episode(reward[row], is_first[row], box(delta))
        np.testing.assert_allclose(got[row], want, atol=1e-5)
        if delta % 2 == 0:  # the two scipy filters differ here: the test can tell which one the code follows
            centred = lambda r: uniform_filter1d(r, delta, mode="nearest")  # noqa: E731
            other = per_episode(reward[row], is_first[row], centred)
            assert np.abs(got[row] - other).max() > 1e-3


@pytest.mark.parametrize("delta", [1, 2, 5, 8])
def test_uniform_margins_are_the_reach_of_scipy_convolve(delta):
    """smoothing_margins (what the trainer reads around a window) = how far convolve spreads an impulse."""
    impulse = np.zeros(41)
    impulse[20] = 1.0
    reach = 20 - np.flatnonzero(box(delta)(impulse))  # output i reads input i + offset; offsets it reads
    assert smoothing_margins("uniform", 3.0, delta, 0.33) == (-reach.min(), reach.max())


@pytest.mark.parametrize("alpha", [0.0, 0.33, 0.9])
def test_ema_equals_a_loop_that_restarts_each_episode(alpha):
    reward, is_first = batch(2)
    got = np.asarray(smooth_rewards(jnp.asarray(reward), jnp.asarray(is_first), "ema", alpha=alpha))
    for row in range(len(reward)):
        np.testing.assert_allclose(got[row], ema_loop(reward[row], is_first[row], alpha), atol=1e-5)


def test_nothing_leaks_across_an_episode_start():
    """A spike at the last step of one episode changes nothing in the next."""
    reward = np.zeros((1, 20), np.float32)
    reward[0, 9] = 10.0
    is_first = np.zeros((1, 20), bool)
    is_first[0, [0, 10]] = True
    for method in ("gaussian", "uniform", "ema"):
        got = np.asarray(smooth_rewards(jnp.asarray(reward), jnp.asarray(is_first), method))
        assert (got[0, 10:] == 0).all(), method
        assert got[0, :10].sum() > 0, method
    none = smooth_rewards(jnp.asarray(reward), jnp.asarray(is_first), "none")
    np.testing.assert_array_equal(np.asarray(none), reward)


# The replay's writes and sampling compiled once for all parametrizations (the shapes are the same).
ADD = jax.jit(replay_add)
SAMPLE = jax.jit(replay_sample, static_argnums=(2, 3))


@pytest.mark.parametrize("method,delta", [("gaussian", 9), ("uniform", 9), ("uniform", 4), ("ema", 9)])
def test_sampled_windows_get_the_whole_episode_values(method, delta):
    """Windows sampled from a wrapped ring buffer, their rewards smoothed as the trainer does, equal the
    per-episode filter over each env's valid data (boundaries at is_first and at the oldest valid step)."""
    num_envs, capacity, writes, length = 2, 60, 97, 16
    rng = np.random.default_rng(3)
    streams = [episodes(list(rng.integers(1, 25, 12)), rng) for _ in range(num_envs)]
    replay = replay_init(
        {"reward": np.zeros(num_envs, np.float32), "is_first": np.zeros(num_envs, bool)}, capacity
    )
    for t in range(writes):
        step = {
            "reward": np.array([s[0][t] for s in streams]),
            "is_first": np.array([s[1][t] for s in streams]),
        }
        replay = ADD(replay, step)
    config = make_config("debug", **{"replay.reward_smoothing": method, "replay.smooth_delta": delta}).replay
    filters = {
        "gaussian": lambda r: gaussian_filter1d(r, config.smooth_sigma, mode="nearest"),
        "uniform": box(config.smooth_delta),
    }
    oldest = writes - capacity
    want = []
    for reward, is_first in streams:
        r, f = reward[oldest:writes], is_first[oldest:writes].copy()
        f[0] = True  # the oldest valid step starts what the replay still holds of its episode
        want.append(
            ema_loop(r, f, config.smooth_alpha) if method == "ema" else per_episode(r, f, filters[method])
        )
    _, index, replay = SAMPLE(replay, jax.random.PRNGKey(0), 64, length)
    got = np.asarray(jax.jit(smoothed_window_rewards, static_argnums=2)(replay, index, config))
    start, env = np.asarray(index.start), np.asarray(index.env)
    for b in range(64):
        logical = start[b] - oldest + np.arange(length)
        np.testing.assert_allclose(got[b], want[int(env[b])][logical], atol=1e-5)


def test_smoothing_settings_are_validated():
    with pytest.raises(ConfigError, match=r"replay.reward_smoothing='box' must be one of 'none'"):
        make_config("debug", **{"replay.reward_smoothing": "box"})
    with pytest.raises(ConfigError, match=r"replay.smooth_alpha=1.0 must be in \[0, 1\)"):
        make_config("debug", **{"replay.smooth_alpha": 1.0})
    with pytest.raises(ConfigError, match=r"replay.smooth_delta=0 must be >= 1"):
        make_config("debug", **{"replay.smooth_delta": 0})
    ok = make_config("debug", **{"replay.reward_smoothing": "ema", "replay.smooth_alpha": 0.0})
    assert ok.replay.reward_smoothing == "ema"
    assert make_config("debug").replay.reward_smoothing == "none"  # off by default
