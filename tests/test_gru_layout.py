"""The RSSM keeps h group-major inside observe/imagine: outputs and gradients equal a plain flat-layout RSSM.

The reference below is a second, straightforward implementation written from the paper's equations and the
parameter tree alone: h is [B, D] throughout, every Dense is `x @ kernel + bias` on the concatenated input,
and the block GRU is a Python loop over blocks on slices of h.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.agents.dreamer import make_dreamer
from mbrl_jax.config import make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.nets.distributions import straight_through_onehot_sample, symlog, unimix_logits
from mbrl_jax.nets.layers import from_groups, to_groups
from mbrl_jax.world_models.rssm import Latent, WorldModel, imagine, observe


def dense(p, x):
    return x @ p["kernel"] + p["bias"]


def rms_silu(p, x):
    return jax.nn.silu(x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + 1e-4) * p["scale"])


def mlp(p, x, layers):
    for i in range(layers):
        x = rms_silu(p[f"RMSNorm_{i}"], dense(p[f"Dense_{i}"], x))
    return x


def gru_ref(p, deter, stoch, action, blocks):
    """Block GRU on h [B, D]: block j owns h[:, j*d:(j+1)*d] and its own kernels."""
    d = deter.shape[-1] // blocks
    action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))  # a scale, not a path
    inputs = jnp.concatenate(
        [
            rms_silu(p[f"RMSNorm_{i}"], dense(p[f"Dense_{i}"], x))
            for i, x in enumerate((deter, stoch, action))
        ],
        -1,
    )
    h = [deter[:, j * d : (j + 1) * d] for j in range(blocks)]
    x = [
        jnp.concatenate([h[j], inputs], -1) @ p["hidden_kernel"][j] + p["hidden_bias"][j]
        for j in range(blocks)
    ]
    rms = jnp.sqrt(jnp.mean(jnp.concatenate(x, -1) ** 2, -1, keepdims=True) + 1e-4)  # over all blocks
    out = []
    for j in range(blocks):
        xj = jax.nn.silu(x[j] / rms * p["hidden_norm"][j])
        reset, cand, update = jnp.split(xj @ p["gates_kernel"][j] + p["gates_bias"][j], 3, -1)
        cand = jnp.tanh(jax.nn.sigmoid(reset) * cand)
        update = jax.nn.sigmoid(update - 1.0)
        out.append(update * cand + (1.0 - update) * h[j])
    return jnp.concatenate(out, -1)


def logits_ref(wm, x):
    return unimix_logits(x.reshape(*x.shape[:-1], wm.stoch, wm.classes), wm.unimix)


def img_step_ref(wm, p, prev, action, key):
    deter = gru_ref(
        p["core"], prev.deter, prev.stoch.reshape(prev.stoch.shape[0], -1), action, wm.core.blocks
    )
    logits = logits_ref(wm, dense(p["prior_out"], mlp(p["prior_net"], deter, 2)))
    return Latent(deter, straight_through_onehot_sample(key, logits), logits)


def observe_ref(wm, params, obs, prev_action, is_first, keys, start):
    p = params["params"]
    embed = mlp(p["encoder"], symlog(obs["vector"]), wm.enc_layers)

    def step(latent, inputs):
        embed_t, action_t, first_t, key_t = inputs
        keep = 1.0 - first_t.astype(jnp.float32)
        latent = Latent(*(x * keep.reshape(-1, *[1] * (x.ndim - 1)) for x in jax.tree.leaves(latent)))
        prior = img_step_ref(wm, p, latent, action_t * keep[:, None], key_t)
        x = jnp.concatenate([prior.deter, embed_t], -1)
        logits = logits_ref(wm, dense(p["post_out"], mlp(p["post_net"], x, 1)))
        latent = Latent(prior.deter, straight_through_onehot_sample(key_t, logits), logits)
        return latent, (latent, prior.logits)

    time_major = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    inputs = (time_major(embed), time_major(prev_action), is_first.T, keys)
    _, (posts, priors) = jax.lax.scan(step, start, inputs)
    return jax.tree.map(time_major, posts), time_major(priors)


def imagine_ref(wm, params, policy, start, horizon, key):
    def step(latent, k):
        k_act, k_dyn = jax.random.split(k)
        action = policy(latent.feat, k_act)
        latent = img_step_ref(wm, params["params"], latent, action, k_dyn)
        return latent, (latent, action)

    _, (states, actions) = jax.lax.scan(step, start, jax.random.split(key, horizon))
    return jax.tree.map(lambda first, rest: jnp.concatenate([first[None], rest]), start, states), actions


@pytest.fixture(scope="module")
def setup():
    # Blocks 4 of 16 units, batch 3: no two of g, B, d, S, K alike, so a swapped axis cannot go unnoticed.
    config = make_config(
        "debug", wm={"deter": 64, "gru": {"blocks": 4}, "hidden": 24, "stoch": 5, "classes": 6}
    )
    spec = env_spec(config.env.name)
    agent = make_dreamer(config, spec)
    wm, params = agent.world_model, jax.jit(agent.init)(jax.random.PRNGKey(0)).params.wm

    @jax.jit
    def perturb(params):
        """Non-zero biases and norm scales, so that a bias or scale read from the wrong block shows."""
        leaves, tree = jax.tree.flatten(params)
        keys = jax.random.split(jax.random.PRNGKey(9), len(leaves))
        return jax.tree.unflatten(
            tree, [x + 0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)]
        )

    params = perturb(params)
    B, T, H, A = 3, 7, 4, spec.action_dim

    @jax.jit
    def make_data():
        ks = jax.random.split(jax.random.PRNGKey(1), 6)
        data = dict(
            obs={"vector": jax.random.normal(ks[0], (B, T, *spec.obs_shapes["vector"]))},
            prev_action=jax.random.uniform(ks[1], (B, T, A), minval=-2, maxval=2),
            is_first=jnp.zeros((B, T), bool).at[0, 0].set(True).at[1, 4].set(True),
            keys=jax.random.split(ks[2], T),
            start=Latent(
                jax.random.normal(ks[3], (B, config.wm.deter)),
                jax.nn.one_hot(
                    jax.random.randint(ks[4], (B, config.wm.stoch), 0, config.wm.classes), config.wm.classes
                ),
                jnp.zeros((B, config.wm.stoch, config.wm.classes)),
            ),
        )
        policy_w = 0.3 * jax.random.normal(ks[5], (config.wm.deter + config.wm.stoch * config.wm.classes, A))
        return data, policy_w

    data, policy_w = make_data()
    policy = lambda feat, key: jnp.tanh(feat @ policy_w) + 0.1 * jax.random.normal(key, (feat.shape[0], A))
    return wm, params, data, policy, H


def run(observe_fn, imagine_fn, wm, params, data, policy, H):
    posts, prior_logits = observe_fn(wm, params, **data)
    start = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), posts)
    states, actions = imagine_fn(wm, params, policy, start, H, jax.random.PRNGKey(4))
    return posts, prior_logits, states, actions


def scalar_loss(observe_fn, imagine_fn, wm, params, data, policy, H):
    posts, prior_logits, states, actions = run(observe_fn, imagine_fn, wm, params, data, policy, H)
    reward, cont = wm.apply(params, states.feat, method=WorldModel.reward_cont)
    obs_pred = wm.apply(params, posts.feat, method=WorldModel.heads)[0]["vector"]
    return (
        jnp.sum(jnp.sin(posts.feat))
        + jnp.sum(prior_logits * posts.logits)
        + jnp.sum(jnp.cos(states.feat))
        + jnp.sum(reward**2)
        + jnp.sum(cont)
        + jnp.sum(obs_pred**2)
        + jnp.sum(actions)
    )


def test_group_layout_round_trip():
    x = np.arange(2 * 3 * 12.0, dtype=np.float32).reshape(2, 3, 12)
    grouped = np.asarray(jax.jit(to_groups, static_argnums=1)(x, 4))
    assert grouped.shape == (4, 2, 3, 3)
    np.testing.assert_array_equal(grouped[1], x[..., 3:6])
    np.testing.assert_array_equal(jax.jit(from_groups)(grouped), x)


def test_observe_and_imagine_equal_the_flat_reference(setup):
    wm, params, data, policy, H = setup
    got = jax.jit(lambda p: run(observe, imagine, wm, p, data, policy, H))(params)
    want = jax.jit(lambda p: run(observe_ref, imagine_ref, wm, p, data, policy, H))(params)
    posts, _, states, _ = got
    B, T = data["obs"]["vector"].shape[:2]
    assert posts.deter.shape == (B, T, wm.deter) and states.deter.shape == (H + 1, B * T, wm.deter)
    for name, a, b in zip(["posts", "prior_logits", "states", "actions"], got, want, strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5, err_msg=name)
    assert float(np.std(np.asarray(states.deter)[-1])) > 0.05  # the states are not trivially zero


def test_gradients_equal_the_flat_reference(setup):
    wm, params, data, policy, H = setup
    grad = lambda obs_fn, img_fn: jax.jit(
        jax.grad(lambda p: scalar_loss(obs_fn, img_fn, wm, p, data, policy, H))
    )(params)
    got, want = grad(observe, imagine), grad(observe_ref, imagine_ref)
    flat_got, flat_want = jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want)
    for (path, x), y in zip(flat_got, flat_want, strict=True):
        scale = float(np.max(np.abs(np.asarray(y))))
        assert scale > 0, jax.tree_util.keystr(path)  # every parameter gets a gradient
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5 * scale, err_msg=jax.tree_util.keystr(path))


def test_single_steps_keep_the_flat_api(setup):
    """obs_step / img_step take and return deter [B, D], as act() and the replay context use them."""
    wm, params, data, _, _ = setup
    start, key, action = data["start"], jax.random.PRNGKey(7), data["prev_action"][:, 0]

    @jax.jit
    def steps(params):
        embed = wm.apply(params, {"vector": data["obs"]["vector"][:, 0]}, method=WorldModel.encode)
        post, prior_logits = wm.apply(params, start, action, embed, key, method=WorldModel.obs_step)
        prior = wm.apply(params, start, action, key, method=WorldModel.img_step)
        return post, prior_logits, prior, img_step_ref(wm, params["params"], start, action, key)

    post, prior_logits, prior, want = steps(params)
    assert post.deter.shape == prior.deter.shape == start.deter.shape
    np.testing.assert_allclose(prior.deter, want.deter, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(post.deter, want.deter, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(prior_logits, want.logits, rtol=1e-5, atol=1e-5)
