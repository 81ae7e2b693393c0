"""Drama (agent='drama'): the world model's structure against a table read from the authors' code
(realwenlongwang/drama), the inputs each head reads, the authors' lambda returns and free bits, Mamba-2
without its MLP, acting from the context before the current observation, the checks, and a short run that
trains and resumes bit for bit."""

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.agents.drama import (
    WorldModel,
    drama_lambda_returns,
    make_drama,
    make_networks,
    orthogonal_init,
    world_model_loss,
)
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.envs.base import EnvSpec
from mbrl_jax.logging import read_metrics
from mbrl_jax.nets.distributions import categorical_kl
from mbrl_jax.runner import train
from mbrl_jax.world_models.mamba import Mamba2

# Small enough to compile in seconds; windows of 8, imagination from 4 starts after 2 transitions.
TINY = {
    "drama.deter": 32,
    "drama.stoch": 4,
    "drama.classes": 4,
    "drama.head_dim": 16,
    "drama.ssm_state": 4,
    "drama.chunk": 4,
    "drama.mlp_units": 16,
    "drama.mlp_layers": 1,
    "drama.head_units": 16,
    "drama.actor_units": 16,
    "drama.critic_units": 16,
    "drama.ac_layers": 1,
    "drama.num_bins": 15,
    "drama.imag_horizon": 3,
    "drama.act_context": 3,
    "drama.depth": 2,
    "replay.batch_size": 2,
    "replay.batch_length": 8,
    "replay.train_ratio": 16.0,
    "replay.prefill": 40,
    "replay.capacity": 400,
    "replay.imag_batch": 4,
    "replay.imag_context": 3,
    "run.steps": 160,
    "run.chunk_steps": 40,
    "run.checkpoint_every": 80,
    "run.eval_every": 80,
    "run.eval_episodes": 2,
    "run.eval_steps": 10,
}

