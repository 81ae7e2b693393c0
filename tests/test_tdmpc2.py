"""TD-MPC2: SimNorm, the MPPI planner on a hand-made latent model, the two-hot value head, determinism of
planning, masking of episode starts in the losses, the refusal of discrete envs, exact resume, and three
details against the reference (nicklashansen/tdmpc2) computed with scipy: the policy loss's entropy term,
the extra MPPI iterations of large action spaces, and the weight init."""

import dataclasses
import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from experiments import run as run_cli
from mbrl_jax.agents import make_agent
from mbrl_jax.agents.tdmpc2 import (
    LatentModel,
    PlanSettings,
    make_networks,
    model_loss,
    mppi_plan,
    plan_settings,
    policy_loss,
    shift_plan,
    simnorm,
    window_rows,
)
from mbrl_jax.config import make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.logging import read_metrics
from mbrl_jax.nets.distributions import symlog, twohot_bins, twohot_encode, twohot_mean
from mbrl_jax.returns import return_norm_init
from mbrl_jax.runner import train

# A model small enough to compile in seconds; one update per env step (16 x 4 replayed steps per env step).
TINY = {
    "tdmpc2.latent_dim": 16,
    "tdmpc2.enc_dim": 32,
    "tdmpc2.mlp_dim": 32,
    "tdmpc2.num_samples": 32,
    "tdmpc2.num_elites": 8,
    "tdmpc2.num_pi_trajs": 4,
    "tdmpc2.num_bins": 21,
    "replay.batch_size": 16,
    "replay.train_ratio": 64.0,
    "replay.prefill": 100,
    "run.steps": 400,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 200,
    "run.eval_every": 200,
    "run.eval_episodes": 2,
    "run.eval_steps": 20,
}


