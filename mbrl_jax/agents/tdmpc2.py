"""TD-MPC2 (Hansen, Su and Wang, "TD-MPC2: Scalable, Robust World Models for Continuous Control", ICLR 2024;
arXiv:2310.16828): a decoder-free latent model, a Q ensemble and a policy prior, with MPPI planning in the
latent space.

`make_tdmpc2(config, spec)` returns the `Agent` functions (mbrl_jax/agents/base.py):
  init(key)                                                -> AgentState
  initial_carry(n)                                         -> PlanCarry (the previous plan mean per env)
  act(state, carry, obs, prev_action, is_first, key, mode) -> (action [n, A], carry)  MPPI per env
  learn(state, batch, key)                                 -> (state, metrics, {})  one update
  replay_context(carry)                                    -> {} (nothing stored with the replay)
It reads the config group `tdmpc2` (and the replay window, which must be `tdmpc2.horizon + 1` steps long).
Its settings (`TDMPC2Config`), presets, checks and memory estimate live here; `mbrl_jax/agents/__init__.py`
registers them.

Replay convention: action and reward are stored with the step they led to, so a window of H + 1 steps holds
obs_0..obs_H with a_t = action[t + 1] taken at obs_t and r_t = reward[t + 1] received on reaching obs_{t+1}.

The planner `mppi_plan` takes the latent model as plain functions (`LatentModel`), so it can be run and tested
on a hand-made model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrl_jax.agents.base import Agent
from mbrl_jax.envs.base import EnvSpec
from mbrl_jax.errors import ConfigError
from mbrl_jax.nets.distributions import twohot_bins, twohot_log_prob, twohot_mean
from mbrl_jax.returns import ReturnNorm, return_norm_init, return_scale, update_return_norm
from mbrl_jax.settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, setting

if TYPE_CHECKING:
    from mbrl_jax.config import Config

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class TDMPC2Config:
    """TD-MPC2's settings; defaults are the paper's (Hansen et al. 2024, reference config, 5M model)."""

    latent_dim: int = setting(512, "latent state size (SimNorm groups of simnorm_dim)", POSITIVE)
    enc_dim: int = setting(256, "encoder hidden width", POSITIVE)
    num_enc_layers: int = setting(
        2, "encoder layers, the SimNorm output layer included (at least 1 hidden)", AT_LEAST_ONE
    )
    mlp_dim: int = setting(
        512, "hidden width of dynamics, reward, Q and policy MLPs (2 hidden layers)", POSITIVE
    )
    simnorm_dim: int = setting(8, "SimNorm group size (latent_dim must divide by it)", POSITIVE)
    num_q: int = setting(5, "Q functions in the ensemble (two drawn at random for targets)", POSITIVE)
    dropout: float = setting(0.01, "dropout in the first layer of each Q function", UNIT_INTERVAL)
    num_bins: int = setting(101, "two-hot bins of reward and Q heads", POSITIVE)
    vmin: float = setting(-10.0, "lowest bin, in symlog space")
    vmax: float = setting(10.0, "highest bin, in symlog space")
    horizon: int = setting(
        3, "planning and training horizon (replay windows are horizon + 1 steps)", POSITIVE
    )
    iterations: int = setting(6, "MPPI iterations per plan", POSITIVE)
    num_samples: int = setting(
        512, "action sequences per MPPI iteration, policy trajectories included", POSITIVE
    )
    num_elites: int = setting(64, "best sequences the MPPI mean and std are refit to", POSITIVE)
    num_pi_trajs: int = setting(24, "sequences drawn from the policy prior per plan", NON_NEGATIVE)
    temperature: float = setting(0.5, "MPPI weight exp(temperature * (value - max value))", POSITIVE)
    min_std: float = setting(0.05, "smallest MPPI std (also the exploration noise floor)", POSITIVE)
    max_std: float = setting(2.0, "MPPI std at the start of each plan", POSITIVE)
    lr: float = setting(3e-4, "learning rate of model, Q and policy (Adam)", POSITIVE)
    enc_lr_scale: float = setting(0.3, "encoder learning rate = enc_lr_scale x lr", POSITIVE)
    grad_clip_norm: float = setting(20.0, "global gradient norm clip (model and policy separately)", POSITIVE)
    rho: float = setting(0.5, "weight rho^t of horizon step t in every loss", UNIT_INTERVAL)
    consistency_coef: float = setting(20.0, "scale of the latent consistency loss", NON_NEGATIVE)
    reward_coef: float = setting(0.1, "scale of the reward loss", NON_NEGATIVE)
    value_coef: float = setting(0.1, "scale of the value loss", NON_NEGATIVE)
    entropy_coef: float = setting(1e-4, "policy prior entropy bonus", NON_NEGATIVE)
    log_std_min: float = setting(-10.0, "smallest log std of the policy prior")
    log_std_max: float = setting(2.0, "largest log std of the policy prior")
    tau: float = setting(0.01, "EMA rate of the target Q functions and of the Q scale", UNIT_INTERVAL)
    discount_denom: float = setting(
        5.0, "discount = (L/denom - 1) / (L/denom), L the episode length", POSITIVE
    )
    discount_min: float = setting(0.95, "lower clip of the heuristic discount", UNIT_INTERVAL)
    discount_max: float = setting(0.995, "upper clip of the heuristic discount", UNIT_INTERVAL)

    def check(self, path: str) -> None:
        pairs = [
            (
                self.latent_dim % self.simnorm_dim == 0,
                f"latent_dim={self.latent_dim} must be divisible by {path}.simnorm_dim={self.simnorm_dim}",
            ),
            (
                self.num_elites <= self.num_samples,
                f"num_elites={self.num_elites} must be <= {path}.num_samples={self.num_samples}",
            ),
            (
                self.num_pi_trajs < self.num_samples,
                f"num_pi_trajs={self.num_pi_trajs} must be < {path}.num_samples={self.num_samples}",
            ),
            (self.num_q >= 2, f"num_q={self.num_q} must be >= 2 (two members are drawn for targets)"),
            (
                self.min_std <= self.max_std,
                f"min_std={self.min_std} must be <= {path}.max_std={self.max_std}",
            ),
            (
                self.log_std_min < self.log_std_max,
                f"log_std_min={self.log_std_min} must be < {path}.log_std_max={self.log_std_max}",
            ),
            (self.vmin < self.vmax, f"vmin={self.vmin} must be < {path}.vmax={self.vmax}"),
            (self.num_bins >= 2, f"num_bins={self.num_bins} must be >= 2"),
            (
                self.discount_min <= self.discount_max,
                f"discount_min={self.discount_min} must be <= {path}.discount_max={self.discount_max}",
            ),
        ]
        for ok, message in pairs:
            if not ok:
                raise ConfigError(f"{path}.{message}")


# The paper's model sizes (its table of sizes; the reference's presets): 1M and 5M (the default).
TDMPC2_SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "tdmpc2-1m": {
        "tdmpc2.enc_dim": 256,
        "tdmpc2.mlp_dim": 384,
        "tdmpc2.latent_dim": 128,
        "tdmpc2.num_enc_layers": 2,
        "tdmpc2.num_q": 2,
    },
    "tdmpc2-5m": {
        "tdmpc2.enc_dim": 256,
        "tdmpc2.mlp_dim": 512,
        "tdmpc2.latent_dim": 512,
        "tdmpc2.num_enc_layers": 2,
        "tdmpc2.num_q": 5,
    },
}

# TD-MPC2 on Pendulum-v1 with the paper's settings: one env, batch 256, windows of horizon + 1 = 4 steps with
# no replay context, and one update per env step (UTD 1: train_ratio = 256 x 4 replayed steps per env step),
# windows sampled uniformly (no online queue). Seed steps: the reference's max(1000, 5 x episode length)
# = 1,000 for Pendulum's 200-step episodes, 5% of this 20k budget; the replay holds the whole run as the
# reference's 1M buffer does. Evaluation: the plan mean without noise, every 2,000 env steps (an evaluation
# of 8 episodes plans as many times as 1,600 training steps).
TDMPC2_TASK_PRESETS: dict[str, dict[str, Any]] = {
    "tdmpc2": {
        "agent": "tdmpc2",
        "env.name": "Pendulum-v1",
        "env.num_envs": 1,
        "run.steps": 20_000,
        "run.chunk_steps": 1_000,
        "run.eval_every": 2_000,
        "run.eval_policy": "mode",
        "replay.capacity": 100_000,
        "replay.prefill": 1_000,
        "replay.batch_size": 256,
        "replay.batch_length": 4,
        "replay.context": False,
        "replay.online": False,
        "replay.train_ratio": 1024.0,
    },
}


def activation_floats(config: Config, obs_shapes: dict[str, tuple[int, ...]]) -> int:
    """float32 values kept per replayed step for the backward pass of one update (mbrl_jax/memory.py):
    encoder, dynamics, reward, policy and (online and target) Q layers, about three values per unit (dense,
    norm, activation), latents and two-hot distributions."""
    t = config.tdmpc2
    units = t.enc_dim * (t.num_enc_layers - 1) + 2 * t.mlp_dim * (3 + 2 * t.num_q)
    return 3 * units + 6 * t.latent_dim + (2 + 2 * t.num_q) * t.num_bins


# The reference initialises every linear weight with torch's `trunc_normal_(w, std=0.02)`, whose cut-offs
# a=-2, b=2 are absolute values, not multiples of std: at +-100 std nothing is cut, so the weights are
# N(0, 0.02^2). flax's bounds are in std units (its default +-2 std would give a std of 0.0176).
weight_init = nn.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02)


# ---- networks ----------------------------------------------------------------------------------------------


def simnorm(x: jax.Array, group: int) -> jax.Array:
    """Simplicial normalisation (TD-MPC2, sec. 3 "SimNorm"): [..., D] split into D / group groups, each
    mapped onto a simplex by a softmax. Same shape as `x`."""
    grouped = x.reshape(*x.shape[:-1], x.shape[-1] // group, group)
    return jax.nn.softmax(grouped, -1).reshape(x.shape)


class NormedDense(nn.Module):
    """Dense -> (dropout) -> LayerNorm -> Mish, the reference's hidden layer."""

    features: int
    dropout: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Dense(self.features, kernel_init=weight_init)(x)
        if self.dropout > 0:
            x = nn.Dropout(self.dropout, deterministic=self.deterministic)(x)
        return jax.nn.mish(nn.LayerNorm(epsilon=1e-5)(x))