# The authors' Atari model (config_files/train.yaml; Pong: 64 x 64 x 3 frames, 6 actions), layer by layer as
# their code builds it (sub_models/world_models.py, mamba_ssm/models/mixer_seq_simple.py, modules/mamba2.py,
# agents.py), each with the flax path and shape it has here (kernels [in, out]; convolutions HWIO).
ATARI = EnvSpec("atari", {"image": (64, 64, 3)}, True, 6, 27_000)
AUTHORS_WORLD_MODEL = {
    # Encoder: Conv2d(k 5, pad 2) + BatchNorm2d + SiLU; depth 16 x mults (1, 2, 3, 4, 4), the first stride 1
    **{
        f"image_encoder/conv{i}/kernel": (5, 5, cin, cout)
        for i, (cin, cout) in enumerate([(3, 16), (16, 32), (32, 48), (48, 64), (64, 64)])
    },
    **{f"image_encoder/conv{i}/bias": (c,) for i, c in enumerate([16, 32, 48, 64, 64])},
    **{
        f"image_encoder/norm{i}/{p}": (c,)
        for i, c in enumerate([16, 32, 48, 64, 64])
        for p in ("scale", "bias")
    },
    # DistHead: post_head Linear(4 x 4 x 64 = 1024 encoder features, 32 x 32); prior_head Linear(512, 32 x 32)
    "post_head/kernel": (1024, 1024),
    "post_head/bias": (1024,),
    "prior_head/kernel": (512, 1024),
    "prior_head/bias": (1024,),
    # Decoder: Linear(1024 = z, 64 x 4 x 4) + BatchNorm2d; ConvTranspose2d stride 2 to 64, 48, 32, 16 (each
    # + BatchNorm2d + SiLU); ConvTranspose2d stride 1 to 3 channels (here a stride-1 convolution), sigmoid
    "image_decoder/space/kernel": (1024, 1024),
    "image_decoder/space/bias": (1024,),
    **{f"image_decoder/space_norm/{p}": (64,) for p in ("scale", "bias")},
    **{
        f"image_decoder/conv{i}/kernel": (5, 5, cin, cout)
        for i, (cin, cout) in enumerate([(32, 16), (48, 32), (64, 48), (64, 64)])
    },
    **{f"image_decoder/conv{i}/bias": (c,) for i, c in enumerate([16, 32, 48, 64])},
    **{f"image_decoder/norm{i}/{p}": (c,) for i, c in enumerate([16, 32, 48, 64]) for p in ("scale", "bias")},
    "image_decoder/out/kernel": (5, 5, 16, 3),
    "image_decoder/out/bias": (3,),
    # MixerModel stem: Linear(1024 + 6 one-hot action, 512) + RMSNorm + SiLU
    "stem/kernel": (1030, 512),
    "stem/bias": (512,),
    "stem_norm/scale": (512,),
    # 2 Blocks (RMSNorm, Mamba2 mixer, no MLP: d_intermediate = 0), d_model 512, expand 2, headdim 64 (16
    # heads), d_state 16, d_conv 4; in_proj to [z 1024, x 1024, B 16, C 16, dt 16], no bias; conv1d over
    # xBC (1056 channels) with bias; gated RMSNorm of 1024; out_proj no bias; then norm_f
    **{
        f"core/blocks_{i}/{name}": shape
        for i in range(2)
        for name, shape in {
            "mix_norm/scale": (512,),
            "in_proj/kernel": (512, 2096),
            "conv_kernel": (4, 1056),
            "conv_bias": (1056,),
            "dt_bias": (16,),
            "a_log": (16,),
            "skip": (16,),
            "gate_norm/scale": (1024,),
            "out_proj/kernel": (1024, 512),
        }.items()
    },
    "core/norm/scale": (512,),
    # RewardHead / TerminationHead: Linear(512 = h, 256) + RMSNorm + SiLU, Linear(256, 255) / Linear(256, 1)
    "reward_head/MLP_0/Dense_0/kernel": (512, 256),
    "reward_head/MLP_0/Dense_0/bias": (256,),
    "reward_head/MLP_0/RMSNorm_0/scale": (256,),
    "reward_head/Dense_0/kernel": (256, 255),
    "reward_head/Dense_0/bias": (255,),
    "term_head/MLP_0/Dense_0/kernel": (512, 256),
    "term_head/MLP_0/Dense_0/bias": (256,),
    "term_head/MLP_0/RMSNorm_0/scale": (256,),
    "term_head/Dense_0/kernel": (256, 1),
    "term_head/Dense_0/bias": (1,),
}
# ActorCriticAgent: 3 x (Linear + RMSNorm + SiLU) of 256 (actor) / 512 (critic) on (z, h) = 1536 features,
# then Linear to the 6 action logits / 255 value bins
AUTHORS_ACTOR = {"Dense_0": (1536, 256), "Dense_1": (256, 256), "Dense_2": (256, 256), "Dense_3": (256, 6)}
AUTHORS_CRITIC = {"Dense_0": (1536, 512), "Dense_1": (512, 512), "Dense_2": (512, 512), "Dense_3": (512, 255)}
# The authors' counts, summed from the shapes above (their `update_model_parameters` prints these for Pong):
# world model 7,155,459 (the paper's "7M"), actor 527,366, critic 1,444,607.
AUTHORS_COUNTS = {"wm": 7_155_459, "actor": 527_366, "critic": 1_444_607}


def _shapes(tree) -> dict[str, tuple[int, ...]]:
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(k.key) for k in path): tuple(x.shape) for path, x in flat}


def _dense_layers(shapes: dict) -> dict:
    return {k.split("/")[1]: v for k, v in shapes.items() if k.endswith("kernel")}


