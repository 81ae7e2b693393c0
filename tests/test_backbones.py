"""Parallel sequence backbones (#11): the form that trains on a whole window equals the one-step form that
acts and imagines, outputs and gradients, with episode resets inside the window and a carried start state."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.agents.dreamer import make_dreamer
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.world_models.backbone import make_backbone
from mbrl_jax.world_models.rssm import WorldModel, mask_loop, observe

BACKBONES = {
    "mamba": {"wm.mamba.head_dim": 8, "wm.mamba.state": 4, "wm.mamba.chunk": 5},
    "transformer": {"wm.transformer.heads": 4, "wm.transformer.context": 6},
}


def small_config(backbone: str, **extra):
    return make_config(
        "debug",
        **{"wm.backbone": backbone, "replay.context": False, "wm.deter": 32, **BACKBONES[backbone], **extra},
    )


def random_state(core, batch: int, key):
    """A state as one from earlier steps: random caches and SSM states; a transformer's `valid` flags 0/1 and
    its positions whole numbers."""
    zeros = jax.eval_shape(lambda: core.initial_state((batch,)))  # shapes and dtypes
    paths, treedef = jax.tree_util.tree_flatten_with_path(zeros)
    leaves = []
    for (path, x), k in zip(paths, jax.random.split(key, len(paths)), strict=True):
        name = jax.tree_util.keystr(path)
        if "valid" in name:
            leaves.append(np.asarray(jax.random.bernoulli(k, 0.7, x.shape)).astype(x.dtype))
        elif "pos" in name:
            leaves.append(np.asarray(jax.random.randint(k, x.shape, 0, 20)).astype(x.dtype))
        else:
            leaves.append(jax.random.normal(k, x.shape))
    return jax.tree.unflatten(treedef, leaves)


def stepwise(core, params, inputs, reset, state):
    """The one-step form over a window, the state zeroed where an episode starts (as the world model does),
    scanned over time."""

    def step(state, xs):
        x, first = xs
        keep = 1.0 - first.astype(jnp.float32)
        state = jax.tree.map(lambda s: s * keep.reshape(-1, *[1] * (s.ndim - 1)), state)
        out, state = core.apply(params, x, state, method=type(core).step)
        return state, (out, state)

    _, (outputs, states) = jax.lax.scan(step, state, (jnp.swapaxes(inputs, 0, 1), reset.T))
    return jnp.swapaxes(outputs, 0, 1), jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), states)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
# one step; two whole blocks of the Transformer's context (6); a window that pads its last block
@pytest.mark.parametrize("length", [1, 12, 37])
def test_parallel_form_equals_steps(backbone, length):
    core = make_backbone(small_config(backbone).wm)
    B, W = 3, 32
    k_in, k_reset, k_state, k_init = jax.random.split(jax.random.PRNGKey(length), 4)
    inputs = jax.random.normal(k_in, (B, length, W))
    reset = np.array(jax.random.bernoulli(k_reset, 0.15, (B, length)))
    reset[0, 0] = True
    state = random_state(core, B, k_state)
    params = jax.jit(core.init)(k_init, inputs, reset, state)
    sequence = jax.jit(lambda *a: core.apply(*a, method=type(core).sequence))
    out, states = sequence(params, inputs, reset, state)
    ref_out, ref_states = jax.jit(lambda *a: stepwise(core, *a))(params, inputs, reset, state)
    np.testing.assert_allclose(out, ref_out, atol=1e-5, rtol=1e-5)
    for got, want in zip(jax.tree.leaves(states), jax.tree.leaves(ref_states), strict=True):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # The carried start state matters where no reset cuts it off (row 1 starts mid-episode unless drawn).
    if not bool(reset[1, 0]):
        fresh = np.asarray(sequence(params, inputs, reset, core.initial_state((B,)))[0])
        assert np.abs(fresh[1, 0] - np.asarray(out)[1, 0]).max() > 1e-4


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_parallel_form_gradients_equal_steps(backbone):
    core = make_backbone(small_config(backbone).wm)
    B, T, W = 2, 13, 32
    k_in, k_state, k_init = jax.random.split(jax.random.PRNGKey(7), 3)
    inputs = jax.random.normal(k_in, (B, T, W))
    reset = np.zeros((B, T), bool)
    reset[1, 5] = True
    state = random_state(core, B, k_state)
    params = jax.jit(core.init)(k_init, inputs, reset, state)
    weights = jax.random.normal(jax.random.PRNGKey(8), (B, T, W))

    def loss(params, inputs, state, form):
        if form == "parallel":
            out, _ = core.apply(params, inputs, reset, state, method=type(core).sequence)
        else:
            out, _ = stepwise(core, params, inputs, reset, state)
        return jnp.sum(jnp.tanh(out) * weights)

    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(params, inputs, state, "parallel")
    ref = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=3)(params, inputs, state, "steps")
    paths = jax.tree_util.tree_flatten_with_path(grads)[0]
    for (path, got), want in zip(paths, jax.tree.leaves(ref), strict=True):
        if "valid" in jax.tree_util.keystr(path):  # 0/1 flags: masks in one form, factors in the other
            continue
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=jax.tree_util.keystr(path))


def test_transformer_step_sees_exactly_its_context_window():
    """Run step by step (the ring cache wraps several times): output t depends on input s exactly when s is
    in t's episode and within the stacked layers' reach, layers x (context - 1) steps back (each layer
    attends to the last `context` steps up to t), read off the Jacobian."""
    core = make_backbone(small_config("transformer").wm)
    C, T, W = core.context, 20, 32
    reset = np.zeros((1, T), bool)
    reset[0, [0, 13]] = True
    inputs = jax.random.normal(jax.random.PRNGKey(0), (1, T, W))
    params = jax.jit(core.init)(jax.random.PRNGKey(1), inputs, reset, core.initial_state((1,)))
    outputs = lambda x: stepwise(core, params, x, reset, core.initial_state((1,)))[0][0]  # [T, W]
    jac = np.asarray(jax.jit(jax.jacfwd(outputs))(inputs))[:, :, 0]  # [T, W, T, W]
    depends = np.abs(np.asarray(jac)).max(axis=(1, 3)) > 1e-7  # [t, s]
    assert core.layers * (C - 1) < 13  # the reach ends inside the first episode, so both limits are seen
    episode_start = np.where(np.arange(T) >= 13, 13, 0)
    s, t = np.meshgrid(np.arange(T), np.arange(T))
    expected = (s <= t) & (s >= t - core.layers * (C - 1)) & (s >= episode_start[t])
    np.testing.assert_array_equal(depends, expected)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_world_model_observes_a_window_as_acting_steps_through_it(backbone):
    """`observe` (one parallel pass) equals the posterior steps `act` takes one env step at a time."""
    config = small_config(backbone)
    agent = make_dreamer(config, env_spec(config.env.name))
    wm = agent.world_model
    params = jax.jit(agent.init)(jax.random.PRNGKey(0)).params.wm
    B, T = 2, 9
    obs = {"vector": jax.random.normal(jax.random.PRNGKey(1), (B, T, 4))}
    action = jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(2), (B, T), 0, 2), 2)
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    is_first[1, 4] = True
    keys = np.asarray(jax.random.split(jax.random.PRNGKey(3), T))
    action = np.asarray(action)  # the window on the host: the loop below slices it step by step
    posts, prior_logits = jax.tree.map(
        np.asarray, jax.jit(lambda *a: observe(wm, *a))(params, obs, action, is_first, keys)
    )

    @jax.jit
    def act_step(latent, action_t, embed_t, first, key):
        keep = 1.0 - first.astype(jnp.float32)
        latent = mask_loop(latent, keep)
        action_t = action_t * keep[:, None]
        return wm.apply(params, latent, action_t, embed_t, key, method=WorldModel.obs_step_loop)

    latent = wm.zeros((B,))
    embed = np.asarray(jax.jit(lambda obs: wm.apply(params, obs, method=WorldModel.encode))(obs))
    for t in range(T):
        latent, prior_t = act_step(latent, action[:, t], embed[:, t], is_first[:, t], keys[t])
        np.testing.assert_allclose(posts.deter[:, t], latent.deter, atol=1e-5, rtol=1e-5)
        np.testing.assert_array_equal(posts.stoch[:, t], latent.stoch)
        np.testing.assert_allclose(prior_logits[:, t], prior_t, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_dreamer_learns_with_the_backbone(backbone):
    """One learner update on a replayed batch is finite, changes the backbone's parameters, and imagination
    starts from every posterior state (its state included)."""
    config = small_config(backbone)
    agent = make_dreamer(config, env_spec(config.env.name))
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    B, T = config.replay.batch_size, config.replay.batch_length
    is_first = np.zeros((B, T), bool)
    is_first[:, 0] = True
    batch = {
        "obs": {"vector": jax.random.normal(jax.random.PRNGKey(1), (B, T, 4))},
        "action": jax.nn.one_hot(jax.random.randint(jax.random.PRNGKey(2), (B, T), 0, 2), 2),
        "reward": np.ones((B, T), np.float32),
        "is_first": is_first,
        "is_last": np.zeros((B, T), bool),
        "is_terminal": np.zeros((B, T), bool),
    }
    learn = jax.jit(agent.learn)
    new, metrics, writes = learn(state, batch, jax.random.PRNGKey(4))
    new, metrics, writes = learn(new, batch, jax.random.PRNGKey(5))  # the first update's lr is 0 (warm-up)
    assert writes == {}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    before = jax.tree.leaves(state.params.wm["params"]["core"])
    after = jax.tree.leaves(new.params.wm["params"]["core"])
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))


def test_parallel_backbone_refuses_the_replay_context():
    with pytest.raises(ConfigError, match="replay.context=false"):
        make_config("debug", **{"wm.backbone": "mamba", "wm.mamba.head_dim": 8})
    with pytest.raises(ConfigError, match="head_dim=48"):
        make_config("debug", **{"wm.backbone": "mamba", "replay.context": False, "wm.mamba.head_dim": 48})
    with pytest.raises(ConfigError, match="transformer.heads=3"):  # 64 / 3 is not a whole head
        make_config(
            "debug", **{"wm.backbone": "transformer", "replay.context": False, "wm.transformer.heads": 3}
        )
    with pytest.raises(ConfigError, match="even size"):  # 64 / 64 = 1 channel: no pair to rotate
        make_config(
            "debug", **{"wm.backbone": "transformer", "replay.context": False, "wm.transformer.heads": 64}
        )
    for backbone, extra in BACKBONES.items():  # and quiet on settings that work
        make_config("debug", **{"wm.backbone": backbone, "replay.context": False, **extra})
