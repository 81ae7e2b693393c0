"""Output distributions of DreamerV3 (Hafner et al., "Mastering diverse control tasks through world models",
Nature 2025; arXiv:2301.04104).

Pure functions of arrays; every one is jittable and vmappable. Distrax supplies the parametric families
(normal, one-hot categorical, Bernoulli); what it lacks (symlog, two-hot, unimix, free nats) is written here.
Shapes: `...` is any batch shape, `K` the number of classes or bins, `S` the number of categorical latents.
"""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def symlog(x: Array) -> Array:
    """symlog(x) = sign(x) * log(1 + |x|) (DreamerV3, eq. "symlog"). Same shape as `x`."""
    return jnp.sign(x) * jnp.log1p(jnp.abs(x))


def symexp(x: Array) -> Array:
    """symexp(x) = sign(x) * (exp(|x|) - 1), the inverse of `symlog`. Same shape as `x`."""
    return jnp.sign(x) * jnp.expm1(jnp.abs(x))


def twohot_bins(num_bins: int = 255, low: float = -20.0, high: float = 20.0) -> Array:
    """Bin centres `[num_bins]`, equally spaced in symlog space (DreamerV3 uses 255 bins on [-20, 20]).

    When `low == -high` the bins are made exactly antisymmetric (the middle one exactly 0 for odd counts), so
    that the uniform prediction at initialisation decodes to exactly 0.
    """
    bins = np.linspace(low, high, num_bins, dtype=np.float64)
    if low == -high:
        bins = 0.5 * (bins - bins[::-1])
    return jnp.asarray(bins, jnp.float32)


def twohot_encode(x: Array, bins: Array) -> Array:
    """Two-hot encoding `[..., K]` of `x: [...]` (already in symlog space) over sorted `bins: [K]`.

    The weight is split between the two bins that bracket `x`, in proportion to closeness, so that
    `sum(encode(x) * bins) == x` inside the range (DreamerV3, "two-hot encoding"). Values below `bins[0]`
    or above `bins[-1]` put all their weight on that edge bin.
    """
    k = bins.shape[0]
    below = jnp.clip(jnp.searchsorted(bins, x, side="right") - 1, 0, k - 2)
    lo, hi = bins[below], bins[below + 1]
    w_hi = jnp.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return (
        jax.nn.one_hot(below, k, dtype=bins.dtype) * (1.0 - w_hi)[..., None]
        + jax.nn.one_hot(below + 1, k, dtype=bins.dtype) * w_hi[..., None]
    )


def _expected_bin(probs: Array, bins: Array) -> Array:
    """`sum(probs * bins, -1)`, summed from both ends toward the middle so that a symmetric distribution
    over symmetric bins gives exactly 0 (e.g. uniform at initialisation): symexp amplifies any rounding."""
    k = bins.shape[0]
    m = k // 2
    lo = (probs[..., :m] * bins[:m])[..., ::-1]
    hi = probs[..., k - m :] * bins[k - m :]
    mid = jnp.sum(probs[..., m : k - m] * bins[m : k - m], -1)
    return jnp.sum(lo + hi, -1) + mid


def twohot_mean(logits: Array, bins: Array) -> Array:
    """Prediction `[...]` of a two-hot head: symexp(sum_k softmax(logits)_k * bins_k). `logits: [..., K]`."""
    return symexp(_expected_bin(jax.nn.softmax(logits, -1), bins))


def twohot_log_prob(logits: Array, bins: Array, y: Array) -> Array:
    """Log-likelihood `[...]` of the real target `y: [...]` under a two-hot head with `logits: [..., K]`:
    sum_k twohot(symlog(y))_k * log_softmax(logits)_k (DreamerV3, reward and critic loss).

    The two-hot target is a label: no gradient flows into `y`.
    """
    target = jax.lax.stop_gradient(twohot_encode(symlog(y), bins))
    return jnp.sum(target * jax.nn.log_softmax(logits, -1), -1)


def unimix_logits(logits: Array, unimix: float = 0.01) -> Array:
    """Normalised log-probabilities `[..., K]` of (1 - u) * softmax(logits) + u / K: 1% uniform mixing keeps
    every class probable so KL and log-probs stay bounded (DreamerV3, "unimix categoricals")."""
    if unimix <= 0.0:
        return jax.nn.log_softmax(logits, -1)
    probs = jax.nn.softmax(logits, -1)
    return jnp.log((1.0 - unimix) * probs + unimix / logits.shape[-1])


def straight_through_onehot_sample(key: Array, logits: Array) -> Array:
    """One-hot sample `[..., K]` of Categorical(logits) whose gradient is that of softmax(logits)
    (straight-through estimator, Bengio et al. 2013, as used for DreamerV3's latents)."""
    probs = jax.nn.softmax(logits, -1)
    sample = jax.nn.one_hot(jax.random.categorical(key, logits, -1), logits.shape[-1], dtype=probs.dtype)
    return sample + probs - jax.lax.stop_gradient(probs)


def categorical_kl(lhs_logits: Array, rhs_logits: Array) -> Array:
    """KL(lhs || rhs) `[...]` of factorised categoricals with logits `[..., S, K]`, summed over S and K."""
    kl = distrax.Categorical(logits=lhs_logits).kl_divergence(distrax.Categorical(logits=rhs_logits))
    return jnp.sum(kl, -1)


def kl_loss_free_nats(kl: Array, free: float = 1.0) -> Array:
    """max(kl, free), elementwise (DreamerV3 "free bits": the dynamics and representation losses are clipped
    below at 1 nat per step, so there is no gradient once the KL is already small)."""
    return jnp.maximum(kl, free)


def bounded_normal(
    raw_mean: Array, raw_std: Array, minstd: float = 0.1, maxstd: float = 1.0
) -> distrax.MultivariateNormalDiag:
    """Continuous policy over `[..., A]` actions (DreamerV3 reference "bounded_normal").

    mean = tanh(raw_mean) in (-1, 1); std = (maxstd - minstd) * sigmoid(raw_std + 2) + minstd in
    [minstd, maxstd]; independent over the last axis (event shape `[A]`). Samples are not squashed:
    they may leave [-1, 1] and the environment wrapper clips them.
    """
    mean = jnp.tanh(raw_mean)
    std = (maxstd - minstd) * jax.nn.sigmoid(raw_std + 2.0) + minstd
    return distrax.MultivariateNormalDiag(loc=mean, scale_diag=std)


def onehot_categorical(logits: Array, unimix: float = 0.0) -> distrax.OneHotCategorical:
    """Discrete policy over `[..., K]` one-hot actions, float32 samples.

    Pass logits already mixed with `unimix_logits`, or set `unimix > 0` here to mix (never both).
    """
    return distrax.OneHotCategorical(logits=unimix_logits(logits, unimix), dtype=jnp.float32)


def bernoulli_log_prob(logit: Array, target: Array) -> Array:
    """log p(target) `[...]` of the continue flag under Bernoulli(sigmoid(logit)); `target` in [0, 1]."""
    return distrax.Bernoulli(logits=logit).log_prob(target.astype(logit.dtype))


def bernoulli_mean(logit: Array) -> Array:
    """Continue probability sigmoid(logit) `[...]`."""
    return jax.nn.sigmoid(logit)


def bernoulli_mode(logit: Array) -> Array:
    """Most likely continue flag `[...]` in {0., 1.} (1 when logit > 0)."""
    return (logit > 0).astype(logit.dtype)