def test_the_atari_model_has_the_authors_layers_and_parameter_count(capsys):
    config = make_config("drama", **{"drama.conv": "xla"})
    state = jax.eval_shape(make_drama(config, ATARI).init, jax.random.PRNGKey(0))
    assert _shapes(state.params.wm) == AUTHORS_WORLD_MODEL
    assert _dense_layers(_shapes(state.params.actor)) == AUTHORS_ACTOR
    assert _dense_layers(_shapes(state.params.critic)) == AUTHORS_CRITIC
    counts = {
        name: sum(x.size for x in jax.tree.leaves(getattr(state.params, name))) for name in AUTHORS_COUNTS
    }
    assert sum(int(np.prod(s)) for s in AUTHORS_WORLD_MODEL.values()) == AUTHORS_COUNTS["wm"]
    assert counts == AUTHORS_COUNTS
    # BatchNorm's running statistics are state, not parameters (as PyTorch's buffers)
    assert {k.rsplit("/", 1)[1] for k in _shapes(state.wm_stats)} == {"mean", "var"}
    with capsys.disabled():
        print(
            f"\nDrama Atari world model: {counts['wm']:,} parameters (paper: ~7M); "
            f"actor {counts['actor']:,}, critic {counts['critic']:,}"
        )


@pytest.mark.parametrize("shape", [(24, 6), (6, 24), (8, 8)])
def test_orthogonal_init_is_torchs_and_runs_under_vmap(shape):
    """The authors' `orthogonal_`: Q of a Gaussian matrix's QR with diag(R) > 0, along the shorter side,
    times the gain; computed without jnp.linalg.qr, whose batched kernel deadlocks a vmapped init on CPU."""
    key = jax.random.PRNGKey(4)
    rows, cols = shape
    a = np.asarray(jax.random.normal(key, (max(rows, cols), min(rows, cols))), np.float64)
    q, r = np.linalg.qr(a)
    q = q * np.sign(np.diag(r))
    expected = 2.0 * (q if rows >= cols else q.T)
    init = jax.jit(orthogonal_init(2.0), static_argnums=1)
    np.testing.assert_allclose(init(key, shape), expected, atol=1e-5)
    keys = jax.random.split(key, 3)
    batched = jax.jit(jax.vmap(lambda k: orthogonal_init(2.0)(k, shape)))(keys)
    np.testing.assert_allclose(batched[0], init(keys[0], shape), atol=1e-6)


# The tests below compute under `jax.jit`, one compiled program per computation, and build their inputs with
# NumPy: run op by op, each primitive and shape compiled its own program, over a thousand for this file.
@pytest.fixture(scope="module")
def tiny():
    config = make_config("drama", **TINY)
    spec = env_spec(config.env.name)
    nets = make_networks(config, spec)
    state = jax.jit(make_drama(config, spec).init)(jax.random.PRNGKey(0))
    return nets, state


def _windows(spec, B=2, L=6, seed=0):
    """Host (NumPy) arrays, float32 as the networks take them."""
    rng = np.random.default_rng(seed)
    A = spec.action_dim
    is_first = np.zeros((B, L), bool)
    is_first[:, 0] = True
    return {
        "obs": {k: rng.normal(size=(B, L, *s)).astype(np.float32) for k, s in spec.obs_shapes.items()},
        "action": np.eye(A, dtype=np.float32)[rng.integers(0, A, (B, L))],  # one-hot
        "reward": rng.normal(size=(B, L)).astype(np.float32),
        "is_first": is_first,
        "is_last": np.zeros((B, L), bool),
        "is_terminal": np.zeros((B, L), bool),
    }


def _observe(nets, state, batch, seed=3):
    return _observe_jit(nets.world_model, state.params.wm, batch, seed)


@functools.partial(jax.jit, static_argnums=0)
def _observe_jit(world_model, wm_params, batch, seed):
    key = jax.random.PRNGKey(seed)
    return world_model.apply(
        {"params": wm_params},
        batch["obs"],
        batch["action"][:, 1:],
        batch["is_first"],
        key,
        False,
        method=WorldModel.observe,
    )


