"""Building blocks shared by every network: fan-in initialised dense layers, RMSNorm, SiLU MLPs."""

from __future__ import annotations

import flax.linen as nn
import jax

# DreamerV3 initialises weights from a truncated normal scaled by fan-in.
dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def scaled_dense_init(out_scale: float):
    """`dense_init` with its standard deviation multiplied by `out_scale` (the reference's `outscale`);
    0 gives zeros."""
    if out_scale == 0.0:
        return nn.initializers.zeros
    return nn.initializers.variance_scaling(out_scale**2, "fan_in", "truncated_normal")


class MLP(nn.Module):
    """`layers` x (Dense with bias -> RMSNorm -> SiLU), as the DreamerV3 reference's MLP."""

    units: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.layers):
            x = nn.Dense(self.units, kernel_init=dense_init)(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4)(x))
        return x


class Head(nn.Module):
    """MLP torso and a linear output whose initial weights are scaled by `out_scale` (DreamerV3 reference:
    0 for the reward and critic heads, so predictions start at 0; 0.01 for the policy, so the first policy is
    near uniform / near the centre of the action range; 1 elsewhere)."""

    out: int
    units: int
    layers: int
    out_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = MLP(self.units, self.layers)(x)
        return nn.Dense(self.out, kernel_init=scaled_dense_init(self.out_scale))(x)
