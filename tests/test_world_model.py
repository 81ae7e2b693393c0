"""RSSM observe / imagine: shapes for discrete and continuous actions, episode resets, straight-through."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.agents.dreamer import make_dreamer
from mbrl_jax.config import make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.world_models.rssm import WorldModel, imagine, observe


@pytest.mark.parametrize("env", ["CartPole-v1", "Pendulum-v1"])
def test_observe_and_imagine_shapes(env):
    config = make_config("debug", **{"env.name": env})
    spec = env_spec(env)
    agent = make_dreamer(config, spec)
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    wm, params = agent.world_model, state.params.wm
    B, T, H, A = 3, 7, 4, spec.action_dim
    S, K, D = config.wm.stoch, config.wm.classes, config.wm.deter

    @jax.jit  # inputs, observe, imagine and the heads in one program
    def run(params):
        obs = {"vector": jax.random.normal(jax.random.PRNGKey(1), (B, T, *spec.obs_shapes["vector"]))}
        actions = jax.random.uniform(jax.random.PRNGKey(2), (B, T, A))
        is_first = jnp.zeros((B, T), bool).at[:, 0].set(True).at[1, 4].set(True)
        posts, prior_logits = observe(
            wm, params, obs, actions, is_first, jax.random.split(jax.random.PRNGKey(3), T)
        )
        start = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), posts)
        policy = lambda feat, key: jax.random.uniform(key, (feat.shape[0], A))
        states, imag_actions = imagine(wm, params, policy, start, H, jax.random.PRNGKey(4))
        heads = wm.apply(params, states.feat, method=WorldModel.reward_cont)
        return posts, prior_logits, start, states, imag_actions, heads

    posts, prior_logits, start, states, imag_actions, heads = jax.tree.map(np.asarray, run(params))
    assert posts.deter.shape == (B, T, D)
    assert posts.stoch.shape == posts.logits.shape == prior_logits.shape == (B, T, S, K)
    assert posts.feat.shape == (B, T, D + S * K)
    # samples are one-hot, log-probs normalised
    np.testing.assert_allclose(posts.stoch.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_allclose(np.exp(posts.logits).sum(-1), 1.0, atol=1e-5)

    assert states.deter.shape == (H + 1, B * T, D)
    assert states.stoch.shape == (H + 1, B * T, S, K)
    assert imag_actions.shape == (H, B * T, A)
    np.testing.assert_array_equal(states.deter[0], start.deter)
    reward_logits, cont_logit = heads
    assert reward_logits.shape == (H + 1, B * T, config.wm.num_bins) and cont_logit.shape == (H + 1, B * T)


def test_is_first_resets_the_state():
    """A window whose step t is an episode start gives the same posterior at t as a window starting at t."""
    config = make_config("debug")
    agent = make_dreamer(config, env_spec(config.env.name))
    wm, params = agent.world_model, jax.jit(agent.init)(jax.random.PRNGKey(0)).params.wm

    @jax.jit  # the inputs and both observe calls in one program
    def full_and_tail(params):
        obs = {"vector": jax.random.normal(jax.random.PRNGKey(1), (1, 6, 4))}
        actions = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(2), (1, 6), 0, 2), 2)
        first = jnp.zeros((1, 6), bool).at[0, 0].set(True).at[0, 3].set(True)
        key = jax.random.PRNGKey(5)
        full, _ = observe(wm, params, obs, actions, first, jax.random.split(key, 6))
        tail_obs = {"vector": obs["vector"][:, 3:]}
        tail, _ = observe(wm, params, tail_obs, actions[:, 3:], first[:, 3:], jax.random.split(key, 3))
        return full, tail

    full, tail = jax.tree.map(np.asarray, full_and_tail(params))
    # same key per step index differs between the two calls, so compare the deterministic parts
    np.testing.assert_allclose(full.deter[:, 3], tail.deter[:, 0], atol=1e-6)
    np.testing.assert_allclose(full.logits[:, 3], tail.logits[:, 0], atol=1e-5)
    assert not np.allclose(full.deter[:, 2], 0.0)


def test_actor_gradient_reaches_world_model_only_through_its_loss():
    """The world-model loss trains encoder, RSSM and heads; its gradient is non-zero for each of them."""
    config = make_config("debug", **{"replay.context": False})
    agent = make_dreamer(config, env_spec(config.env.name))
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    B, T = 2, 8
    batch = jax.jit(
        lambda: {
            "obs": {"vector": jax.random.normal(jax.random.PRNGKey(1), (B, T, 4))},
            "action": jax.nn.one_hot(jnp.zeros((B, T), int), 2),
            "reward": jnp.ones((B, T)),
            "is_first": jnp.zeros((B, T), bool).at[:, 0].set(True),
            "is_last": jnp.zeros((B, T), bool),
            "is_terminal": jnp.zeros((B, T), bool),
        }
    )()
    differs = lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b)))
    learn = jax.jit(agent.learn)
    new_state, metrics, _ = learn(state, batch, jax.random.PRNGKey(2))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    # warmup makes the first step's learning rate 0; a second update must move every module
    newer, _, _ = learn(new_state, batch, jax.random.PRNGKey(3))
    changed = jax.tree.map(differs, new_state.params, newer.params)
    for module in ("wm", "actor", "critic"):
        assert any(jax.tree.leaves(getattr(changed, module))), module