def test_each_head_reads_what_the_authors_feed_it(tiny):
    """Posterior: o_t alone; h_t: (z, a) up to t; prior, reward, termination: h_t; decoder: z_t alone."""
    nets, state = tiny
    batch = _windows(nets.spec)
    out = _observe(nets, state, batch)
    changed = lambda a, b: (
        np.abs(np.asarray(a) - np.asarray(b)).reshape(a.shape[0], a.shape[1], -1).max(-1) > 0
    )
    # another action at step 3 (taken at o_2): h from t = 2 on, nothing of the posterior or decoder
    action = batch["action"].copy()
    action[:, 3] = 1.0 - action[:, 3]
    acted = {**batch, "action": action}
    other = _observe(nets, state, acted)
    np.testing.assert_array_equal(out["post"], other["post"])
    for key in batch["obs"]:
        np.testing.assert_array_equal(out["obs_pred"][key], other["obs_pred"][key])
    assert (changed(out["h"], other["h"]) == (np.arange(5) >= 2)).all()
    # another o_2: its posterior and reconstruction only, and h from t = 2 on
    obs = {key: x.copy() for key, x in batch["obs"].items()}
    for x in obs.values():
        x[:, 2] += 1.0
    seen = {**batch, "obs": obs}
    other = _observe(nets, state, seen)
    assert (changed(out["post"], other["post"]) == (np.arange(6) == 2)).all()
    for key in batch["obs"]:
        assert (changed(out["obs_pred"][key], other["obs_pred"][key]) == (np.arange(6) == 2)).all()
    assert not changed(out["h"], other["h"])[:, :2].any()
    # the heads are functions of h alone, the decoder of z alone (the same z: the same key)
    from mbrl_jax.nets.distributions import straight_through_onehot_sample

    @jax.jit
    def heads(wm_params, h, post):
        apply = lambda method, *args: nets.world_model.apply({"params": wm_params}, *args, method=method)
        z = straight_through_onehot_sample(jax.random.PRNGKey(3), post)
        return (
            apply(WorldModel.reward_term, h),
            apply(WorldModel.prior_logits, h),
            apply(WorldModel.decode, z),
        )

    (reward, term), prior, decoded = heads(state.params.wm, out["h"], out["post"])
    np.testing.assert_allclose(reward, out["reward"], rtol=1e-6)
    np.testing.assert_allclose(term, out["term"], rtol=1e-6)
    np.testing.assert_allclose(prior, out["prior"], rtol=1e-6)
    for key, pred in decoded.items():
        np.testing.assert_allclose(pred, out["obs_pred"][key], rtol=1e-6)


def test_lambda_returns_are_the_authors_loop():
    """`calc_lambda_return` of agents.py, written out: batch-major, values one longer than rewards."""
    rng = np.random.default_rng(1)
    B, H, gamma, lam = 3, 7, 0.985, 0.95
    rewards, values = rng.normal(size=(B, H)), rng.normal(size=(B, H + 1))
    term = (rng.random((B, H)) < 0.2).astype(np.float64)
    expected = np.zeros((B, H + 1))
    expected[:, -1] = values[:, -1]
    for t in reversed(range(H)):
        inv = 1 - term[:, t]
        expected[:, t] = (
            rewards[:, t] + gamma * inv * (1 - lam) * values[:, t] + gamma * inv * lam * expected[:, t + 1]
        )
    returns = jax.jit(drama_lambda_returns, static_argnums=(3, 4))
    got = returns(*(x.T.astype(np.float32) for x in (rewards, values, term)), gamma, lam)
    np.testing.assert_allclose(np.asarray(got).T, expected[:, :-1], rtol=1e-5, atol=1e-5)