class SimNormMLP(nn.Module):
    """Hidden layers, then Dense -> LayerNorm -> SimNorm: the encoder and the latent dynamics."""

    hidden: tuple[int, ...]
    latent: int
    group: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for width in self.hidden:
            x = NormedDense(width)(x)
        x = nn.LayerNorm(epsilon=1e-5)(nn.Dense(self.latent, kernel_init=weight_init)(x))
        return simnorm(x, self.group)


class LinearHeadMLP(nn.Module):
    """Hidden layers then a linear output; `zero_out` zeroes the output layer (reward and Q heads start at a
    uniform two-hot distribution, i.e. predict 0, as in the reference)."""

    hidden: tuple[int, ...]
    out: int
    zero_out: bool = False
    dropout: float = 0.0
    deterministic: bool = True

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, width in enumerate(self.hidden):
            # Dropout only in the first layer of the Q functions (reference).
            x = NormedDense(width, self.dropout if i == 0 else 0.0, self.deterministic)(x)
        init = nn.initializers.zeros if self.zero_out else weight_init
        return nn.Dense(self.out, kernel_init=init)(x)


class QEnsemble(nn.Module):
    """`num_q` independent two-hot Q functions: (z [..., L], a [..., A]) -> logits [num_q, ..., bins]."""

    num_q: int
    hidden: tuple[int, ...]
    bins: int
    dropout: float
    deterministic: bool = True

    @nn.compact
    def __call__(self, z: jax.Array, a: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            LinearHeadMLP,
            variable_axes={"params": 0},
            split_rngs={"params": True, "dropout": True},
            in_axes=None,
            out_axes=0,
            axis_size=self.num_q,
        )
        head = ensemble(self.hidden, self.bins, True, self.dropout, self.deterministic, name="q")
        return head(jnp.concatenate([z, a], -1))


