"""DreamerV3's losses called on their own, each checked against a second computation: gradient routing of the
KL terms and of the actor-critic loss, free nats, advantage scaling, imagination weights, the slow critic,
initialisation scales, and what the replay stores (rows, replay context, online queue)."""

import functools

import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from gymnax.environments.classic_control.cartpole import EnvState as CartPoleState

from mbrl_jax.agents.dreamer import (
    actor_critic_loss,
    imagination_weights,
    imagine_trajectory,
    make_dreamer,
    replay_value_loss,
    world_model_loss,
)
from mbrl_jax.config import make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.nets.distributions import categorical_kl, kl_loss_free_nats
from mbrl_jax.replay import replay_add, replay_init, replay_sample, replay_update
from mbrl_jax.returns import return_norm_init
from mbrl_jax.trainer import make_train
from mbrl_jax.world_models.rssm import Latent, WorldModel, observe


def _perturb(params, key, scale=0.1):
    """Move every parameter off its initial value, so zero-initialised heads give non-trivial outputs."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
    )


# The tests below compute under `jax.jit`, one compiled program per computation: run op by op, each primitive
# and shape compiled its own program, thousands for this file. Tests with the same settings share an agent.
@functools.cache
def _setup(env="CartPole-v1", **overrides):
    config = make_config("debug", **{"env.name": env}, **overrides)
    spec = env_spec(env)
    agent = make_dreamer(config, spec)

    @jax.jit
    def init(key, perturb_key):
        state = agent.init(key)
        return state.replace(params=_perturb(state.params, perturb_key))

    return config, spec, agent, init(jax.random.PRNGKey(0), jax.random.PRNGKey(1))


def _batch(spec, B, T, key):
    return _batch_arrays(spec.obs_shapes["vector"], spec.action_dim, B, T, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _batch_arrays(obs_shape, action_dim, B, T, key):
    k_obs, k_act, k_rew = jax.random.split(key, 3)
    return {
        "obs": {"vector": jax.random.normal(k_obs, (B, T, *obs_shape))},
        "action": jax.nn.one_hot(jax.random.randint(k_act, (B, T), 0, action_dim), action_dim),
        "reward": jax.random.normal(k_rew, (B, T)),
        "is_first": jnp.zeros((B, T), bool).at[:, 0].set(True),
        "is_last": jnp.zeros((B, T), bool),
        "is_terminal": jnp.zeros((B, T), bool),
    }


def _is_zero(tree) -> bool:
    return all((np.asarray(x) == 0).all() for x in jax.tree.leaves(tree))


def _world_model_grads(agent, spec, wm_params, length: int):
    """The world-model loss's gradient (`params` subtree) on 4 windows of `length` steps (`_batch` with key 2,
    posterior keys from key 3), in one compiled program."""

    @jax.jit
    def grads(wm_params):
        batch = _batch(spec, 4, length, jax.random.PRNGKey(2))
        keys = jax.random.split(jax.random.PRNGKey(3), length)
        return jax.grad(lambda p: world_model_loss(agent.networks, p, batch, keys)[0])(wm_params)

    return grads(wm_params)["params"]


# ---- world-model loss ----------------------------------------------------------------------------------


@pytest.mark.parametrize("term", ["dyn", "rep"])
def test_kl_terms_train_only_their_side(term):
    """dyn = KL(sg(post) || prior) gives no gradient to the posterior; rep = KL(post || sg(prior)) none to the
    prior. A one-step window, so the posterior sample feeds no later prior."""
    scales = {
        "wm.loss_rec": 0.0,
        "wm.loss_rew": 0.0,
        "wm.loss_con": 0.0,
        "wm.loss_dyn": 0.0,
        "wm.loss_rep": 0.0,
        "wm.free_nats": 0.0,
    }
    scales[f"wm.loss_{term}"] = 1.0
    config, spec, agent, state = _setup(**{"replay.context": False}, **scales)

    g = _world_model_grads(agent, spec, state.params.wm, length=1)
    posterior, prior = ("encoder", "post_net", "post_out"), ("prior_net", "prior_out")
    zero, moved = (posterior, prior) if term == "dyn" else (prior, posterior)
    for name in zero:
        assert _is_zero(g[name]), f"{term} loss reached {name}"
    for name in moved:
        assert not _is_zero(g[name]), f"{term} loss did not reach {name}"


HEADS = {"rec": "decoder", "rew": "reward_head", "con": "cont_head"}


@pytest.mark.parametrize("term", sorted(HEADS))
def test_each_prediction_loss_reaches_its_head_and_no_other(term):
    """Gradient routing of the world model's prediction terms: the reconstruction, reward and continue losses
    each train their own head (and the shared encoder and recurrent core), and give exactly zero gradient to
    the other two heads."""
    scales = {f"wm.loss_{t}": float(t == term) for t in ("rec", "rew", "con", "dyn", "rep")}
    config, spec, agent, state = _setup(**{"replay.context": False}, **scales)

    g = _world_model_grads(agent, spec, state.params.wm, length=5)
    for other, head in HEADS.items():
        assert _is_zero(g[head]) == (other != term), f"{term} loss -> {head}"
    assert not _is_zero(g["encoder"]) and not _is_zero(g["core"])


@pytest.mark.parametrize("part", ["actor", "critic"])
def test_actor_loss_trains_only_the_actor_and_critic_loss_only_the_critic(part):
    """With one of the two loss scales at zero, the other network's gradient is exactly zero: advantages and
    lambda returns are stopped where the actor reads the critic and the critic reads the policy's samples."""
    scales = {"dreamer.loss_actor": float(part == "actor"), "dreamer.loss_critic": float(part == "critic")}
    config, spec, agent, state = _setup(**scales)
    nets = agent.networks

    @jax.jit
    def grads(state):
        start = jax.tree.map(
            lambda x: jax.random.normal(jax.random.PRNGKey(5), (9, *x.shape[1:])),
            agent.initial_carry(1),
        )
        traj = imagine_trajectory(nets, state.params, start, jax.random.PRNGKey(4))
        loss = lambda actor, critic: actor_critic_loss(
            nets, actor, critic, traj, state.slow_critic, return_norm_init()
        )[0]
        return jax.grad(loss, argnums=(0, 1))(state.params.actor, state.params.critic)

    g_actor, g_critic = grads(state)
    g = {"actor": g_actor, "critic": g_critic}
    other = "critic" if part == "actor" else "actor"
    assert _is_zero(g[other]) and not _is_zero(g[part])