def test_free_bits_apply_to_the_batch_mean_kl(tiny):
    """max(free, mean KL), not mean(max(free, KL)); transitions into an episode start do not count."""
    nets, state = tiny
    batch = _windows(nets.spec)
    batch["is_first"][0, 4] = True
    out = _observe(nets, state, batch, 5)
    kl = np.asarray(jax.jit(categorical_kl)(out["post"][:, 1:], out["prior"]))  # [B, L-1]
    valid = np.ones_like(kl)
    valid[0, 3] = 0.0
    mean = (kl * valid).sum() / valid.sum()
    free = float(np.quantile(kl[valid > 0], 0.6))  # above some steps' KL, below others'
    assert not np.isclose(np.mean(np.maximum(kl[valid > 0], free)), max(mean, free))  # the two differ here
    cfg = nets.config.replace(**{"drama.free_bits": float(free)})
    nets_free = make_networks(cfg, nets.spec)
    loss = jax.jit(lambda p, b, key: world_model_loss(nets_free, p, None, b, key))
    _, (_, metrics) = loss(state.params.wm, batch, jax.random.PRNGKey(5))
    np.testing.assert_allclose(metrics["kl"], mean, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss_dyn"], max(mean, free), rtol=1e-5)


def test_mamba_without_mlp_has_no_mlp_and_its_two_forms_agree():
    """Drama's layers (mlp=False): no MLP parameters, the window's parallel form equals the step form; the
    default keeps its MLP (the `mamba` backbone is unchanged)."""
    kwargs = dict(width=16, layers=2, expand=2, head_dim=8, state=4, conv=3, chunk=4)
    reset = np.zeros((2, 9), bool)
    reset[1, 5] = True
    for mlp in (False, True):
        core = Mamba2(**kwargs, mlp=mlp)

        @jax.jit
        def parallel_and_stepped(reset, core=core):
            u = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 16))
            params = core.init(jax.random.PRNGKey(1), u, reset, core.initial_state((2,)))
            out, _ = core.apply(params, u, reset, core.initial_state((2,)))

            def step(state, xs):
                x, first = xs
                state = jax.tree.map(lambda s: s * (1.0 - first).reshape(-1, *[1] * (s.ndim - 1)), state)
                y, state = core.apply(params, x, state, method=Mamba2.step)
                return state, y

            _, stepped = jax.lax.scan(
                step, core.initial_state((2,)), (u.swapaxes(0, 1), reset.T.astype(jnp.float32))
            )
            return params, out, stepped

        params, out, stepped = parallel_and_stepped(reset)
        names = set(_shapes(params["params"]["blocks_0"]))
        assert any(n.startswith("mlp_") for n in names) == mlp
        np.testing.assert_allclose(out, stepped.swapaxes(0, 1), rtol=1e-4, atol=1e-5)


def test_the_policy_acts_on_the_context_before_the_current_observation(tiny):
    """As the authors' loop: the first step of an episode is random; later steps read the last act_context
    (observation, action) pairs, not the current observation, which joins the context one step later."""
    nets, state = tiny
    config, spec = nets.config, nets.spec
    agent = make_drama(config, spec)
    act = jax.jit(agent.act, static_argnames="mode")
    n, A, C = 3, spec.action_dim, config.drama.act_context
    carry = jax.jit(agent.initial_carry, static_argnums=0)(n)
    obs = {k: np.ones((n, *s), np.float32) for k, s in spec.obs_shapes.items()}
    first = np.ones(n, bool)
    for step in range(C + 2):
        prev = np.eye(A, dtype=np.float32)[np.full((n,), step % A)]  # one-hot
        action, carry = act(state, carry, obs, prev, first, jax.random.PRNGKey(step))
        assert (np.asarray(carry.count) == min(step, C)).all()
        assert np.allclose(np.asarray(action).sum(-1), 1.0)
        first = np.zeros(n, bool)
        obs = jax.tree.map(lambda x: x + np.float32(0.5), obs)
    other = jax.tree.map(lambda x: x * np.float32(7.0), obs)
    key = jax.random.PRNGKey(9)
    a1, c1 = act(state, carry, obs, prev, first, key, mode=True)
    a2, c2 = act(state, carry, other, prev, first, key, mode=True)
    np.testing.assert_array_equal(a1, a2)  # the current observation is not read yet
    assert not np.array_equal(c1.pending, c2.pending)  # but it is kept for the next step
    # an episode start empties the context
    _, c3 = act(state, carry, obs, prev, np.array([True, False, True]), key)
    assert list(np.asarray(c3.count)) == [0, C, 0]


