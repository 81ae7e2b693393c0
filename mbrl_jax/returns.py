"""Lambda returns and return normalisation of DreamerV3 (Hafner et al., "Mastering diverse control tasks
through world models", Nature 2025; arXiv:2301.04104). All arrays are time-major."""

from __future__ import annotations

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