@struct.dataclass
class ModelParams:
    """What the model optimiser trains (joint consistency / reward / value loss)."""

    encoder: Any
    dynamics: Any
    reward: Any
    q: Any


@struct.dataclass
class TDMPC2Params:
    model: ModelParams
    pi: Any  # policy prior parameters


@struct.dataclass
class AgentState:
    params: TDMPC2Params
    target_q: Any  # EMA of model.q (tau = tdmpc2.tau)
    model_opt: optax.OptState
    pi_opt: optax.OptState
    q_scale: ReturnNorm  # EMA of the 5th / 95th percentile of Q, the policy loss's scale


@struct.dataclass
class PlanCarry:
    mean: jax.Array  # [n, H, A] the last plan's mean, warm start of the next plan


@struct.dataclass
class PolicyLogProbs:
    """Log-probabilities [...] of a policy sample. `squashed`: log pi(a|z) of the tanh-squashed action (the
    reference's `entropy` is minus it; a metric here). `scaled`: the action dimension times the Gaussian
    log-probability before the tanh, the policy loss's entropy term (the reference's `scaled_entropy`)."""

    squashed: jax.Array
    scaled: jax.Array


@dataclasses.dataclass(frozen=True)
class Networks:
    """The flax modules and static settings the losses and the planner read."""

    config: Config
    spec: EnvSpec
    encoder: SimNormMLP
    dynamics: SimNormMLP
    reward: LinearHeadMLP
    q: QEnsemble  # deterministic (targets, planning, policy loss)
    q_train: QEnsemble  # with dropout (value loss)
    pi: LinearHeadMLP

    @property
    def bins(self) -> jax.Array:
        t = self.config.tdmpc2
        return twohot_bins(t.num_bins, t.vmin, t.vmax)

    @property
    def discount(self) -> float:
        return tdmpc2_discount(self.config, self.spec)

    def encode(self, params, obs: dict) -> jax.Array:
        """obs {key: [..., d]} -> z [..., L] (vector keys concatenated in sorted order)."""
        x = jnp.concatenate([obs[k].astype(jnp.float32) for k in self.spec.vector_keys], -1)
        return self.encoder.apply(params, x)

    def next(self, params, z: jax.Array, a: jax.Array) -> jax.Array:
        return self.dynamics.apply(params, jnp.concatenate([z, a], -1))

    def reward_logits(self, params, z: jax.Array, a: jax.Array) -> jax.Array:
        return self.reward.apply(params, jnp.concatenate([z, a], -1))

    def q_values(self, q_params, z: jax.Array, a: jax.Array) -> jax.Array:
        """Q of every ensemble member, [num_q, ...]."""
        return twohot_mean(self.q.apply(q_params, z, a), self.bins)

    def q_pair(self, q_params, z, a, key, reduce: Callable) -> jax.Array:
        """`reduce` (min or mean) over two members drawn at random from the ensemble (TD-MPC2, sec. 3)."""
        pick = jax.random.choice(key, self.config.tdmpc2.num_q, (2,), replace=False)
        return reduce(self.q_values(q_params, z, a)[pick], axis=0)

    def policy(self, pi_params, z: jax.Array, key) -> tuple[jax.Array, PolicyLogProbs, jax.Array]:
        """Squashed Gaussian policy prior: z [..., L] -> (sample [..., A], its log-probabilities [...],
        tanh(mean) [..., A]).

        log std = min + (max - min) * (tanh(raw) + 1) / 2, as the reference bounds it."""
        t = self.config.tdmpc2
        mu, raw = jnp.split(self.pi.apply(pi_params, z), 2, -1)
        log_std = t.log_std_min + 0.5 * (t.log_std_max - t.log_std_min) * (jnp.tanh(raw) + 1.0)
        eps = jax.random.normal(key, mu.shape)
        x = mu + eps * jnp.exp(log_std)
        gaussian = jnp.sum(-0.5 * eps**2 - log_std - 0.5 * jnp.log(2 * jnp.pi), -1)
        action = jnp.tanh(x)
        squashed = gaussian - jnp.sum(jnp.log(jax.nn.relu(1.0 - action**2) + 1e-6), -1)
        # The reference's `scaled_entropy` is -squashed * (A * gaussian) / (squashed + 1e-8): up to that
        # 1e-8, minus the Gaussian log-probability before the tanh times the action dimension.
        return action, PolicyLogProbs(squashed, mu.shape[-1] * gaussian), jnp.tanh(mu)