def _np_kl(p_logits, q_logits):
    p = np.exp(p_logits - p_logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    q = np.exp(q_logits - q_logits.max(-1, keepdims=True))
    q /= q.sum(-1, keepdims=True)
    return (p * (np.log(p) - np.log(q))).sum(-1)  # [S]


def test_free_nats_clip_the_kl_summed_over_latents():
    rng = np.random.default_rng(0)
    lhs, rhs = rng.normal(0, 0.7, (6, 5)), rng.normal(0, 0.7, (6, 5))
    per_latent = _np_kl(lhs, rhs)
    assert (per_latent < 1.0).all() and per_latent.sum() > 1.0  # a per-latent clip would differ
    free_nats = jax.jit(lambda p, q: kl_loss_free_nats(categorical_kl(p, q), 1.0))
    got = free_nats(lhs.astype(np.float32), rhs.astype(np.float32))
    np.testing.assert_allclose(float(got), per_latent.sum(), rtol=1e-5)
    # below the threshold the loss is the constant 1 and gives no gradient
    small = np.float32(0.1) * lhs[:2].astype(np.float32)
    loss = lambda x: kl_loss_free_nats(categorical_kl(x, jnp.zeros_like(x)), 1.0)
    assert float(jax.jit(loss)(small)) == 1.0
    assert _is_zero(jax.jit(jax.grad(loss))(small))


def test_continue_target_holds_the_discount():
    """The continue head is trained towards (1 - terminal) * discount, so the loss is smallest there."""
    config, spec, agent, state = _setup(**{"replay.context": False})

    @jax.jit
    def head_and_loss(wm_params):
        batch = _batch(spec, 1, 1, jax.random.PRNGKey(2))
        keys = jax.random.split(jax.random.PRNGKey(3), 1)
        posts, _ = observe(
            agent.world_model, wm_params, batch["obs"], batch["action"], batch["is_first"], keys
        )
        feat = posts.feat
        logit = agent.world_model.apply(wm_params, feat, method=WorldModel.reward_cont)[1]
        _, (_, metrics) = world_model_loss(agent.networks, wm_params, batch, keys)
        return jax.nn.sigmoid(logit), metrics

    p, metrics = head_and_loss(state.params.wm)
    p = np.asarray(p)
    target = config.dreamer.discount
    expected = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    np.testing.assert_allclose(float(metrics["loss_con"]), float(expected.mean()), rtol=1e-5)


# ---- imagination and actor-critic ----------------------------------------------------------------------


def test_actor_critic_losses_give_no_gradient_to_the_world_model():
    config, spec, agent, state = _setup()
    nets, B, T = agent.networks, 3, 6

    def behaviour(wm_params, actor_params, critic_params):
        batch = _batch(spec, B, T, jax.random.PRNGKey(2))
        keys = jax.random.split(jax.random.PRNGKey(3), T)
        posts, _ = observe(
            nets.world_model, wm_params, batch["obs"], batch["action"], batch["is_first"], keys
        )
        starts = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), posts)
        params = state.params.replace(wm=wm_params, actor=actor_params)
        traj = imagine_trajectory(nets, params, starts, jax.random.PRNGKey(4))
        loss, (_, returns, _) = actor_critic_loss(
            nets, actor_params, critic_params, traj, state.slow_critic, return_norm_init()
        )
        repval, _ = replay_value_loss(
            nets, critic_params, state.slow_critic, posts.feat, batch, returns[0].reshape(B, T)
        )
        return loss + repval

    p = state.params
    g_wm, g_actor, g_critic = jax.jit(jax.grad(behaviour, argnums=(0, 1, 2)))(p.wm, p.actor, p.critic)
    assert _is_zero(g_wm)
    assert not _is_zero(g_actor) and not _is_zero(g_critic)


