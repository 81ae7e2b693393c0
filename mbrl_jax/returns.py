"""Lambda returns and return normalisation of DreamerV3 (Hafner et al., "Mastering diverse control tasks
through world models", Nature 2025; arXiv:2301.04104), time-major; and DreamSmooth's reward smoothing,
batch-major ([N, L]) as the replay's windows are."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import struct

Array = jax.Array


def lambda_returns(
    rewards: Array, values: Array, discounts: Array, lambda_: float | Array, truncated: Array | None = None
) -> Array:
    """Bootstrapped lambda returns `R: [T, ...]` (DreamerV3, eq. "lambda returns"; Sutton & Barto TD(lambda)).

    Args:
      rewards: `[T, ...]`, `rewards[t] = r_{t+1}`, the reward of the transition s_t -> s_{t+1}.
      values: `[T + 1, ...]`, `values[t] = v(s_t)`; `values[T]` bootstraps the tail.
      discounts: `[T, ...]`, `discounts[t] = gamma * (1 - terminal_{t+1})`, zero when s_{t+1} is terminal.
      lambda_: scalar in [0, 1]; 0 gives one-step TD targets, 1 gives Monte Carlo returns plus bootstrap.
      truncated: optional bool `[T, ...]`; True when s_{t+1} is the last state of an episode that was cut
        without termination (time limit) and the sequence continues with a reset, so that `R_{t+1}` belongs
        to another episode. The lambda chain is then cut and bootstraps from `values[t + 1]`.

    Recursion, computed backwards with `lax.scan(reverse=True)`:
      R_T = values[T]
      R_t = rewards[t] + discounts[t] * ((1 - lambda) * values[t+1] + lambda * next_t)
      next_t = values[t+1] if truncated[t] else R_{t+1}
    so a truncated step gives R_t = rewards[t] + discounts[t] * values[t+1].
    """
    if truncated is None:
        truncated = jnp.zeros(rewards.shape, bool)
    next_values = values[1:]

    def step(ret_next: Array, xs: tuple[Array, Array, Array, Array]) -> tuple[Array, Array]:
        r, d, v_next, trunc = xs
        ret_next = jnp.where(trunc, v_next, ret_next)
        ret = r + d * ((1.0 - lambda_) * v_next + lambda_ * ret_next)
        return ret, ret

    _, returns = jax.lax.scan(step, values[-1], (rewards, discounts, next_values, truncated), reverse=True)
    return returns


@struct.dataclass
class ReturnNorm:
    """Running range of lambda returns used to scale advantages (DreamerV3, "return normalisation")."""

    low: Array  # [] float32, EMA of the low percentile of lambda returns
    high: Array  # [] float32, EMA of the high percentile


def return_norm_init() -> ReturnNorm:
    """Zero range: `return_scale` is then 1 until returns spread out."""
    return ReturnNorm(low=jnp.zeros((), jnp.float32), high=jnp.zeros((), jnp.float32))


def update_return_norm(
    norm: ReturnNorm, returns: Array, rate: float = 0.01, low_pct: float = 5.0, high_pct: float = 95.0
) -> ReturnNorm:
    """EMA update `x <- x + rate * (percentile(returns) - x)` of the 5th and 95th percentiles over all entries
    of `returns: [...]` (any shape; no gradient flows) (DreamerV3, "return normalisation")."""
    returns = jax.lax.stop_gradient(returns).astype(jnp.float32)
    low, high = jnp.percentile(returns, jnp.array([low_pct, high_pct], jnp.float32))
    return ReturnNorm(low=norm.low + rate * (low - norm.low), high=norm.high + rate * (high - norm.high))


def return_scale(norm: ReturnNorm) -> Array:
    """Advantage divisor `[]`: max(1, high - low); never amplifies small returns (DreamerV3)."""
    return jnp.maximum(1.0, norm.high - norm.low)


# ---- DreamSmooth (Lee, Abbeel & Lee, "DreamSmooth: Improving Model-based Reinforcement Learning via Reward
# Smoothing", ICLR 2024) ----------------------------------------------------------------------------------

SMOOTHINGS = ("none", "gaussian", "uniform", "ema")


def gaussian_kernel(sigma: float) -> tuple[int, list[float]]:
    """(radius, weights [2 * radius + 1]) of scipy.ndimage.gaussian_filter1d with its default truncate=4."""
    radius = int(4.0 * sigma + 0.5)
    weights = [math.exp(-0.5 * (x / sigma) ** 2) for x in range(-radius, radius + 1)]
    total = sum(weights)
    return radius, [w / total for w in weights]


def smoothing_margins(method: str, sigma: float, delta: int, alpha: float) -> tuple[int, int]:
    """Steps of history (left) and future (right) that smoothing one step reads. For EMA, which reads the
    whole episode so far, the left margin is where alpha**margin < 1e-7: older rewards change nothing
    visible in float32."""
    if method == "gaussian":
        radius, _ = gaussian_kernel(sigma)
        return radius, radius
    if method == "uniform":
        return (delta - 1) // 2, delta // 2
    if method == "ema":
        return (0 if alpha == 0.0 else math.ceil(math.log(1e-7) / math.log(alpha))), 0
    return 0, 0


def episode_bounds(starts: Array) -> tuple[Array, Array]:
    """starts: [N, L] bool, True where an episode starts (position 0 counts as a start) -> (lo, hi) [N, L]
    int32: the first and last position of the episode that holds each position."""
    L = starts.shape[-1]
    idx = jnp.broadcast_to(jnp.arange(L, dtype=jnp.int32), starts.shape)
    starts = starts.at[..., 0].set(True)
    lo = jax.lax.cummax(jnp.where(starts, idx, 0), axis=starts.ndim - 1)
    next_start = jax.lax.cummin(jnp.where(starts, idx, L), axis=starts.ndim - 1, reverse=True)
    # hi[i] = (first start after i) - 1: shift next_start left by one.
    after = jnp.concatenate([next_start[..., 1:], jnp.full(starts.shape[:-1] + (1,), L, jnp.int32)], -1)
    return lo, after - 1


def smooth_rewards(
    reward: Array, starts: Array, method: str, sigma: float = 3.0, delta: int = 9, alpha: float = 0.33
) -> Array:
    """DreamSmooth's smoothed rewards, each episode on its own (section 3 of the paper).

    reward: [N, L] float, starts: [N, L] bool (is_first; position 0 always starts a segment).
    method: 'gaussian' (scipy.ndimage.gaussian_filter1d(r, sigma, mode='nearest') per episode), 'uniform'
    (scipy.ndimage.convolve(r, np.ones(delta) / delta, mode='nearest') per episode, as the authors' code; for
    an even delta this reads one step further ahead than uniform_filter1d), 'ema' (s_0 = r_0,
    s_t = alpha * s_{t-1} + (1 - alpha) * r_t, as the authors' code), or 'none'.
    Returns [N, L] float32; no value crosses an episode start.
    """
    reward = reward.astype(jnp.float32)
    if method == "none":
        return reward
    starts = starts.astype(bool)
    if method == "ema":

        def step(prev, xs):
            r, first = xs
            s = jnp.where(first, r, alpha * prev + (1.0 - alpha) * r)
            return s, s

        first = starts.at[:, 0].set(True)
        _, out = jax.lax.scan(step, reward[:, 0], (reward.T, first.T))
        return out.T
    if method == "gaussian":
        radius, weights = gaussian_kernel(sigma)
        offsets = range(-radius, radius + 1)
    elif method == "uniform":
        # convolve flips the kernel: an even window reaches delta // 2 steps ahead, (delta - 1) // 2 back.
        offsets = range(-((delta - 1) // 2), delta // 2 + 1)
        weights = [1.0 / delta] * delta
    else:
        raise ValueError(f"unknown reward smoothing {method!r}; allowed: {', '.join(SMOOTHINGS)}")
    lo, hi = episode_bounds(starts)
    idx = jnp.arange(reward.shape[1], dtype=jnp.int32)
    out = jnp.zeros_like(reward)
    # 'nearest' inside the episode: each neighbour's index is clipped to the episode's bounds.
    for offset, weight in zip(offsets, weights, strict=True):
        out = out + weight * jnp.take_along_axis(reward, jnp.clip(idx + offset, lo, hi), axis=1)
    return out