def tdmpc2_discount(config: Config, spec: EnvSpec) -> float:
    """The reference's heuristic discount from the episode length: (L/denom - 1) / (L/denom), clipped."""
    t = config.tdmpc2
    frac = spec.max_episode_steps / t.discount_denom
    return float(min(max((frac - 1) / frac, t.discount_min), t.discount_max)) if frac > 1 else t.discount_min


def check_tdmpc2(config: Config, spec: EnvSpec) -> None:
    """Raises ConfigError for an env or replay window this agent cannot take (run in config validation)."""
    if spec.discrete:
        raise ConfigError(
            f"env.name={spec.name!r} has discrete actions ({spec.action_dim} choices); agent='tdmpc2' needs "
            "continuous actions (a box action space, e.g. Pendulum-v1); use agent=dreamer for this env"
        )
    for key, shape in spec.obs_shapes.items():
        if len(shape) != 1:
            raise ConfigError(
                f"env.name={spec.name!r} has observation {key!r} of shape {shape}; agent='tdmpc2' takes "
                "vector observations only (shape (n,))"
            )
    window = config.tdmpc2.horizon + 1
    if config.sample_length != window:
        raise ConfigError(
            f"replay.batch_length={config.replay.batch_length} with replay.context={config.replay.context} "
            f"gives windows of {config.sample_length} steps; agent='tdmpc2' trains on windows of "
            f"tdmpc2.horizon + 1 = {window} steps: set replay.batch_length={window} replay.context=false "
            "(as --preset tdmpc2 does)"
        )