def test_imagination_uses_soft_continue_probabilities_from_the_start_state_on():
    config, spec, agent, state = _setup()
    nets = agent.networks

    @jax.jit
    def imagined_and_head(params):
        start = Latent(
            jax.random.normal(jax.random.PRNGKey(5), (7, config.wm.deter)),
            jax.nn.one_hot(
                jax.random.randint(jax.random.PRNGKey(6), (7, config.wm.stoch), 0, config.wm.classes),
                config.wm.classes,
            ),
            jnp.zeros((7, config.wm.stoch, config.wm.classes)),
        )
        traj = imagine_trajectory(nets, params, start, jax.random.PRNGKey(7))
        head = jax.nn.sigmoid(nets.world_model.apply(params.wm, start.feat, method=WorldModel.reward_cont)[1])
        return traj, head

    traj, head = imagined_and_head(state.params)
    H = config.dreamer.imag_horizon
    assert traj["cont"].shape == (H + 1, 7) and traj["reward"].shape == (H, 7)
    np.testing.assert_allclose(traj["cont"][0], head, rtol=1e-6)
    cont = np.asarray(traj["cont"])
    assert ((cont > 0) & (cont < 1)).all()  # probabilities, not hard flags


def test_imagination_weights_are_the_cumulative_product_of_continue_probabilities():
    cont = np.random.default_rng(1).uniform(0.2, 1.0, (6, 3))
    expected = np.ones((5, 3))
    for t in range(5):
        expected[t] = np.prod(cont[: t + 1], axis=0)
    np.testing.assert_allclose(jax.jit(imagination_weights)(cont.astype(np.float32)), expected, rtol=1e-6)