def test_image_observations_train_batch_norm_statistics():
    spec = EnvSpec("images", {"image": (16, 16, 3)}, True, 3, 100)
    config = make_config("drama", **TINY)
    nets = make_networks(config, spec)
    state = jax.jit(make_drama(config, spec).init)(jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    batch = _windows(spec)
    batch["obs"] = {"image": rng.integers(0, 256, (2, 6, 16, 16, 3)).astype(np.uint8)}
    loss, (stats, metrics) = jax.jit(functools.partial(world_model_loss, nets))(
        state.params.wm, state.wm_stats, batch, jax.random.PRNGKey(1)
    )
    assert np.isfinite(float(loss))
    moved = jax.tree.map(
        lambda a, b: float(np.abs(np.asarray(a) - np.asarray(b)).max()), stats, state.wm_stats
    )
    assert all(v > 0 for v in jax.tree.leaves(moved))


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"env.name": "Pendulum-v1"}, "continuous actions"),
        ({"replay.sampler": "uniform"}, "replay.sampler='uniform'"),
        ({"replay.context": True}, "replay.context=true"),
        ({"replay.imag_context": 1}, "replay.imag_context=1"),
        ({"drama.head_dim": 48}, "divisible"),
    ],
)
def test_settings_drama_cannot_take_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace("[", r"\[")):
        make_config("drama", **overrides)


def test_the_preset_is_the_authors_settings_and_is_accepted():
    config = make_config("drama")
    d, r = config.drama, config.replay
    assert config.agent == "drama" and config.env.num_envs == 1 and config.run.eval_policy == "mode"
    assert (d.deter, d.stoch, d.classes, d.layers, d.ssm_state, d.depth) == (512, 32, 32, 2, 16, 16)
    assert (d.gamma, d.return_lambda, d.actor_entropy, d.actor_unimix, d.imag_horizon) == (
        0.985,
        0.95,
        3e-4,
        0.0,
        16,
    )
    assert (d.wm_lr, d.wm_eps, d.wm_clip, d.ac_lr, d.ac_eps, d.ac_clip) == (
        4e-5,
        1e-20,
        1000.0,
        4e-5,
        1e-20,
        100.0,
    )
    assert (r.batch_size, r.batch_length, r.imag_batch, r.sampler) == (16, 128, 1024, "frequency")
    assert config.updates_per_iteration == config.env_steps_per_iteration == 1  # one update per env step
    # the dreamer agent no longer has a `drama` preset; its own settings are refused for agent=drama
    with pytest.raises(ConfigError, match="wm.deter"):
        make_config("drama", **{"wm.deter": 256})


def _leaves(state):
    return jax.tree.leaves(jax.device_get(state.agent))


def test_a_drama_run_trains_and_resumes_bit_for_bit(tmp_path: Path):
    config = make_config("drama", **TINY)
    straight, _ = train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "resumed", progress=False, stop_after_chunks=2)  # saved after chunk 2 (80)
    resumed, _ = train(config, tmp_path / "resumed", progress=False)
    for x, y in zip(_leaves(straight), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
    records = read_metrics(tmp_path / "straight")
    assert records == read_metrics(tmp_path / "resumed")
    assert [r["env_steps"] for r in records] == [80, 120, 160]
    for key in ("loss_model", "loss_rec", "loss_rew", "loss_term", "loss_actor", "loss_critic"):
        assert all(np.isfinite(r[key]) for r in records), key
    assert "eval_return" not in records[0] and "eval_return" in records[1] and "eval_return" in records[2]