def make_networks(config: Config, spec: EnvSpec) -> Networks:
    t, A = config.tdmpc2, spec.action_dim
    mlp = (t.mlp_dim, t.mlp_dim)
    q_args = dict(num_q=t.num_q, hidden=mlp, bins=t.num_bins, dropout=t.dropout)
    return Networks(
        config=config,
        spec=spec,
        # At least one hidden layer, as the reference builds it.
        encoder=SimNormMLP((t.enc_dim,) * max(t.num_enc_layers - 1, 1), t.latent_dim, t.simnorm_dim),
        dynamics=SimNormMLP(mlp, t.latent_dim, t.simnorm_dim),
        reward=LinearHeadMLP(mlp, t.num_bins, zero_out=True),
        q=QEnsemble(**q_args, deterministic=True),
        q_train=QEnsemble(**q_args, deterministic=False),
        pi=LinearHeadMLP(mlp, 2 * A),
    )


# ---- planning ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatentModel:
    """The latent model as the planner sees it; every function takes a batch [N, ...].

    next(z, a) -> z'; reward(z, a) -> [N]; value(z, a, key) -> [N] (the terminal value);
    policy(z, key) -> a [N, A] (a sample of the policy prior)."""

    next: Callable
    reward: Callable
    value: Callable
    policy: Callable


@dataclasses.dataclass(frozen=True)
class PlanSettings:
    horizon: int = 3
    iterations: int = 6
    num_samples: int = 512
    num_elites: int = 64
    num_pi_trajs: int = 24
    temperature: float = 0.5
    min_std: float = 0.05
    max_std: float = 2.0
    discount: float = 0.99


def trajectory_value(model: LatentModel, z: jax.Array, actions: jax.Array, discount: float, key) -> jax.Array:
    """Discounted predicted return of N action sequences from latents z [N, L]: sum_t gamma^t r(z_t, a_t)
    + gamma^H Q(z_H, pi(z_H)). actions [H, N, A] -> [N]."""

    def step(carry, a):
        z, ret, disc = carry
        ret = ret + disc * model.reward(z, a)
        return (model.next(z, a), ret, disc * discount), None

    n = z.shape[0]
    (z, ret, disc), _ = jax.lax.scan(step, (z, jnp.zeros(n), jnp.float32(1.0)), actions)
    k_pi, k_q = jax.random.split(key)
    return ret + disc * model.value(z, model.policy(z, k_pi), k_q)