def _np_softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_actor_loss_divides_advantages_by_the_return_scale():
    """The actor loss against a NumPy computation: lambda returns by a Python loop, the 5-95 percentile
    range as the scale (retnorm_rate=1 makes the EMA the current batch's value), weights by cumulative
    products, unimix log-probabilities."""
    config, spec, agent, state = _setup(**{"dreamer.retnorm_rate": 1.0})
    nets, H, N, A = agent.networks, config.dreamer.imag_horizon, 16, spec.action_dim
    rng = np.random.default_rng(2)
    F = config.wm.deter + config.wm.stoch * config.wm.classes
    traj = {
        "feat": rng.normal(size=(H + 1, N, F)).astype(np.float32),
        "action": np.eye(A, dtype=np.float32)[rng.integers(0, A, (H, N))],  # one-hot
        "reward": rng.normal(0, 5, (H, N)).astype(np.float32),
        "cont": rng.uniform(0.5, 1.0, (H + 1, N)).astype(np.float32),
    }
    p = state.params

    @jax.jit
    def loss_and_logits(p, traj):
        _, (norm, returns, metrics) = actor_critic_loss(
            nets, p.actor, p.critic, traj, state.slow_critic, return_norm_init()
        )
        return (
            returns,
            metrics,
            nets.value(p.critic, traj["feat"]),
            nets.actor.apply(p.actor, traj["feat"][:-1]),
        )

    returns, metrics, critic_logits, actor_logits = loss_and_logits(p, traj)

    bins = np.asarray(nets.bins, np.float64)
    probs_v = _np_softmax(np.asarray(critic_logits, np.float64))
    v = (probs_v * bins).sum(-1)
    values = np.sign(v) * np.expm1(np.abs(v))  # [H+1, N]
    r, c = np.asarray(traj["reward"], np.float64), np.asarray(traj["cont"], np.float64)
    R = np.zeros((H + 1, N))
    R[H] = values[H]
    lam = config.dreamer.return_lambda
    for t in reversed(range(H)):
        R[t] = r[t] + c[t + 1] * ((1 - lam) * values[t + 1] + lam * R[t + 1])
    R = R[:H]
    np.testing.assert_allclose(returns, R, rtol=1e-4, atol=1e-4)
    scale = max(1.0, np.percentile(R, 95) - np.percentile(R, 5))
    assert scale > 2.0  # the division matters for these returns
    np.testing.assert_allclose(float(metrics["return_scale"]), scale, rtol=1e-4)
    weight = np.cumprod(c, 0)[:H]
    logits = np.asarray(actor_logits, np.float64)
    probs = (1 - config.dreamer.unimix) * _np_softmax(logits) + config.dreamer.unimix / A
    logp = np.log((probs * np.asarray(traj["action"])).sum(-1))
    entropy = -(probs * np.log(probs)).sum(-1)
    advantage = (R - values[:H]) / scale
    expected = -(weight * (logp * advantage + config.dreamer.actor_entropy * entropy)).mean()
    np.testing.assert_allclose(float(metrics["loss_actor"]), expected, rtol=1e-4, atol=1e-6)


def test_slow_critic_moves_by_exactly_the_ema_rate():
    config, spec, agent, state = _setup(**{"replay.context": False})
    batch = _batch(spec, 2, 8, jax.random.PRNGKey(2))
    new, _, _ = jax.jit(agent.learn)(state, batch, jax.random.PRNGKey(3))
    rate = config.dreamer.slow_critic_rate
    for old, fast, slow in zip(
        jax.tree.leaves(state.slow_critic),
        jax.tree.leaves(new.params.critic),
        jax.tree.leaves(new.slow_critic),
        strict=True,
    ):
        expected = rate * np.asarray(fast, np.float64) + (1 - rate) * np.asarray(old, np.float64)
        np.testing.assert_allclose(slow, expected, rtol=1e-6, atol=1e-7)
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state.slow_critic), jax.tree.leaves(new.slow_critic), strict=True)
    )


