"""Block-diagonal GRU: the default sequence backbone of the RSSM (DreamerV3 reference, `blocks` groups)."""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbrl_jax.errors import ConfigError
from mbrl_jax.nets.layers import GroupedDense, dense_init, from_groups, to_groups
from mbrl_jax.settings import POSITIVE, setting


@dataclasses.dataclass(frozen=True)
class GRUConfig:
    blocks: int = setting(8, "block-diagonal groups of the GRU (wm.deter must divide by it)", POSITIVE)


def check_gru(wm: Any, path: str) -> None:
    if wm.deter % wm.gru.blocks:
        raise ConfigError(f"{path}.deter={wm.deter} must be divisible by {path}.gru.blocks={wm.gru.blocks}")


def make_block_gru(wm: Any) -> BlockGRU:
    return BlockGRU(wm.deter, wm.hidden, wm.gru.blocks)


def block_init(blocks: int):
    """Truncated normal with the fan-in of the whole block-diagonal layer, blocks x per-block input (as the
    DreamerV3 reference's BlockLinear computes it from the flat shape), not the per-block input alone: a
    variance scale of 1/blocks over the per-block fan-in."""
    return nn.initializers.variance_scaling(1.0 / blocks, "fan_in", "truncated_normal", batch_axis=(0,))


class BlockGRU(nn.Module):
    """One recurrent step h_t = f(h_{t-1}, z_{t-1}, a_{t-1}) on a group-major state.

    The previous deterministic state, stochastic state and action are each projected to `hidden` units
    (Dense -> RMSNorm -> SiLU); the result is appended to every block of h, and block-diagonal layers compute
    the GRU gates per block, so the cost grows with deter^2 / blocks instead of deter^2. The update gate is
    biased by -1 so the state is kept by default early in training.

    h is taken and returned group-major, [g, B, D/g] (`to_groups` of the flat [B, D] state): XLA's CPU and
    GPU batched matmuls run 2-3x faster on that layout than on [B, g, D/g], and a caller that loops over
    time keeps h in it, so nothing is transposed per step (h's own projection is a `GroupedDense`).
    """

    deter: int
    hidden: int
    blocks: int
    parallel = False
    grouped = True  # the state is group-major: the RSSM's layers read it per group (GroupedDense)

    def to_state(self, deter: jax.Array) -> jax.Array:
        """[B, D] -> the state, [g, B, D/g]."""
        return to_groups(deter, self.blocks)

    def to_deter(self, state: jax.Array) -> jax.Array:
        """[g, B, D/g] -> [B, D]."""
        return from_groups(state)

    @nn.compact
    def __call__(self, grouped: jax.Array, stoch: jax.Array, action: jax.Array) -> jax.Array:
        # grouped: [g, B, D/g], stoch: [B, S*K], action: [B, A] -> [g, B, D/g]
        g, d = self.blocks, self.deter // self.blocks
        assert grouped.shape[0] == g and grouped.shape[-1] == d, (grouped.shape, g, d)
        action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))
        # Named as nn.Dense would auto-name them, so the parameters match the flat-layout GRU's.
        parts = [GroupedDense(self.hidden, name="Dense_0")(grouped)]
        for i, x in enumerate((stoch, action), 1):
            parts.append(nn.Dense(self.hidden, kernel_init=dense_init, name=f"Dense_{i}")(x))
        parts = [jax.nn.silu(nn.RMSNorm(epsilon=1e-4)(x)) for x in parts]
        inputs = jnp.concatenate(parts, -1)  # [B, 3*hidden], shared by every block
        batch = grouped.shape[1:-1]
        x = jnp.concatenate([grouped, jnp.broadcast_to(inputs, (g, *inputs.shape))], -1)
        x = self._block_linear("hidden", x, d)
        rms = jnp.sqrt(jnp.mean(jnp.square(x), axis=(0, -1), keepdims=True) + 1e-4)
        scale = self.param("hidden_norm", nn.initializers.ones, (g, *([1] * len(batch)), d))
        x = jax.nn.silu(x / rms * scale)
        gates = self._block_linear("gates", x, 3 * d)
        reset, cand, update = jnp.split(gates, 3, -1)
        reset = jax.nn.sigmoid(reset)
        cand = jnp.tanh(reset * cand)
        update = jax.nn.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * grouped

    def _block_linear(self, name: str, x: jax.Array, units: int) -> jax.Array:
        """[g, B, in] -> [g, B, units], one kernel per group."""
        kernel = self.param(f"{name}_kernel", block_init(self.blocks), (self.blocks, x.shape[-1], units))
        bias = self.param(f"{name}_bias", nn.initializers.zeros, (self.blocks, *([1] * (x.ndim - 2)), units))
        return jnp.einsum("g...i,gio->g...o", x, kernel) + bias
