"""Building blocks shared by every network: fan-in initialised dense layers, RMSNorm, SiLU MLPs."""

from __future__ import annotations

import flax.linen as nn
import jax

# DreamerV3 initialises weights from a truncated normal scaled by fan-in.
dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class MLP(nn.Module):
    """`layers` x (Dense -> RMSNorm -> SiLU). The dense layer has no bias: the norm's scale follows it."""

    units: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.layers):
            x = nn.Dense(self.units, use_bias=False, kernel_init=dense_init)(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4)(x))
        return x


class Head(nn.Module):
    """MLP torso and a linear output. `zero_init` starts the output at zero (reward and critic heads,
    DreamerV3): predictions start at 0 and the first gradients do not swing the targets around."""

    out: int
    units: int
    layers: int
    zero_init: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = MLP(self.units, self.layers)(x)
        init = nn.initializers.zeros if self.zero_init else dense_init
        return nn.Dense(self.out, kernel_init=init)(x)