# ---- initialisation ------------------------------------------------------------------------------------


def test_first_policy_is_near_uniform_with_unimix():
    config = make_config("debug")
    agent = make_dreamer(config, env_spec(config.env.name))

    @jax.jit
    def first_and_extreme_probs(key):
        state = agent.init(key)
        feat = jax.random.normal(
            jax.random.PRNGKey(1), (256, config.wm.deter + config.wm.stoch * config.wm.classes)
        )
        probs = agent.policy(state.params.actor, feat).probs
        extreme = agent.policy(_perturb(state.params.actor, jax.random.PRNGKey(2), 50.0), feat).probs
        return probs, extreme

    probs, extreme = map(np.asarray, first_and_extreme_probs(jax.random.PRNGKey(0)))
    A = probs.shape[-1]
    assert float(np.max(np.abs(probs - 1 / A))) < 0.02  # output layer scaled by 0.01 at init
    # unimix: every action keeps at least unimix / A probability, whatever the logits
    assert float(extreme.min()) >= config.dreamer.unimix / A * (1 - 1e-5)


def test_block_gru_fan_in_is_the_whole_input():
    config = make_config("debug", **{"wm.deter": 256, "wm.gru.blocks": 8, "wm.hidden": 64})
    agent = make_dreamer(config, env_spec(config.env.name))
    core = jax.jit(agent.init)(jax.random.PRNGKey(0)).params.wm["params"]["core"]
    g, per_block_in, _ = core["hidden_kernel"].shape
    # truncated normal with variance 1 / fan_in, fan_in = blocks * per-block input (reference BlockLinear)
    np.testing.assert_allclose(np.std(core["hidden_kernel"]), 1 / np.sqrt(g * per_block_in), rtol=0.05)
    np.testing.assert_allclose(np.std(core["gates_kernel"]), 1 / np.sqrt(config.wm.deter), rtol=0.05)
    # dense layers before each norm carry a bias
    assert all("bias" in core[f"Dense_{i}"] for i in range(3))


# ---- what the replay holds -----------------------------------------------------------------------------


def test_replay_row_holds_obs_with_the_action_that_led_to_it():
    """CartPole's dynamics, stepped from each stored observation with the next row's action, give the next
    row's observation; rows at episode starts hold a zero action."""
    config = make_config("debug", **{"replay.prefill": 600, "replay.capacity": 4000})
    state = jax.jit(make_train(config).init)(jax.random.PRNGKey(0))
    data = jax.device_get(state.replay.data)
    n = int(state.replay.count)
    env, params = gymnax.make("CartPole-v1")
    obs, action, first = data["obs"]["vector"][:, :n], data["action"][:, :n], data["is_first"][:, :n]
    assert first.sum() > 5 and (~first[:, 1:]).sum() > 100
    assert (action[first] == 0).all()
    prev, nxt, act = obs[:, :-1][~first[:, 1:]], obs[:, 1:][~first[:, 1:]], action[:, 1:][~first[:, 1:]]
    assert (act.sum(-1) == 1).all()  # one-hot
    s = CartPoleState(
        x=prev[:, 0],
        x_dot=prev[:, 1],
        theta=prev[:, 2],
        theta_dot=prev[:, 3],
        time=np.zeros(len(prev), np.int32),
    )
    step = jax.jit(jax.vmap(env.step_env, in_axes=(None, 0, 0, None)))
    stepped = step(jax.random.PRNGKey(0), s, np.argmax(act, -1).astype(np.int32), params)[0]
    np.testing.assert_allclose(stepped, nxt, atol=1e-5)
    # random prefill steps have no latent: the stored replay context is zero
    assert (data["deter"] == 0).all() and (data["stoch"] == 0).all()