def mppi_plan(
    model: LatentModel, s: PlanSettings, z: jax.Array, init_mean: jax.Array, key
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """MPPI in the latent space (TD-MPC2, sec. 3 "planning"; Williams et al. 2015) for one env.

    z [L]: the current latent; init_mean [H, A]: the warm start (the previous plan shifted by one step).
    `num_pi_trajs` of the `num_samples` sequences come from rolling out the policy prior; the others are
    drawn around the mean. Each iteration keeps the `num_elites` best and refits mean and std to them,
    weighted by exp(temperature * (value - max value)).
    Returns (elite action [A]: the first action of an elite drawn by its weight, std [A] of the first step,
    mean [H, A], the plan mean after the last iteration, and its first action mean[0] [A]).
    """
    H, A = init_mean.shape
    P, N = s.num_pi_trajs, s.num_samples
    k_pi, k_iter, k_pick = jax.random.split(key, 3)

    def pi_step(z, k):
        a = model.policy(z, k)
        return model.next(z, a), a

    if P > 0:
        _, pi_actions = jax.lax.scan(pi_step, jnp.broadcast_to(z, (P, *z.shape)), jax.random.split(k_pi, H))
    else:
        pi_actions = jnp.zeros((H, 0, A))
    zs = jnp.broadcast_to(z, (N, *z.shape))

    def iteration(carry, k):
        mean, std, _, _ = carry
        k_noise, k_value = jax.random.split(k)
        noise = jax.random.normal(k_noise, (H, N - P, A))
        actions = jnp.concatenate([pi_actions, jnp.clip(mean[:, None] + std[:, None] * noise, -1, 1)], 1)
        value = jnp.nan_to_num(trajectory_value(model, zs, actions, s.discount, k_value))
        elite_value, elite = jax.lax.top_k(value, s.num_elites)
        elite_actions = actions[:, elite]  # [H, K, A]
        score = jnp.exp(s.temperature * (elite_value - elite_value[0]))  # top_k sorts: [0] is the max
        score = score / score.sum()
        mean = jnp.einsum("k,hka->ha", score, elite_actions)
        var = jnp.einsum("k,hka->ha", score, (elite_actions - mean[:, None]) ** 2)
        std = jnp.clip(jnp.sqrt(var), s.min_std, s.max_std)
        return (mean, std, score, elite_actions), None

    init = (
        init_mean,
        jnp.full((H, A), s.max_std),
        jnp.zeros(s.num_elites),
        jnp.zeros((H, s.num_elites, A)),
    )
    (mean, std, score, elite_actions), _ = jax.lax.scan(
        iteration, init, jax.random.split(k_iter, s.iterations)
    )
    pick = jax.random.categorical(k_pick, jnp.log(score))
    return elite_actions[0, pick], std[0], mean, mean[0]


def shift_plan(mean: jax.Array, is_first: jax.Array) -> jax.Array:
    """Warm start: the previous plan [n, H, A] advanced by one step (last step 0); zeros at episode starts."""
    shifted = jnp.concatenate([mean[:, 1:], jnp.zeros_like(mean[:, :1])], 1)
    return jnp.where(is_first[:, None, None], 0.0, shifted)


def plan_settings(config: Config, discount: float, action_dim: int) -> PlanSettings:
    """The planner's settings from the config group `tdmpc2`; as the reference, 2 more MPPI iterations for
    action spaces of 20 dimensions or more (its "heuristic for large action spaces")."""
    t = config.tdmpc2
    return PlanSettings(
        horizon=t.horizon,
        iterations=t.iterations + (2 if action_dim >= 20 else 0),
        num_samples=t.num_samples,
        num_elites=t.num_elites,
        num_pi_trajs=t.num_pi_trajs,
        temperature=t.temperature,
        min_std=t.min_std,
        max_std=t.max_std,
        discount=discount,
    )


def latent_model(nets: Networks, state: AgentState) -> LatentModel:
    """The learned model as `LatentModel` functions (terminal value: mean of two random Q members)."""
    p = state.params.model
    return LatentModel(
        next=lambda z, a: nets.next(p.dynamics, z, a),
        reward=lambda z, a: twohot_mean(nets.reward_logits(p.reward, z, a), nets.bins),
        value=lambda z, a, k: nets.q_pair(p.q, z, a, k, jnp.mean),
        policy=lambda z, k: nets.policy(state.params.pi, z, k)[0],
    )


# ---- losses ------------------------------------------------------------------------------------------------


def window_rows(batch: dict) -> dict:
    """Replay window [B, H+1, ...] -> time-major rows: obs [H+1, B, ...] and, per transition t = 0..H-1,
    action / reward / terminal [H, B, ...] and `valid` [H, B]: 1 while no episode started inside the window
    up to obs_{t+1} (a transition across an episode start, and everything after it, is not real)."""
    tm = lambda x: jnp.swapaxes(x, 0, 1)
    fresh = batch["is_first"][:, 1:].astype(jnp.float32)
    return {
        "obs": jax.tree.map(tm, batch["obs"]),
        "action": tm(batch["action"][:, 1:]),
        "reward": tm(batch["reward"][:, 1:]),
        "terminal": tm(batch["is_terminal"][:, 1:].astype(jnp.float32)),
        "valid": tm(jnp.cumprod(1.0 - fresh, 1)),
    }


def model_loss(
    nets: Networks, model: ModelParams, pi_params, target_q, rows: dict, key
) -> tuple[jax.Array, tuple[jax.Array, dict]]:
    """TD-MPC2's joint loss (paper eq. 3): sum_t rho^t (c * ||d(z_t, a_t) - sg(h(s_{t+1}))||^2
    + r * CE(R(z_t, a_t), r_t) + v * CE(Q(z_t, a_t), TD target)), each term averaged over the horizon (and the
    Q members), transitions across an episode start weighted 0.
    TD target: r_t + gamma * (1 - terminal) * min of two random target Q members at (z_{t+1}, pi(z_{t+1})),
    z_{t+1} = h(s_{t+1}) from the online encoder without gradient.
    Returns the loss and (latents z_0..z_H of the rollout [H+1, B, L], metrics)."""
    t, bins, gamma = nets.config.tdmpc2, nets.bins, nets.discount
    H = rows["action"].shape[0]
    k_pi, k_q, k_drop = jax.random.split(key, 3)
    enc = nets.encode(model.encoder, rows["obs"])  # [H+1, B, L]
    next_z = sg(enc[1:])
    next_a, _, _ = nets.policy(pi_params, next_z, k_pi)
    target = rows["reward"] + gamma * (1.0 - rows["terminal"]) * nets.q_pair(
        target_q, next_z, next_a, k_q, jnp.min
    )
    target = sg(target)

    def roll(z, a):
        z = nets.next(model.dynamics, z, a)
        return z, z

    _, pred_z = jax.lax.scan(roll, enc[0], rows["action"])  # [H, B, L]
    zs = jnp.concatenate([enc[:1], pred_z], 0)
    weight = rows["valid"] * (t.rho ** jnp.arange(H))[:, None]  # [H, B]
    consistency = jnp.mean((pred_z - next_z) ** 2, -1)
    reward_ce = -twohot_log_prob(
        nets.reward_logits(model.reward, zs[:-1], rows["action"]), bins, rows["reward"]
    )
    q_logits = nets.q_train.apply(model.q, zs[:-1], rows["action"], rngs={"dropout": k_drop})
    value_ce = -twohot_log_prob(q_logits, bins, target[None]).mean(0)  # mean over members
    per_step = lambda x: jnp.sum(jnp.mean(weight * x, 1)) / H
    losses = {
        "loss_consistency": per_step(consistency),
        "loss_reward": per_step(reward_ce),
        "loss_value": per_step(value_ce),
    }
    loss = (
        t.consistency_coef * losses["loss_consistency"]
        + t.reward_coef * losses["loss_reward"]
        + t.value_coef * losses["loss_value"]
    )
    metrics = {**losses, "td_target": target.mean(), "valid_fraction": rows["valid"].mean()}
    return loss, (sg(zs), metrics)


def policy_loss(
    nets: Networks, pi_params, q_params, zs: jax.Array, valid: jax.Array, q_scale: ReturnNorm, key
) -> tuple[jax.Array, tuple[ReturnNorm, dict]]:
    """TD-MPC2's policy prior objective (paper eq. 4): sum_t rho^t (beta * A * log N(u_t) - Q(z_t, a_t) / S)
    on the latent rollout zs [H+1, B, L] (no gradient into the model), a_t = tanh(u_t) ~ pi, Q the mean of
    two random members, S = max(1, EMA of the 5-95 percentile range of Q at z_0). The entropy term is the
    reference's: the Gaussian log-probability of u_t before the tanh, times the action dimension A.
    valid [H+1, B] weights the steps."""
    t = nets.config.tdmpc2
    k_pi, k_q = jax.random.split(key)
    action, log_prob, _ = nets.policy(pi_params, zs, k_pi)
    q = nets.q_pair(sg(q_params), zs, action, k_q, jnp.mean)
    q_scale = update_return_norm(q_scale, sg(q[0]), t.tau)
    scale = return_scale(q_scale)
    weight = valid * (t.rho ** jnp.arange(zs.shape[0]))[:, None]
    loss = jnp.mean(jnp.mean(weight * (t.entropy_coef * log_prob.scaled - q / scale), 1))
    metrics = {
        "loss_pi": loss,
        "pi_log_prob": log_prob.squashed.mean(),
        "pi_scaled_log_prob": log_prob.scaled.mean(),
        "q_scale": scale,
        "q_value": q.mean(),
    }
    return loss, (q_scale, metrics)


# ---- the agent ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TDMPC2(Agent):
    networks: Networks
    settings: PlanSettings


def make_tdmpc2(config: Config, spec: EnvSpec) -> TDMPC2:
    check_tdmpc2(config, spec)
    t, A = config.tdmpc2, spec.action_dim
    nets = make_networks(config, spec)
    settings = plan_settings(config, nets.discount, A)
    model_optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), optax.adam(t.lr))
    pi_optimizer = optax.chain(optax.clip_by_global_norm(t.grad_clip_norm), optax.adam(t.lr, eps=1e-5))
    obs_dim = sum(spec.obs_shapes[k][0] for k in spec.vector_keys)

    def init(key) -> AgentState:
        k_enc, k_dyn, k_rew, k_q, k_pi = jax.random.split(key, 5)
        z, a = jnp.zeros((1, t.latent_dim)), jnp.zeros((1, A))
        model = ModelParams(
            encoder=nets.encoder.init(k_enc, jnp.zeros((1, obs_dim))),
            dynamics=nets.dynamics.init(k_dyn, jnp.zeros((1, t.latent_dim + A))),
            reward=nets.reward.init(k_rew, jnp.zeros((1, t.latent_dim + A))),
            q=nets.q.init(k_q, z, a),
        )
        pi = nets.pi.init(k_pi, z)
        return AgentState(
            params=TDMPC2Params(model, pi),
            target_q=model.q,
            model_opt=model_optimizer.init(model),
            pi_opt=pi_optimizer.init(pi),
            q_scale=return_norm_init(),
        )

    def initial_carry(n: int) -> PlanCarry:
        return PlanCarry(jnp.zeros((n, t.horizon, A)))

    def replay_context(carry: PlanCarry) -> dict:
        return {}

    def act(state: AgentState, carry: PlanCarry, obs, prev_action, is_first, key, mode: bool = False):
        """obs {key: [n, d]}, is_first [n] -> action [n, A] in [-1, 1] and the new plan carry.
        Training (mode=False): an elite's first action plus Gaussian noise of the plan's first-step std
        (the paper's exploration). mode=True: the plan mean's first action, no noise."""
        n = is_first.shape[0]
        z = nets.encode(state.params.model.encoder, obs)
        warm = shift_plan(carry.mean, is_first)
        model = latent_model(nets, state)
        k_plan, k_noise = jax.random.split(key)
        plan = jax.vmap(lambda z_, m_, k_: mppi_plan(model, settings, z_, m_, k_))
        elite_action, std, mean, mean_action = plan(z, warm, jax.random.split(k_plan, n))
        if mode:
            action = mean_action
        else:
            action = jnp.clip(elite_action + std * jax.random.normal(k_noise, elite_action.shape), -1, 1)
        return action, PlanCarry(mean)

    def learn(state: AgentState, batch: dict, key) -> tuple[AgentState, dict, dict]:
        """One TD-MPC2 update on windows [B, H+1, ...]: model and Q by the joint loss, then the policy prior
        on the (detached) latent rollout, then the EMA of the target Q."""
        k_model, k_pi = jax.random.split(key)
        rows = window_rows(batch)
        params = state.params
        (loss, (zs, metrics)), grads = jax.value_and_grad(model_loss, argnums=1, has_aux=True)(
            nets, params.model, params.pi, state.target_q, rows, k_model
        )
        updates, model_opt = model_optimizer.update(grads, state.model_opt, params.model)
        # The encoder learns at enc_lr_scale x lr: with Adam, scaling its updates is the same thing.
        updates = updates.replace(encoder=jax.tree.map(lambda u: u * t.enc_lr_scale, updates.encoder))
        model = optax.apply_updates(params.model, updates)
        valid = jnp.concatenate([jnp.ones_like(rows["valid"][:1]), rows["valid"]], 0)
        (_, (q_scale, pi_metrics)), pi_grads = jax.value_and_grad(policy_loss, argnums=1, has_aux=True)(
            nets, params.pi, model.q, zs, valid, state.q_scale, k_pi
        )
        pi_updates, pi_opt = pi_optimizer.update(pi_grads, state.pi_opt, params.pi)
        pi = optax.apply_updates(params.pi, pi_updates)
        target_q = optax.incremental_update(model.q, state.target_q, t.tau)
        metrics = {
            "loss_model": loss,
            **metrics,
            **pi_metrics,
            "grad_norm": optax.tree.norm(grads),
            "pi_grad_norm": optax.tree.norm(pi_grads),
        }
        new = AgentState(TDMPC2Params(model, pi), target_q, model_opt, pi_opt, q_scale)
        return new, metrics, {}

    return TDMPC2(
        init=init,
        initial_carry=initial_carry,
        act=act,
        learn=learn,
        replay_context=replay_context,
        networks=nets,
        settings=settings,
    )


__all__ = [
    "AgentState",
    "LatentModel",
    "ModelParams",
    "Networks",
    "PlanCarry",
    "PlanSettings",
    "PolicyLogProbs",
    "TDMPC2",
    "TDMPC2Params",
    "check_tdmpc2",
    "make_networks",
    "make_tdmpc2",
    "model_loss",
    "mppi_plan",
    "plan_settings",
    "policy_loss",
    "shift_plan",
    "simnorm",
    "tdmpc2_discount",
    "trajectory_value",
    "window_rows",
]
