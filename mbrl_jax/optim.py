"""DreamerV3's optimiser (Hafner et al., "Mastering diverse control tasks through world models", Nature 2025;
arXiv:2301.04104): adaptive gradient clipping per tensor followed by LaProp (Ziyin et al. 2020), built from
optax pieces."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mbrl_jax.settings import NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, setting


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """DreamerV3's optimiser: adaptive gradient clipping + LaProp, one for all networks."""

    lr: float = setting(4e-5, "learning rate", POSITIVE)
    agc: float = setting(0.3, "adaptive gradient clipping ratio", POSITIVE)
    eps: float = setting(1e-20, "LaProp epsilon", POSITIVE)
    beta1: float = setting(0.9, "momentum rate", UNIT_INTERVAL)
    beta2: float = setting(0.999, "second-moment rate", UNIT_INTERVAL)
    warmup: int = setting(1_000, "updates of linear learning-rate warm-up", NON_NEGATIVE)


def clip_by_agc_per_tensor(clip: float = 0.3, pmin: float = 1e-3) -> optax.GradientTransformation:
    """Adaptive gradient clipping with one norm per parameter tensor:
    g <- g * min(1, clip * max(||p||, pmin) / ||g||), Frobenius norms over the whole tensor.

    `optax.adaptive_grad_clip` clips unit-wise (per output column) and its `axis` argument is one axis set for
    every leaf, so it cannot express a whole-tensor norm for leaves of different rank; DreamerV3 clips per
    tensor, hence this transformation. Stateless; needs `params`.
    """

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("clip_by_agc_per_tensor needs params: call update(grads, state, params)")

        def one(g: jax.Array, p: jax.Array) -> jax.Array:
            upper = clip * jnp.maximum(jnp.sqrt(jnp.sum(jnp.square(p))), pmin)
            gnorm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * (upper / jnp.maximum(gnorm, upper))

        return jax.tree.map(one, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def make_optimizer(
    lr: float,
    agc: float = 0.3,
    eps: float = 1e-20,
    beta1: float = 0.9,
    beta2: float = 0.999,
    warmup_steps: int = 1000,
) -> optax.GradientTransformation:
    """DreamerV3's optimiser: per-tensor AGC, then LaProp (RMS normalisation before momentum), then -lr with a
    linear warmup. At optax step n = 1, 2, ... (count c = n - 1), for each tensor p with gradient g:

      g   <- g * min(1, agc * max(||p||, 1e-3) / ||g||)                 # adaptive clipping, per tensor
      v_n  = beta2 * v_{n-1} + (1 - beta2) * g^2,   v_0 = 0
      u    = g / (sqrt(v_n / (1 - beta2^n)) + eps)                      # bias-corrected RMS (LaProp)
      m_n  = beta1 * m_{n-1} + (1 - beta1) * u,     m_0 = 0
      d    = m_n / (1 - beta1^n)                                        # debiased momentum of u
      p   <- p - lr * min(1, c / warmup_steps) * d                      # (no warmup if warmup_steps == 0)

    As in the reference the warmup ramp starts at 0, so the first step does not move the parameters.
    Apply with `updates, opt_state = opt.update(grads, opt_state, params)`; `params` is required.
    """
    if warmup_steps > 0:
        schedule = optax.linear_schedule(0.0, lr, warmup_steps)
    else:
        schedule = optax.constant_schedule(lr)
    return optax.chain(
        clip_by_agc_per_tensor(agc, 1e-3),
        optax.scale_by_rms(decay=beta2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        optax.ema(beta1, debias=True),
        optax.scale_by_learning_rate(schedule),
    )
