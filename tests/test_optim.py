"""make_optimizer against a hand-written numpy AGC + LaProp update."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mbrl_jax.optim import clip_by_agc_per_tensor, make_optimizer


def make_tree(seed):
    rng = np.random.default_rng(seed)
    conv = {"k": rng.normal(size=(2, 2, 3, 5)) * 0.1}
    return {"w": rng.normal(size=(3, 4)), "b": np.zeros(4), "conv": conv}


def numpy_steps(params, grads_seq, lr, agc, eps, b1, b2, warmup):
    """Reference: per-tensor AGC, bias-corrected RMS normalisation, debiased momentum, warmed-up lr."""
    leaves = {k: np.array(v, np.float64) for k, v in _flat(params).items()}
    m = {k: np.zeros_like(v) for k, v in leaves.items()}
    v = {k: np.zeros_like(x) for k, x in leaves.items()}
    for n, grads in enumerate(grads_seq, start=1):
        lr_n = lr * min(1.0, (n - 1) / warmup) if warmup else lr
        for k, g in _flat(grads).items():
            p = leaves[k]
            upper = agc * max(np.linalg.norm(p.ravel()), 1e-3)
            gn = np.linalg.norm(g.ravel())
            if gn > upper:
                g = g * upper / gn
            v[k] = b2 * v[k] + (1 - b2) * g**2
            u = g / (np.sqrt(v[k] / (1 - b2**n)) + eps)
            m[k] = b1 * m[k] + (1 - b1) * u
            leaves[k] = p - lr_n * m[k] / (1 - b1**n)
    return leaves


def _flat(tree):
    return {
        jax.tree_util.keystr(path): np.asarray(x, np.float64)
        for path, x in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


@pytest.mark.parametrize("warmup", [0, 3])
def test_make_optimizer_matches_numpy(warmup):
    lr, agc, eps, b1, b2 = 1e-2, 0.3, 1e-20, 0.9, 0.999
    params = make_tree(0)
    grads_seq = []
    for i in range(5):
        rng = np.random.default_rng(100 + i)
        g = jax.tree.map(lambda x, i=i, rng=rng: rng.normal(size=x.shape) * 10.0 ** (i - 2), params)
        grads_seq.append(g)
    opt = make_optimizer(lr, agc=agc, eps=eps, beta1=b1, beta2=b2, warmup_steps=warmup)
    p = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)
    state = opt.init(p)

    @jax.jit
    def step(p, state, g):
        updates, state = opt.update(g, state, p)
        return optax.apply_updates(p, updates), state

    for g in grads_seq:
        p, state = step(p, state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), g))
    ref = numpy_steps(params, grads_seq, lr, agc, eps, b1, b2, warmup)
    got = _flat(p)
    assert got.keys() == ref.keys()
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-6, err_msg=k)
    moved = any(not np.allclose(got[k], _flat(params)[k]) for k in ref)
    assert moved


def test_warmup_first_step_does_not_move():
    params = {"w": jnp.ones((2, 2))}
    opt = make_optimizer(1e-3, warmup_steps=10)
    updates, _ = opt.update({"w": jnp.ones((2, 2))}, opt.init(params), params)
    np.testing.assert_array_equal(np.asarray(updates["w"]), 0.0)


def test_agc_clips_large_gradient_per_tensor():
    params = {"w": jnp.array([[3.0, 0.0], [0.0, 4.0]]), "z": jnp.zeros(3)}  # ||w|| = 5
    grads = {"w": jnp.array([[100.0, 1.0], [1.0, 100.0]]), "z": jnp.full(3, 1.0)}
    clip = clip_by_agc_per_tensor(0.3)
    out, _ = clip.update(grads, clip.init(params), params)
    np.testing.assert_allclose(float(jnp.linalg.norm(out["w"])), 0.3 * 5.0, rtol=1e-6)
    # Direction is kept: the whole tensor is scaled by one factor.
    np.testing.assert_allclose(np.asarray(out["w"] / grads["w"]), 1.5 / np.linalg.norm(grads["w"]), rtol=1e-6)
    # Zero-initialised tensor: the parameter norm is floored at 1e-3.
    np.testing.assert_allclose(float(jnp.linalg.norm(out["z"])), 0.3 * 1e-3, rtol=1e-5)
    # Small gradients pass unchanged.
    small = {"w": grads["w"] * 1e-4, "z": jnp.full(3, 1e-6)}
    out_small, _ = clip.update(small, clip.init(params), params)
    for k in small:
        np.testing.assert_array_equal(np.asarray(out_small[k]), np.asarray(small[k]))
    # Per tensor differs from optax's unit-wise clipping (column norms 3 and 4).
    unitwise, _ = optax.adaptive_grad_clip(0.3).update(grads, optax.EmptyState(), params)
    assert not np.allclose(np.asarray(unitwise["w"]), np.asarray(out["w"]))


def test_agc_requires_params():
    clip = clip_by_agc_per_tensor()
    with pytest.raises(ValueError):
        clip.update({"w": jnp.ones(2)}, clip.init({"w": jnp.ones(2)}))
