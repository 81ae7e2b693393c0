"""Distributions against numpy references and their defining properties."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrl_jax.nets import distributions as D

BINS = D.twohot_bins()
BINS_NP = np.linspace(-20.0, 20.0, 255)


def np_twohot(x: float, bins: np.ndarray) -> np.ndarray:
    """Plain reference: walk the bins to find the bracketing pair."""
    out = np.zeros(len(bins))
    if x <= bins[0]:
        out[0] = 1.0
        return out
    if x >= bins[-1]:
        out[-1] = 1.0
        return out
    for i in range(len(bins) - 1):
        if bins[i] <= x < bins[i + 1]:
            out[i] = (bins[i + 1] - x) / (bins[i + 1] - bins[i])
            out[i + 1] = (x - bins[i]) / (bins[i + 1] - bins[i])
            return out
    raise AssertionError("unreachable")


BIG = float(np.float32(1e30))
# symlog and its round trip, compiled once (a fixed shape) for all examples
SYMLOG_AND_BACK = jax.jit(lambda xs: (D.symlog(xs), D.symexp(D.symlog(xs))))


@settings(max_examples=60, deadline=None)
@given(st.floats(min_value=-BIG, max_value=BIG, allow_nan=False, width=32))
def test_symlog_symexp_inverse(x):
    xs = np.array([x, -x], np.float32)
    log, back = map(np.asarray, SYMLOG_AND_BACK(xs))
    np.testing.assert_allclose(back, np.array([x, -x], np.float32), rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(log, np.sign([x, -x]) * np.log1p(np.abs([x, -x])), rtol=1e-5, atol=1e-6)


def test_twohot_bins():
    assert BINS.shape == (255,)
    np.testing.assert_allclose(np.asarray(BINS), BINS_NP, atol=1e-5)


ENCODE = jax.jit(D.twohot_encode)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(min_value=-25.0, max_value=25.0, allow_nan=False, width=32), min_size=8, max_size=8)
)
def test_twohot_encode_vs_numpy_and_round_trip(xs):
    enc = np.asarray(ENCODE(jnp.array(xs, jnp.float32), BINS))  # fixed shape: compiled once
    assert enc.shape == (8, 255)
    for row, xi in zip(enc, xs, strict=True):
        np.testing.assert_allclose(row, np_twohot(float(np.float32(xi)), BINS_NP), atol=1e-5)
        assert abs(row.sum() - 1.0) < 1e-5
        assert (row >= 0).all()
        nz = np.flatnonzero(row > 1e-7)
        assert 1 <= len(nz) <= 2 and (len(nz) == 1 or nz[1] - nz[0] == 1)
        decoded = float(row @ BINS_NP)
        np.testing.assert_allclose(decoded, np.clip(xi, -20.0, 20.0), atol=2e-5)


def test_twohot_edges_and_exact_bins():
    enc = np.asarray(ENCODE(np.array([-1e6, 1e6, -20.0, 20.0, 0.0], np.float32), BINS))
    assert enc[0, 0] == 1.0 and enc[1, -1] == 1.0 and enc[2, 0] == 1.0 and enc[3, -1] == 1.0
    assert enc[4, 127] == 1.0  # 0 is the middle bin


def test_twohot_mean_and_log_prob_vs_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 4, 255)).astype(np.float32)
    y = (rng.normal(size=(3, 4)) * 50).astype(np.float32)
    lsm = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    p = np.exp(lsm)
    mean_ref = np.sign(p @ BINS_NP) * np.expm1(np.abs(p @ BINS_NP))
    mean = np.asarray(jax.jit(D.twohot_mean)(logits, BINS))
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-4, atol=1e-5)
    target = np.stack([[np_twohot(np.sign(v) * np.log1p(abs(v)), BINS_NP) for v in row] for row in y])
    lp_ref = (target * lsm).sum(-1)
    lp = np.asarray(jax.jit(D.twohot_log_prob)(logits, BINS, y))
    np.testing.assert_allclose(lp, lp_ref, rtol=1e-4, atol=1e-4)


def test_twohot_mean_zero_at_uniform():
    assert float(D.twohot_mean(jnp.zeros((255,)), BINS)) == 0.0


def test_twohot_log_prob_gradient_and_optimum():
    """d log_prob / d logits = target - softmax; logits equal to the log target decode back to y."""
    y = np.array([123.0, -0.37, 4e6], np.float32)

    @jax.jit
    def run(y):
        target = D.twohot_encode(D.symlog(y), BINS)
        logits = jax.random.normal(jax.random.PRNGKey(0), (3, 255))
        g = jax.grad(lambda lg: D.twohot_log_prob(lg, BINS, y).sum())(logits)
        best = jnp.log(target + 1e-12)
        log_probs = D.twohot_log_prob(best, BINS, y), D.twohot_log_prob(logits, BINS, y)
        return target, logits, g, D.twohot_mean(best, BINS), log_probs

    target, logits, g, best_mean, (best_lp, lp) = jax.tree.map(np.asarray, run(y))
    softmax = np.exp(logits - logits.max(-1, keepdims=True))
    softmax /= softmax.sum(-1, keepdims=True)
    np.testing.assert_allclose(g, target - softmax, atol=1e-6)
    np.testing.assert_allclose(best_mean, y, rtol=1e-4)
    assert (best_lp > lp).all()


def test_unimix_floor_and_normalised():
    logits = np.array([[50.0, -50.0, 0.0, -100.0], [0.0, 0.0, 0.0, 0.0]], np.float32)

    @jax.jit
    def run(logits):
        mixed, unmixed = D.unimix_logits(logits, 0.01), D.unimix_logits(logits, 0.0)
        return mixed, jax.nn.softmax(logits), unmixed, jax.nn.log_softmax(logits)

    mixed, sm, unmixed, log_softmax = map(np.asarray, run(logits))
    p = np.exp(mixed)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    assert (p >= 0.01 / 4 - 1e-7).all()
    np.testing.assert_allclose(p, 0.99 * sm + 0.0025, atol=1e-6)
    np.testing.assert_allclose(unmixed, log_softmax)


def test_straight_through_sample():
    key = jax.random.PRNGKey(0)

    @jax.jit
    def run(key):
        logits = jax.random.normal(jax.random.PRNGKey(1), (5, 3, 7))
        w = jax.random.normal(jax.random.PRNGKey(2), (5, 3, 7))
        g = jax.grad(lambda lg: jnp.sum(w * D.straight_through_onehot_sample(key, lg)))(logits)
        g_ref = jax.grad(lambda lg: jnp.sum(w * jax.nn.softmax(lg)))(logits)
        return D.straight_through_onehot_sample(key, logits), g, g_ref

    s, g, g_ref = map(np.asarray, run(key))
    np.testing.assert_allclose(s.sum(-1), 1.0, atol=1e-6)
    assert set(np.round(s, 5).ravel().tolist()) <= {0.0, 1.0}
    np.testing.assert_allclose(g, g_ref, atol=1e-6)
    # Samples follow the categorical: frequencies match probabilities.
    lg = jnp.log(jnp.array([0.2, 0.5, 0.3]))
    sample = jax.jit(D.straight_through_onehot_sample)
    freq = np.asarray(sample(key, jnp.broadcast_to(lg, (20000, 3)))).mean(0)
    np.testing.assert_allclose(freq, [0.2, 0.5, 0.3], atol=0.015)


def test_categorical_kl_vs_numpy():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 4, 5)) * 2
    b = rng.normal(size=(2, 3, 4, 5)) * 2
    pa = np.exp(a) / np.exp(a).sum(-1, keepdims=True)
    pb = np.exp(b) / np.exp(b).sum(-1, keepdims=True)
    ref = (pa * (np.log(pa) - np.log(pb))).sum((-2, -1))
    kl_of = jax.jit(D.categorical_kl)
    kl = np.asarray(kl_of(a.astype(np.float32), b.astype(np.float32)))
    assert kl.shape == (2, 3)
    np.testing.assert_allclose(kl, ref, rtol=1e-4, atol=1e-5)
    assert (kl > 0).all()
    np.testing.assert_allclose(np.asarray(kl_of(a.astype(np.float32), a.astype(np.float32))), 0.0, atol=1e-6)


def test_free_nats():
    kl = np.array([0.2, 0.99, 1.5, 3.0], np.float32)
    np.testing.assert_allclose(np.asarray(jax.jit(D.kl_loss_free_nats)(kl)), [1.0, 1.0, 1.5, 3.0])
    g = np.asarray(jax.jit(jax.grad(lambda k: D.kl_loss_free_nats(k, 1.0).sum()))(kl))
    np.testing.assert_allclose(g, [0.0, 0.0, 1.0, 1.0])


def test_bounded_normal():
    raw_mean = np.array([[-100.0, 0.0, 3.0], [100.0, -0.5, 0.1]], np.float32)
    raw_std = np.array([[-100.0, 0.0, 100.0], [5.0, -3.0, 0.0]], np.float32)

    @jax.jit
    def run(raw_mean, raw_std):
        dist = D.bounded_normal(raw_mean, raw_std)
        x = dist.sample(seed=jax.random.PRNGKey(0))
        return dist.mean(), dist.stddev(), dist.mode(), x, dist.log_prob(x), dist.entropy()

    mean, std, mode, x, log_prob, entropy = map(np.asarray, run(raw_mean, raw_std))
    assert (np.abs(mean) <= 1.0).all() and (np.abs(mode) <= 1.0).all()
    assert (std >= 0.1 - 1e-6).all() and (std <= 1.0 + 1e-6).all()
    np.testing.assert_allclose(std[0, 0], 0.1, atol=1e-6)
    np.testing.assert_allclose(std[0, 2], 1.0, atol=1e-6)
    np.testing.assert_allclose(std[1, 2], 0.9 / (1 + np.exp(-2.0)) + 0.1, rtol=1e-6)
    np.testing.assert_allclose(mean, np.tanh(raw_mean), atol=1e-6)
    assert x.shape == (2, 3)
    lp_ref = (-0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)).sum(-1)
    np.testing.assert_allclose(log_prob, lp_ref, rtol=1e-5, atol=1e-5)
    ent_ref = (0.5 * np.log(2 * np.pi * np.e) + np.log(std)).sum(-1)
    np.testing.assert_allclose(entropy, ent_ref, rtol=1e-5)


def test_onehot_categorical():
    logits = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 5.0]], np.float32)

    @jax.jit
    def run(logits):
        dist = D.onehot_categorical(D.unimix_logits(logits, 0.01))
        s = dist.sample(seed=jax.random.PRNGKey(0))
        same = D.onehot_categorical(logits, unimix=0.01)
        return s, jax.nn.softmax(logits), dist.log_prob(s), dist.entropy(), dist.mode(), same.log_prob(s)

    s, softmax, log_prob, entropy, mode, same_log_prob = map(np.asarray, run(logits))
    assert s.shape == (2, 3) and s.dtype == jnp.float32
    np.testing.assert_allclose(s.sum(-1), 1.0)
    p = 0.99 * softmax + 0.01 / 3
    np.testing.assert_allclose(log_prob, np.log((p * s).sum(-1)), rtol=1e-5)
    np.testing.assert_allclose(entropy, -(p * np.log(p)).sum(-1), rtol=1e-5)
    np.testing.assert_allclose(mode, [[1, 0, 0], [0, 0, 1]])
    np.testing.assert_allclose(same_log_prob, log_prob, rtol=1e-6)


def test_bernoulli():
    logit = np.array([-2.0, 0.5, 3.0], np.float32)
    target = np.array([0.0, 1.0, 1.0], np.float32)
    p = 1 / (1 + np.exp(-logit))
    ref = np.log(np.where(target > 0, p, 1 - p))
    run = jax.jit(
        lambda logit, target: (
            D.bernoulli_log_prob(logit, target),
            D.bernoulli_mean(logit),
            D.bernoulli_mode(logit),
        )
    )
    log_prob, mean, mode = map(np.asarray, run(logit, target))
    np.testing.assert_allclose(log_prob, ref, rtol=1e-6)
    np.testing.assert_allclose(mean, p, rtol=1e-6)
    np.testing.assert_allclose(mode, [0.0, 1.0, 1.0])
    assert jax.eval_shape(D.bernoulli_log_prob, logit, target.astype(bool)).dtype == jnp.float32


def test_jit_vmap():
    logits = jax.random.normal(jax.random.PRNGKey(0), (4, 6, 255))
    y = jnp.linspace(-5.0, 5.0, 24).reshape(4, 6)
    f = jax.jit(jax.vmap(lambda lg, t: D.twohot_log_prob(lg, BINS, t)))
    ref = np.asarray(D.twohot_log_prob(logits, BINS, y))
    np.testing.assert_allclose(np.asarray(f(logits, y)), ref, rtol=1e-5)
