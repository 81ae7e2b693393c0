"""Building blocks shared by every network: fan-in initialised dense layers, RMSNorm, SiLU MLPs."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

# DreamerV3 initialises weights from a truncated normal scaled by fan-in.
dense_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def scaled_dense_init(out_scale: float):
    """`dense_init` with its standard deviation multiplied by `out_scale` (the reference's `outscale`);
    0 gives zeros."""
    if out_scale == 0.0:
        return nn.initializers.zeros
    return nn.initializers.variance_scaling(out_scale**2, "fan_in", "truncated_normal")


def to_groups(x: jax.Array, groups: int) -> jax.Array:
    """[..., D] -> group-major [groups, ..., D / groups]: feature block j of every row goes to x[j]."""
    grouped = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    return jnp.moveaxis(grouped, -2, 0)


def from_groups(grouped: jax.Array) -> jax.Array:
    """Inverse of `to_groups`: [g, ..., d] -> [..., g * d]."""
    return jnp.moveaxis(grouped, 0, -2).reshape(*grouped.shape[1:-1], -1)


class GroupedDense(nn.Module):
    """`nn.Dense` of concat(from_groups(grouped), rest) that reads `grouped` [g, ..., d] where it lies.

    The kernel has nn.Dense's shape, name and initialiser ([g*d + rest, features], rows in that concat order),
    so parameters and checkpoints are those of the flat layer. The grouped rows are used as [g, d, features]:
    one matmul per group, summed over groups. Contracting g and d in one dot_general would be the same sum,
    but XLA then copies the operand to [..., g, d] first (in the gradient too), the transpose this layer
    exists to avoid; the per-group products cost g*B*features extra adds instead. `rest` [..., r] may be None.
    """

    features: int

    @nn.compact
    def __call__(self, grouped: jax.Array, rest: jax.Array | None = None) -> jax.Array:
        g, d = grouped.shape[0], grouped.shape[-1]
        inputs = g * d + (0 if rest is None else rest.shape[-1])
        kernel = self.param("kernel", dense_init, (inputs, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        y = jnp.einsum("g...i,gio->g...o", grouped, kernel[: g * d].reshape(g, d, self.features)).sum(0)
        if rest is not None:
            y = y + rest @ kernel[g * d :]
        return y + bias


class MLP(nn.Module):
    """`layers` x (Dense with bias -> RMSNorm -> SiLU), as the DreamerV3 reference's MLP."""

    units: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array | None, grouped: jax.Array | None = None) -> jax.Array:
        """x: [..., in] -> [..., units]. With `grouped` ([g, ..., d], group-major), the first layer reads
        concat(from_groups(grouped), x) through `GroupedDense` (x may then be None); the parameters are the
        same either way."""
        for i in range(self.layers):
            # Named explicitly so that a GroupedDense first layer takes nn.Dense's name "Dense_0".
            if i == 0 and grouped is not None:
                x = GroupedDense(self.units, name="Dense_0")(grouped, x)
            else:
                x = nn.Dense(self.units, kernel_init=dense_init, name=f"Dense_{i}")(x)
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
