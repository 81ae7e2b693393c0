"""Lambda returns against a plain Python loop; return normalisation against numpy percentiles."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrl_jax.returns import lambda_returns, return_norm_init, return_scale, update_return_norm


def loop_returns(rewards, values, discounts, lam, truncated):
    """Reference for one sequence: forward definition of the lambda return written as a backward loop."""
    T = len(rewards)
    out = [0.0] * T
    nxt = values[T]
    for t in reversed(range(T)):
        chain = values[t + 1] if truncated[t] else nxt
        out[t] = rewards[t] + discounts[t] * ((1 - lam) * values[t + 1] + lam * chain)
        nxt = out[t]
    return np.array(out)


def random_batch(seed, T, B, p_term=0.15, p_trunc=0.15, gamma=0.99):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(T, B))
    values = rng.normal(size=(T + 1, B))
    term = rng.random((T, B)) < p_term
    trunc = (rng.random((T, B)) < p_trunc) & ~term
    return rewards, values, gamma * (1.0 - term), trunc


def run(rewards, values, discounts, lam, trunc):
    f = jax.jit(lambda r, v, d, tr: lambda_returns(r, v, d, lam, tr))
    args = (jnp.asarray(a, jnp.float32) for a in (rewards, values, discounts))
    return np.asarray(f(*args, jnp.asarray(trunc)))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 20), st.integers(1, 4), st.sampled_from([0.0, 0.5, 0.95, 1.0]))
def test_lambda_returns_vs_loop(seed, T, B, lam):
    rewards, values, discounts, trunc = random_batch(seed, T, B)
    got = run(rewards, values, discounts, lam, trunc)
    assert got.shape == (T, B)
    for b in range(B):
        ref = loop_returns(rewards[:, b], values[:, b], discounts[:, b], lam, trunc[:, b])
        np.testing.assert_allclose(got[:, b], ref, rtol=1e-5, atol=1e-5)


def test_lambda_zero_is_td_target():
    rewards, values, discounts, trunc = random_batch(1, 15, 3)
    got = run(rewards, values, discounts, 0.0, trunc)
    np.testing.assert_allclose(got, rewards + discounts * values[1:], rtol=1e-5, atol=1e-5)


def test_lambda_one_no_terminals_is_monte_carlo_plus_bootstrap():
    T, gamma = 12, 0.9
    rewards, values, _, _ = random_batch(2, T, 2)
    got = run(rewards, values, np.full((T, 2), gamma), 1.0, np.zeros((T, 2), bool))
    for t in range(T):
        ref = sum(gamma ** (k - t) * rewards[k] for k in range(t, T)) + gamma ** (T - t) * values[T]
        np.testing.assert_allclose(got[t], ref, rtol=1e-5, atol=1e-5)


def test_terminal_and_truncation_cut_the_chain():
    T, gamma = 6, 0.9
    rewards = np.ones((T, 1))
    values = np.arange(T + 1, dtype=float)[:, None] * 10
    discounts = np.full((T, 1), gamma)
    discounts[2] = 0.0  # s_3 terminal: R_2 = r
    trunc = np.zeros((T, 1), bool)
    trunc[4] = True  # s_5 truncated: R_4 = r + gamma * v(s_5)
    got = run(rewards, values, discounts, 1.0, trunc)[:, 0]
    np.testing.assert_allclose(got[2], 1.0)
    np.testing.assert_allclose(got[4], 1.0 + gamma * 50.0, rtol=1e-6)
    np.testing.assert_allclose(got[3], 1.0 + gamma * got[4], rtol=1e-6)
    np.testing.assert_allclose(got[5], 1.0 + gamma * 60.0, rtol=1e-6)
    # Without the truncation flag the chain runs through to the bootstrap at the end.
    got_nt = run(rewards, values, discounts, 1.0, np.zeros((T, 1), bool))[:, 0]
    np.testing.assert_allclose(got_nt[4], 1.0 + gamma * got_nt[5], rtol=1e-6)


def test_truncated_none_equals_all_false_and_vmaps():
    rewards, values, discounts, _ = random_batch(3, 10, 4)
    args = [jnp.asarray(a, jnp.float32) for a in (rewards, values, discounts)]
    a = lambda_returns(*args, 0.95)
    b = lambda_returns(*args, 0.95, jnp.zeros((10, 4), bool))
    np.testing.assert_allclose(np.asarray(a), np.asarray(b))
    # vmap over a leading batch of sequences (time axis 1 there) equals the batched call.
    v = jax.vmap(lambda r, vv, d: lambda_returns(r, vv, d, 0.95), in_axes=1, out_axes=1)(*args)
    np.testing.assert_allclose(np.asarray(v), np.asarray(a), rtol=1e-6)


@pytest.mark.parametrize("rate", [0.01, 0.5])
def test_return_norm_vs_numpy(rate):
    rng = np.random.default_rng(0)
    norm = return_norm_init()
    low = high = 0.0
    update = jax.jit(lambda n, r: update_return_norm(n, r, rate=rate))
    for i in range(5):
        rets = rng.normal(loc=i, scale=3.0 + i, size=(15, 16)).astype(np.float32)
        norm = update(norm, jnp.asarray(rets))
        lo, hi = np.percentile(rets, [5, 95])
        low, high = low + rate * (lo - low), high + rate * (hi - high)
        np.testing.assert_allclose(float(norm.low), low, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(float(norm.high), high, rtol=1e-4, atol=1e-5)
    assert norm.low.dtype == jnp.float32 and norm.low.shape == ()
    np.testing.assert_allclose(float(return_scale(norm)), max(1.0, high - low), rtol=1e-4)


def test_return_scale_floor():
    norm = return_norm_init()
    assert float(return_scale(norm)) == 1.0
    assert float(return_scale(norm.replace(low=jnp.float32(-2.0), high=jnp.float32(3.0)))) == 5.0