def _rows(spec, config, E, T, key):
    batch = _batch(spec, E, T, key)
    batch["deter"] = jnp.zeros((E, T, config.wm.deter))
    batch["stoch"] = jnp.zeros((E, T, config.wm.stoch, config.wm.classes))
    return batch


def test_replay_context_equals_carrying_the_latent_across_two_windows():
    """Two consecutive online windows: the second starts from the latent written back by the first, and the
    posteriors equal one observe over both windows."""
    config, spec, agent, state = _setup()
    wm, E, T = agent.world_model, 2, 5

    @jax.jit
    def full_and_windows(params):
        data = _rows(spec, config, E, 2 * T + 1, jax.random.PRNGKey(2))
        replay = replay_init(jax.tree.map(lambda x: x[:, 0], data), 2 * T + 1)
        for t in range(2 * T + 1):
            replay = replay_add(replay, jax.tree.map(lambda x, t=t: x[:, t], data))
        keys = jax.random.split(jax.random.PRNGKey(3), 2 * T)
        full, _ = observe(
            wm,
            params,
            jax.tree.map(lambda x: x[:, 1:], data["obs"]),
            data["action"][:, 1:],
            data["is_first"][:, 1:],
            keys,
        )

        posts, starts, slots = [], [], []
        for w in range(2):
            batch, index, replay = replay_sample(
                replay, jax.random.PRNGKey(w), E, T + 1, online=True, stride=T
            )
            start = Latent(batch["deter"][:, 0], batch["stoch"][:, 0], jnp.zeros_like(batch["stoch"][:, 0]))
            rows = jax.tree.map(lambda x: x[:, 1:], batch)
            post, _ = observe(
                wm, params, rows["obs"], rows["action"], rows["is_first"], keys[w * T : (w + 1) * T], start
            )
            replay = replay_update(replay, index, {"deter": post.deter, "stoch": post.stoch})
            posts.append(post)
            starts.append(start)
            slots.append(index.slot[:, 0])
        return full, posts, starts, slots

    full, posts, starts, slots = full_and_windows(state.params.wm)
    for w in range(2):
        np.testing.assert_array_equal(slots[w], [w * T] * E)  # the online queue's windows in order
    both = jax.tree.map(lambda a, b: np.concatenate([a, b], 1), *posts)
    np.testing.assert_allclose(both.deter, full.deter, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(both.stoch.argmax(-1), full.stoch.argmax(-1))
    # the second window read the first window's last posterior as its context, not zeros
    np.testing.assert_array_equal(starts[1].deter, posts[0].deter[:, -1])
    assert not np.allclose(starts[1].deter, 0.0)


def test_online_queue_trains_each_fresh_window_once():
    E, B, L, stride, capacity = 3, 8, 5, 4, 64
    example = {"t": np.zeros((E,), np.int32), "e": np.arange(E, dtype=np.int32)}
    replay = jax.jit(replay_init, static_argnums=1)(example, capacity)
    add = jax.jit(replay_add)
    sample = jax.jit(replay_sample, static_argnums=(2, 3), static_argnames=("online", "stride"))
    taken = []
    for t in range(40):
        replay = add(replay, {"t": np.full((E,), t, np.int32), "e": np.arange(E, dtype=np.int32)})
        before = int(replay.online_next)
        batch, index, replay = sample(replay, jax.random.PRNGKey(t), B, L, online=True, stride=stride)
        if int(replay.online_next) != before:
            assert (batch["e"][:E, 0] == np.arange(E)).all()
            assert (batch["t"][:E] == before + np.arange(L)).all()
            taken.append((before, t))
    # windows start at 0, 4, 8, ... each once, as soon as their last step (start + L - 1) is written
    assert [s for s, _ in taken] == list(range(0, 40 - L + 1, stride))
    assert all(t == s + L - 1 for s, t in taken)