def test_simnorm_is_a_softmax_per_group():
    x = np.random.default_rng(0).normal(size=(3, 5, 32)).astype(np.float32) * 4
    y = np.asarray(jax.jit(simnorm, static_argnums=1)(x, 8))
    groups = y.reshape(3, 5, 4, 8)
    np.testing.assert_allclose(groups.sum(-1), 1.0, rtol=1e-5)
    xg = x.reshape(3, 5, 4, 8)
    expected = np.exp(xg - xg.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(groups, expected, rtol=1e-5, atol=1e-7)


def toy_model(goal: float) -> LatentModel:
    """z' = z + a (1-d), reward -(z' - goal)^2, terminal value -(z - goal)^2: from z the best plan moves to
    the goal in the first step (a_0 = goal - z) and then stays (a_t = 0)."""
    return LatentModel(
        next=lambda z, a: z + a,
        reward=lambda z, a: -jnp.sum((z + a - goal) ** 2, -1),
        value=lambda z, a, k: -jnp.sum((z - goal) ** 2, -1),
        policy=lambda z, k: jnp.zeros(z.shape),
    )


def test_mppi_finds_the_optimum_of_a_quadratic_cost():
    settings = PlanSettings(discount=0.9)
    z0 = np.array([0.2], np.float32)

    @jax.jit  # one program for both goals (the goal an argument)
    def plan(goal):
        return mppi_plan(toy_model(goal), settings, z0, jnp.zeros((3, 1)), jax.random.PRNGKey(0))

    elite, std, mean, first = map(np.asarray, plan(np.float32(0.7)))
    np.testing.assert_allclose(first, [0.5], atol=0.05)
    np.testing.assert_allclose(mean[1:], 0.0, atol=0.1)
    np.testing.assert_allclose(elite, [0.5], atol=0.1)
    assert std.shape == (1,) and float(std[0]) < 0.5
    # The optimum moves with the cost: another goal, another first action.
    _, _, _, first = plan(np.float32(-0.6))
    np.testing.assert_allclose(first, [-0.8], atol=0.05)


def test_warm_start_shifts_the_plan_and_resets_at_episode_starts():
    mean = np.arange(12.0, dtype=np.float32).reshape(2, 3, 2)
    warm = np.asarray(jax.jit(shift_plan)(mean, np.array([False, True])))
    np.testing.assert_array_equal(warm[0], [[2, 3], [4, 5], [0, 0]])
    np.testing.assert_array_equal(warm[1], np.zeros((3, 2)))


@pytest.mark.parametrize("value", [-750.0, -3.2, 0.0, 0.7, 42.0, 1000.0])
def test_twohot_value_head_round_trips(value):
    probs, decoded = map(np.asarray, _twohot_round_trip(np.float32(value)))
    assert int((probs > 0).sum()) <= 2 and np.isclose(float(probs.sum()), 1.0)
    np.testing.assert_allclose(float(decoded), value, rtol=1e-4, atol=1e-5)


@jax.jit  # the value an argument: one program for every parametrization
def _twohot_round_trip(value):
    """value -> (its two-hot encoding in symlog space over 101 bins, the value the head decodes from it)."""
    bins = twohot_bins(101, -10.0, 10.0)
    probs = twohot_encode(symlog(value), bins)
    return probs, twohot_mean(jnp.log(probs + 1e-30), bins)


@pytest.fixture(scope="module")
def tiny_agent():
    config = make_config("tdmpc2", **TINY)
    spec = env_spec(config.env.name)
    agent = make_agent(config, spec)
    return config, spec, agent, jax.jit(agent.init)(jax.random.PRNGKey(0))


def test_planning_is_deterministic_for_a_fixed_key(tiny_agent):
    _, spec, agent, state = tiny_agent
    n = 3
    obs = {"vector": jax.random.normal(jax.random.PRNGKey(1), (n, 3))}
    args = (state, agent.initial_carry(n), obs, np.zeros((n, spec.action_dim), np.float32), np.ones(n, bool))
    act = jax.jit(agent.act, static_argnames="mode")
    a1, c1 = jax.tree.map(np.asarray, act(*args, jax.random.PRNGKey(5)))
    a2, c2 = act(*args, jax.random.PRNGKey(5))
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(c1.mean, c2.mean)
    a3, _ = act(*args, jax.random.PRNGKey(6))
    assert not np.array_equal(a1, a3)
    assert a1.shape == (n, spec.action_dim) and np.all(np.abs(a1) <= 1)
    m1, _ = act(*args, jax.random.PRNGKey(5), mode=True)
    np.testing.assert_array_equal(m1, c1.mean[:, 0])  # evaluation: the plan mean's first action


@functools.partial(jax.jit, static_argnames=("B", "T"))
def _window(key, B=4, T=4):
    k = jax.random.split(key, 3)
    return {
        "obs": {"vector": jax.random.normal(k[0], (B, T, 3))},
        "action": jax.random.uniform(k[1], (B, T, 1), minval=-1, maxval=1),
        "reward": jax.random.normal(k[2], (B, T)),
        "is_first": jnp.zeros((B, T), bool).at[:, 0].set(True),
        "is_last": jnp.zeros((B, T), bool),
        "is_terminal": jnp.zeros((B, T), bool),
    }


def _set(x, index, value) -> np.ndarray:
    """A host copy of x with x[index] = value."""
    x = np.array(x)
    x[index] = value
    return x


def test_steps_after_an_episode_start_do_not_count(tiny_agent):
    config, spec, _, state = tiny_agent
    nets = make_networks(config, spec)
    batch = _window(jax.random.PRNGKey(0))
    batch["is_first"] = _set(batch["is_first"], np.s_[0, 2], True)  # row 0: a new episode starts at obs_2
    valid = np.asarray(jax.jit(window_rows)(batch)["valid"])
    np.testing.assert_array_equal(valid[:, 0], [1, 0, 0])
    np.testing.assert_array_equal(valid[:, 1], [1, 1, 1])

    @jax.jit
    def loss(b):
        p = state.params
        return model_loss(nets, p.model, p.pi, state.target_q, window_rows(b), jax.random.PRNGKey(1))[0]

    other = dict(batch)
    other["obs"] = {"vector": _set(batch["obs"]["vector"], np.s_[0, 2:], 9.0)}  # another episode's data
    other["reward"] = _set(batch["reward"], np.s_[0, 2:], -50.0)
    np.testing.assert_allclose(loss(batch), loss(other), rtol=1e-6)
    # inside the valid part it counts (fresh reward and Q heads are uniform: the consistency loss shows it)
    other["obs"] = {"vector": _set(batch["obs"]["vector"], np.s_[0, 1], 9.0)}
    assert abs(float(loss(batch)) - float(loss(other))) > 1e-4


def test_a_terminal_step_bootstraps_nothing(tiny_agent):
    config, spec, _, state = tiny_agent
    nets = make_networks(config, spec)
    batch = _window(jax.random.PRNGKey(2))
    p = state.params

    @jax.jit
    def moved(target_q):  # fresh heads predict exactly 0: move them
        leaves, treedef = jax.tree.flatten(target_q)
        keys = jax.random.split(jax.random.PRNGKey(3), len(leaves))
        noisy = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys, strict=True)]
        return jax.tree.unflatten(treedef, noisy)

    target_q = moved(state.target_q)

    @jax.jit
    def td_target(b):
        rows = window_rows(b)
        return model_loss(nets, p.model, p.pi, target_q, rows, jax.random.PRNGKey(1))[1][1]["td_target"]

    rewards = np.asarray(batch["reward"], np.float64)[:, 1:].mean()
    assert abs(float(td_target(batch)) - rewards) > 1e-3
    batch["is_terminal"] = _set(batch["is_terminal"], np.s_[:, 1:], True)
    np.testing.assert_allclose(td_target(batch), rewards, rtol=1e-5)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["agent=tdmpc2", "--env", "CartPole-v1"], ["CartPole-v1", "tdmpc2", "continuous actions"]),
        (["--preset", "tdmpc2", "--env", "Acrobot-v1"], ["Acrobot-v1", "tdmpc2", "continuous actions"]),
        (["agent=tdmpc2", "--env", "Pendulum-v1"], ["replay.batch_length", "tdmpc2.horizon + 1 = 4"]),
    ],
)
def test_an_env_tdmpc2_cannot_take_is_refused_before_compiling(argv, words, tmp_path, capsys, monkeypatch):
    import mbrl_jax.runner

    for name in ("train", "train_sweep"):
        monkeypatch.setattr(mbrl_jax.runner, name, lambda *a, **k: pytest.fail("training started"))
    assert run_cli.main([*argv, "--logdir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    for word in words:
        assert word in err, (word, err)


def test_the_tdmpc2_presets_are_accepted():
    for presets in (["tdmpc2"], ["tdmpc2", "tdmpc2-1m"], ["tdmpc2", "tdmpc2-5m"]):
        config = make_config(*presets)
        assert config.agent == "tdmpc2" and config.sample_length == config.tdmpc2.horizon + 1
        assert config.updates_per_iteration == config.env_steps_per_iteration  # UTD 1


def _params(state):
    return jax.tree.leaves(jax.device_get(state.agent))


def test_a_tdmpc2_run_resumes_bit_for_bit(tmp_path: Path):
    config = make_config("tdmpc2", **TINY)
    straight, _ = train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "resumed", progress=False, stop_after_chunks=2)  # saved after chunk 1
    resumed, _ = train(config, tmp_path / "resumed", progress=False)
    for x, y in zip(_params(straight), _params(resumed), strict=True):
        np.testing.assert_array_equal(x, y)
    records = read_metrics(tmp_path / "straight")
    assert records == read_metrics(tmp_path / "resumed")
    assert [r["env_steps"] for r in records] == [200, 300, 400]
    assert all(np.isfinite(r["loss_model"]) for r in records)
    assert "eval_return" in records[1] and "eval_return" not in records[0]


def _head_and_eps(nets, pi_params, z, key):
    """What the reference reads from JAX: the policy head's output [..., 2A] at z and the standard normal
    numbers normal(key) [..., A] that `Networks.policy` draws (call it inside a jitted function)."""
    head = nets.pi.apply(pi_params, z)
    return head, jax.random.normal(key, (*head.shape[:-1], head.shape[-1] // 2))


def _policy_draw(nets, head, eps):
    """The policy head's Gaussian before the tanh, in float64, from the head's output and the policy's
    standard normal numbers (`_head_and_eps`): (u [..., A], mean, std), u = mean + std * eps."""
    t = nets.config.tdmpc2
    mu, raw = np.split(np.asarray(head, np.float64), 2, -1)
    log_std = t.log_std_min + 0.5 * (t.log_std_max - t.log_std_min) * (np.tanh(raw) + 1.0)
    eps = np.asarray(eps, np.float64)
    return mu + eps * np.exp(log_std), mu, np.exp(log_std)


def test_the_policy_entropy_term_is_the_reference_one(tiny_agent):
    """The reference's policy loss (tdmpc2.py `update_pi`, world_model.py `pi`) weighs the Gaussian
    log-density of the pre-tanh sample u, times the action dimension A: scipy's norm.logpdf(u; mean, std)
    summed over A, times A. The squashed log-probability (a metric) subtracts sum log(1 - tanh(u)^2)."""
    config, spec, agent, state = tiny_agent
    nets, pi = agent.networks, state.params.pi
    A, key = spec.action_dim, jax.random.PRNGKey(3)

    @jax.jit
    def draw(pi):
        # policy_loss draws the policy's sample with the first half of its key
        k_pi, _ = jax.random.split(key)
        zs = jax.random.normal(jax.random.PRNGKey(4), (4, 6, config.tdmpc2.latent_dim))
        drawn = _head_and_eps(nets, pi, zs, key), _head_and_eps(nets, pi, zs, k_pi)
        return zs, nets.policy(pi, zs, key)[:2], drawn

    zs, (action, log_prob), (drawn, drawn_pi) = draw(pi)
    u, mu, std = _policy_draw(nets, *drawn)
    gaussian = scipy.stats.norm.logpdf(u, loc=mu, scale=std).sum(-1)
    np.testing.assert_allclose(np.asarray(log_prob.scaled), A * gaussian, rtol=1e-5, atol=1e-4)
    squashed = gaussian - np.log(np.maximum(1.0 - np.tanh(u) ** 2, 0.0) + 1e-6).sum(-1)
    np.testing.assert_allclose(np.asarray(log_prob.squashed), squashed, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(np.asarray(action), np.tanh(u), atol=1e-5)

    # In the loss: two entropy coefficients, the same keys; the Q part cancels in the difference, which is
    # (c1 - c2) * mean over steps and batch of rho^t * valid * A * log N(u).
    valid = np.ones((4, 6), np.float32)
    valid[2:, 1] = 0.0
    rho = config.tdmpc2.rho ** np.arange(4)[:, None]
    u, mu, std = _policy_draw(nets, *drawn_pi)
    gaussian = scipy.stats.norm.logpdf(u, loc=mu, scale=std).sum(-1)

    @jax.jit
    def losses_at(pi, q, zs, valid):  # one program, one loss per entropy coefficient
        losses = []
        for coef in (0.5, 2.0):
            c = config.replace(**{"tdmpc2.entropy_coef": coef})
            n = dataclasses.replace(nets, config=c)
            losses.append(policy_loss(n, pi, q, zs, valid, return_norm_init(), key)[0])
        return losses

    losses = [float(x) for x in losses_at(pi, state.params.model.q, zs, valid)]
    want = (0.5 - 2.0) * np.mean(rho * valid * A * gaussian)
    np.testing.assert_allclose(losses[0] - losses[1], want, rtol=1e-4)


@pytest.mark.parametrize("action_dim", [1, 6, 19, 20, 21, 38])
def test_large_action_spaces_get_two_more_mppi_iterations(action_dim):
    """The reference: `cfg.iterations += 2 * int(cfg.action_dim >= 20)`; `PlanSettings.iterations` is the
    length of mppi_plan's scan over iterations."""
    config = make_config("tdmpc2")
    extra = 2 if action_dim >= 20 else 0
    assert plan_settings(config, 0.99, action_dim).iterations == config.tdmpc2.iterations + extra


def test_weights_are_initialised_as_the_reference():
    """The reference's `trunc_normal_(w, std=0.02)` cuts at the absolute values -2 and 2 (100 std): its
    weights are scipy's truncnorm(-100, 100, scale=0.02), practically N(0, 0.02^2); a cut at 2 std (std
    0.0176) fails this Kolmogorov-Smirnov test by far (statistic about 0.06 on 262,144 weights)."""
    config = make_config("tdmpc2", **{**TINY, "tdmpc2.mlp_dim": 512})
    nets = make_networks(config, env_spec(config.env.name))
    params = jax.jit(nets.dynamics.init)(jax.random.PRNGKey(0), np.zeros((1, 16 + 1), np.float32))
    kernel = np.asarray(params["params"]["NormedDense_1"]["Dense_0"]["kernel"], np.float64).ravel()
    assert kernel.size == 512 * 512
    reference = scipy.stats.truncnorm(-2.0 / 0.02, 2.0 / 0.02, scale=0.02)
    assert scipy.stats.kstest(kernel, reference.cdf).pvalue > 1e-3
    two_sigma = scipy.stats.truncnorm(-2.0, 2.0, scale=0.02)
    assert scipy.stats.kstest(kernel, two_sigma.cdf).pvalue < 1e-6  # the test can tell the two apart
    assert np.all(np.asarray(params["params"]["NormedDense_1"]["Dense_0"]["bias"]) == 0.0)
