"""DreamerV3 (Hafner et al., 2023/2025): world-model learning and actor-critic learning in imagination.

`make_dreamer(config, spec)` builds the networks and optimiser and returns a `Dreamer`, the pure functions
of the `Agent` interface (mbrl_jax/agents/base.py):
  init(key)                                                -> AgentState
  initial_carry(n)                                         -> posterior Latent for n envs
  act(state, carry, obs, prev_action, is_first, key, mode) -> (action [n, A], carry)  one env step
  learn(state, batch, key)                                 -> (state, metrics, writes) one gradient update
  replay_context(carry)                                    -> what the replay stores per step for the context
It reads the config groups `wm`, `dreamer`, `optim` and `replay.context`. Its own settings
(`DreamerConfig`, the group `dreamer`), checks, memory estimate and presets (`classic` and the task presets
on it, `rgb64`, `atari100k`, `debug`) live here; `mbrl_jax/agents/__init__.py` registers them.

The losses are module functions of a `Networks` record and parameters, so each can be called on its own:
`world_model_loss`, `imagine_trajectory`, `actor_critic_loss`, `replay_value_loss`.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrl_jax.agents.base import Agent
from mbrl_jax.envs.base import EnvSpec, obs_dtype
from mbrl_jax.errors import ConfigError
from mbrl_jax.nets.distributions import (
    bernoulli_log_prob,
    bounded_normal,
    categorical_kl,
    kl_loss_free_nats,
    onehot_categorical,
    twohot_bins,
    twohot_log_prob,
    twohot_mean,
    unimix_logits,
)
from mbrl_jax.nets.image import MIN_RES, conv_form, image_activation_floats, image_stages
from mbrl_jax.nets.layers import Head
from mbrl_jax.optim import make_optimizer
from mbrl_jax.returns import ReturnNorm, lambda_returns, return_norm_init, return_scale, update_return_norm
from mbrl_jax.settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, setting
from mbrl_jax.world_models.backbone import make_backbone
from mbrl_jax.world_models.rssm import (
    Latent,
    WorldModel,
    check_replay_context,
    imagine,
    mask_latent,
    observe,
    reconstruction_loss,
)

if TYPE_CHECKING:
    from mbrl_jax.config import Config

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class DreamerConfig:
    imag_horizon: int = setting(15, "imagined steps per rollout", POSITIVE)
    horizon: float = setting(333.0, "discount = 1 - 1 / horizon", AT_LEAST_ONE)
    return_lambda: float = setting(0.95, "lambda of the lambda returns", UNIT_INTERVAL)
    actor_entropy: float = setting(3e-4, "entropy bonus of the actor", NON_NEGATIVE)
    retnorm_rate: float = setting(0.01, "EMA rate of the return percentiles", UNIT_INTERVAL)
    slow_critic_rate: float = setting(0.02, "EMA rate of the slow critic", UNIT_INTERVAL)
    slow_critic_reg: float = setting(
        1.0, "weight of the critic's regression to the slow critic", NON_NEGATIVE
    )
    unimix: float = setting(0.01, "uniform mixture in the discrete policy", UNIT_INTERVAL)
    action_minstd: float = setting(0.1, "smallest std of continuous actions", POSITIVE)
    action_maxstd: float = setting(1.0, "largest std of continuous actions", POSITIVE)
    ac_layers: int = setting(3, "actor and critic MLP layers", POSITIVE)
    loss_actor: float = setting(1.0, "scale of the actor loss", NON_NEGATIVE)
    loss_critic: float = setting(1.0, "scale of the critic loss", NON_NEGATIVE)
    loss_repval: float = setting(
        0.3, "critic loss on lambda returns along replayed windows (reference); 0 turns it off", NON_NEGATIVE
    )

    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.horizon

    def check(self, path: str) -> None:
        if self.action_minstd > self.action_maxstd:
            raise ConfigError(
                f"{path}.action_minstd={self.action_minstd} must be <= "
                f"{path}.action_maxstd={self.action_maxstd}"
            )


# One set of settings for every classic-control task on a 2-core CPU: a model between the 1M and 12M rows
# (deter 256), shorter and fewer replayed windows per update (8 x 32) so the same compute buys 4x more
# updates, train ratio 128 and a higher learning rate with a short warm-up. The reference settings
# (B 16 x T 64, ratio 512, lr 4e-5) need hours here for the same env steps. The task presets below only pick
# the env: their hyperparameters are `classic`'s, never tuned per task.
CLASSIC: dict[str, Any] = {
    "run.steps": 30_000,
    "wm.deter": 256,
    "replay.batch_size": 8,
    "replay.batch_length": 32,
    "replay.train_ratio": 128.0,
    "optim.lr": 3e-4,
    "optim.warmup": 100,
}

CRAFTAX: dict[str, Any] = {
    "env.name": "craftax:Craftax-Classic-Symbolic-v1",
    "env.num_envs": 1,
    "run.steps": 1_000_000,
    "run.eval_every": 50_000,
    "replay.train_ratio": 512.0,
}

DREAMER_PRESETS: dict[str, dict[str, Any]] = {
    "classic": CLASSIC,
    "cartpole": {**CLASSIC, "env.name": "CartPole-v1"},
    "acrobot": {**CLASSIC, "env.name": "Acrobot-v1"},
    "pendulum": {**CLASSIC, "env.name": "Pendulum-v1"},
    "mountaincar": {**CLASSIC, "env.name": "MountainCarContinuous-v0"},
    # MinAtar (10 x 10 grids of object channels, gymnax): `classic`'s settings with the image encoder and
    # decoder at the 12M preset's depth (16: 32 channels, the width MinAtar's own baselines use; the 1M
    # depth of 4 gives 8). Breakout by default; the other games with --env.
    "minatar": {
        **CLASSIC,
        "env.name": "Breakout-MinAtar",
        "run.steps": 100_000,
        "run.eval_every": 5_000,
        "wm.depth": 16,
    },
    # Proprioceptive MuJoCo on envpool (its Gymnasium v4 tasks; their float64 arrays take the host loop):
    # `classic`'s settings, a 50k env-step budget. HalfCheetah by default; the others with --env
    # envpool:<Task>-v4 (Hopper, Walker2d, Ant, ...).
    "mujoco": {**CLASSIC, "env.name": "envpool:HalfCheetah-v4", "run.steps": 50_000, "run.eval_every": 5_000},
    # Proprioceptive DMC on envpool (Dict observations, host loop): `classic`'s settings with DreamerV3's
    # DMC action repeat of 2; 50k agent steps = 100k env steps (100 episodes of 1,000). Walker Walk by
    # default; the others with --env envpool:<Domain><Task>-v1 (CheetahRun, CartpoleSwingup, ...).
    "dmc": {
        **CLASSIC,
        "env.name": "envpool:WalkerWalk-v1",
        "env.action_repeat": 2,
        "run.steps": 50_000,
        "run.eval_every": 5_000,
    },
    # DreamerV3's image workload for benchmarks: 64 x 64 x 3 frames (Breakout-MinAtar rendered in colour)
    # with the reference's batch (16 x 64) and train ratio; combine with a size preset.
    "rgb64": {"env.name": "Breakout-MinAtar-rgb64"},
    # The reference's own hyperparameters (this config's defaults: lr 4e-5, B 16 x T 64, ratio 512) on
    # CartPole, for comparison with `cartpole`'s classic settings at the same env steps.
    "cartpole-reference": {"run.steps": 30_000, "env.name": "CartPole-v1"},
    # Atari 100k (DreamerV3's atari100k settings and the standard protocol; README "Atari 100k"): 100k agent
    # steps = 400k frames at action repeat 4, one env, train ratio 256, 64 x 64 RGB, no sticky actions,
    # minimal action set, 30 no-op starts, no life-loss episodes, 27,000-step episode limit; evaluated once at
    # the end on 100 episodes. Pong by default; the other games with --env envpool:<Game>-v5.
    "atari100k": {
        "env.name": "envpool:Pong-v5",
        "env.num_envs": 1,
        "env.sticky_actions": 0.0,
        "run.steps": 100_000,
        "run.eval_every": 100_000,
        "run.eval_episodes": 100,
        "replay.train_ratio": 256.0,
    },
    # Craftax-Classic (Crafter in JAX, on device; README "Craftax"): DreamerV3's `crafter` settings (its
    # configs.yaml: one env, train ratio 512; it sets no model size, so the default model here too) and
    # Crafter's budget of 1M env steps (the official config runs 1.1M). Symbolic observations (a 1,345-float
    # vector); `craftax-pixels` takes the 64 x 64 RGB frames that DreamerV3 trains Crafter on. Evaluations
    # run whole episodes (up to 10,000 steps), so every 50k steps; they report Crafter's achievements.
    "craftax": CRAFTAX,
    "craftax-pixels": {**CRAFTAX, "env.name": "craftax:Craftax-Classic-Pixels-v1"},
    # Tiny settings for tests and smoke runs: compiles fast, learns nothing in particular. One update every
    # 4 env steps (train ratio 16 of a 4 x 16 batch): a run of the debug preset checks plumbing, and updates
    # are most of its running time (1,000 env steps ran in 2.2 s instead of 7.8 s at ratio 64, 2026-12-07).
    "debug": {
        "run.steps": 2_000,
        "run.chunk_steps": 200,
        "run.eval_episodes": 2,
        "env.num_envs": 2,
        "replay.prefill": 256,
        "replay.batch_size": 4,
        "replay.batch_length": 16,
        "replay.train_ratio": 16.0,
        "replay.capacity": 4_000,
        "wm.deter": 64,
        "wm.hidden": 32,
        "wm.stoch": 4,
        "wm.classes": 4,
        "wm.units": 32,
        "wm.enc_layers": 1,
        "wm.dec_layers": 1,
        "dreamer.ac_layers": 1,
        "dreamer.imag_horizon": 5,
    },
}


@struct.dataclass
class DreamerParams:
    """The three trained parameter trees; one optimiser state covers all three."""

    wm: Any  # WorldModel variables
    actor: Any  # actor Head variables
    critic: Any  # critic Head variables


@struct.dataclass
class AgentState:
    params: DreamerParams
    opt_state: optax.OptState
    slow_critic: Any  # EMA of the critic parameters (regulariser target)
    return_norm: ReturnNorm


@dataclasses.dataclass(frozen=True)
class Networks:
    """The flax modules and static settings that the loss functions read (Brax-style network record)."""

    config: Config
    spec: EnvSpec
    world_model: WorldModel
    actor: Head
    critic: Head

    @property
    def bins(self) -> jax.Array:
        return twohot_bins(self.config.wm.num_bins)

    def policy(self, actor_params, feat: jax.Array):
        """feat [..., F] -> distribution over actions [..., A] (unimix categorical or bounded normal)."""
        c, out = self.config, self.actor.apply(actor_params, feat)
        if self.spec.discrete:
            return onehot_categorical(unimix_logits(out, c.dreamer.unimix))
        mean, std = jnp.split(out, 2, -1)
        return bounded_normal(mean, std, c.dreamer.action_minstd, c.dreamer.action_maxstd)

    def value(self, critic_params, feat: jax.Array) -> jax.Array:
        """Critic logits [..., bins]."""
        return self.critic.apply(critic_params, feat)


def check_dreamer(config: Config, spec: EnvSpec) -> None:
    """Raises ConfigError for settings or an env this agent cannot take (run in config validation)."""
    if config.replay.sampler == "frequency" and config.dreamer.loss_repval > 0:
        raise ConfigError(
            f"replay.sampler='frequency' imagines from separately sampled starts, but "
            f"dreamer.loss_repval={config.dreamer.loss_repval} bootstraps from imagination started at "
            "every replayed step; set dreamer.loss_repval=0 (Drama has no replay value loss) or "
            "replay.sampler='uniform'"
        )
    check_replay_context(config)
    for key, shape in spec.obs_shapes.items():
        if len(shape) not in (1, 3):
            raise ConfigError(
                f"env.name={spec.name!r} has observation {key!r} of shape {shape}; the dreamer agent takes "
                "vectors (shape (n,)) and images (shape (H, W, C))"
            )
    sides = {shape[:2] for shape in spec.obs_shapes.values() if len(shape) == 3}
    if len(sides) > 1:
        raise ConfigError(
            f"env.name={spec.name!r} has images of sizes {sorted(sides)}; the image encoder takes one size"
        )
    for height, width in sides:
        if not image_stages(height, width):
            raise ConfigError(
                f"env.name={spec.name!r} has {height} x {width} images; the image encoder needs sides that "
                f"are even and larger than {MIN_RES} (it halves them at least once)"
            )


def activation_floats(config: Config, obs_shapes: dict[str, tuple[int, ...]]) -> int:
    """float32 values kept per replayed start for the backward pass of one update (mbrl_jax/memory.py): one
    world-model step and `imag_horizon + 1` imagined steps (actor, critic, slow critic, reward and continue
    heads), and the image encoder's and decoder's feature maps."""
    w, d = config.wm, config.dreamer
    # latent state, prior/posterior layers and logits, two-hot distributions over num_bins
    step = 6 * w.deter + 3 * w.hidden + 4 * w.stoch * w.classes + 6 * w.num_bins
    wm_layers = w.enc_layers + w.dec_layers + 2 * w.head_layers
    imag_layers = 3 * d.ac_layers + 2 * w.head_layers
    per_start = step + 3 * w.units * wm_layers + (d.imag_horizon + 1) * (step + 3 * w.units * imag_layers)
    images = config.replay.batch_size * config.sample_length  # frames in one update
    return per_start + image_activation_floats(obs_shapes, w.depth, w.conv, images)


def make_networks(config: Config, spec: EnvSpec) -> Networks:
    check_dreamer(config, spec)
    c = config
    world_model = WorldModel(
        core=make_backbone(c.wm),
        obs_shapes=tuple(sorted(spec.obs_shapes.items())),
        depth=c.wm.depth,
        conv=conv_form(c.wm.conv),  # 'auto' resolved here, for the backend the networks are built on
        deter=c.wm.deter,
        hidden=c.wm.hidden,
        stoch=c.wm.stoch,
        classes=c.wm.classes,
        units=c.wm.units,
        enc_layers=c.wm.enc_layers,
        dec_layers=c.wm.dec_layers,
        head_layers=c.wm.head_layers,
        num_bins=c.wm.num_bins,
        unimix=c.wm.unimix,
    )
    A = spec.action_dim
    # Reference output scales: 0.01 for the policy (a near-uniform first policy), 0 for the critic.
    actor = Head(A if spec.discrete else 2 * A, c.wm.units, c.dreamer.ac_layers, out_scale=0.01)
    critic = Head(c.wm.num_bins, c.wm.units, c.dreamer.ac_layers, out_scale=0.0)
    return Networks(config=c, spec=spec, world_model=world_model, actor=actor, critic=critic)


# ---- losses ------------------------------------------------------------------------------------------------


def world_model_loss(
    nets: Networks, wm_params, batch: dict, keys: jax.Array, start: Latent | None = None
) -> tuple[jax.Array, tuple[Latent, dict]]:
    """DreamerV3's world-model loss on replayed windows (paper eq. 5, with free nats).

    batch leaves [B, T, ...]: obs (a dict), action (the one that led to obs_t), reward, is_first, is_terminal.
    keys: [T] per-step keys; start: latent before the first step (replay context) or None for zeros.
    The continue target is (1 - terminal) * discount, as in the reference ("contdisc"): the head then predicts
    the discount itself and imagination needs no separate discount factor.
    Returns the mean loss and (posteriors [B, T], metrics).
    """
    c, wm, bins = nets.config, nets.world_model, nets.bins
    posts, prior_logits = observe(
        wm, wm_params, batch["obs"], batch["action"], batch["is_first"], keys, start
    )
    obs_pred, reward_logits, cont_logit = wm.apply(wm_params, posts.feat, method=WorldModel.heads)
    rec_by_key = reconstruction_loss(wm, obs_pred, batch["obs"])
    rec = sum(rec_by_key.values())
    rew = -twohot_log_prob(reward_logits, bins, batch["reward"])
    cont_target = (1.0 - batch["is_terminal"].astype(jnp.float32)) * c.dreamer.discount
    con = -bernoulli_log_prob(cont_logit, cont_target)
    # KL(sg(post) || prior) trains the prior only; KL(post || sg(prior)) the posterior only.
    dyn = kl_loss_free_nats(categorical_kl(sg(posts.logits), prior_logits), c.wm.free_nats)
    rep = kl_loss_free_nats(categorical_kl(posts.logits, sg(prior_logits)), c.wm.free_nats)
    loss = (
        c.wm.loss_rec * rec
        + c.wm.loss_rew * rew
        + c.wm.loss_con * con
        + c.wm.loss_dyn * dyn
        + c.wm.loss_rep * rep
    ).mean()
    metrics = {
        "loss_rec": rec.mean(),
        "loss_rew": rew.mean(),
        "loss_con": con.mean(),
        "loss_dyn": dyn.mean(),
        "loss_rep": rep.mean(),
        "kl": categorical_kl(posts.logits, prior_logits).mean(),
    }
    if len(rec_by_key) > 1:
        metrics.update({f"loss_rec_{key}": value.mean() for key, value in rec_by_key.items()})
    return loss, (posts, metrics)


def imagine_trajectory(nets: Networks, params: DreamerParams, start: Latent, key: jax.Array) -> dict:
    """Imagined rollouts of the policy from `start` (leaves [N, ...]) for `imag_horizon` steps.

    Returns, time-major and without gradient (nothing of the world model is trained through imagination):
      feat [H+1, N, F], action [H, N, A], reward [H, N] (predicted on arriving at s_1..s_H),
      cont [H+1, N]: the continue head's probability at every state, the start included (reference: soft
      continue flags that already hold the discount).
    """
    wm = nets.world_model
    policy = lambda feat, k: nets.policy(params.actor, feat).sample(seed=k)
    states, actions = imagine(wm, params.wm, policy, sg(start), nets.config.dreamer.imag_horizon, key)
    reward_logits, cont_logit = wm.apply(params.wm, states.feat, method=WorldModel.reward_cont)
    traj = {
        "feat": states.feat,
        "action": actions,
        "reward": twohot_mean(reward_logits[1:], nets.bins),
        "cont": jax.nn.sigmoid(cont_logit),
    }
    return jax.tree.map(sg, traj)


def imagination_weights(cont: jax.Array) -> jax.Array:
    """[H+1, N] continue probabilities -> [H, N] weights of s_0..s_{H-1}: the probability that the episode
    is still running there, the cumulative product of continue probabilities from the start state on."""
    return jnp.cumprod(cont, 0)[:-1]


def actor_critic_loss(
    nets: Networks, actor_params, critic_params, traj: dict, slow_critic, return_norm: ReturnNorm
) -> tuple[jax.Array, tuple[ReturnNorm, jax.Array, dict]]:
    """DreamerV3's actor and critic losses on an imagined trajectory (paper eqs. 7-11).

    Lambda returns bootstrap from the critic with the continue probabilities
    as discounts; advantages (R - v) are divided by the return scale max(1, P95 - P5) (EMA); the critic
    regresses the returns and its slow EMA copy's prediction, each step weighted by `imagination_weights`.
    Returns the loss and (updated return norm, lambda returns [H, N], metrics).
    """
    c, bins = nets.config, nets.bins
    feat, actions, cont = traj["feat"], traj["action"], traj["cont"]
    critic_logits = nets.value(critic_params, feat)  # [H+1, N, bins]
    values = twohot_mean(critic_logits, bins)
    returns = lambda_returns(traj["reward"], sg(values), cont[1:], c.dreamer.return_lambda)  # [H, N]
    weight = sg(imagination_weights(cont))
    new_norm = update_return_norm(return_norm, returns, c.dreamer.retnorm_rate)
    scale = return_scale(new_norm)
    advantage = sg((returns - values[:-1]) / scale)
    dist = nets.policy(actor_params, feat[:-1])
    log_prob = dist.log_prob(sg(actions))
    entropy = dist.entropy()
    actor_loss = -(weight * (log_prob * advantage + c.dreamer.actor_entropy * entropy)).mean()
    slow_mean = twohot_mean(nets.value(slow_critic, feat[:-1]), bins)
    critic_nll = -twohot_log_prob(critic_logits[:-1], bins, sg(returns))
    critic_reg = -twohot_log_prob(critic_logits[:-1], bins, sg(slow_mean))
    critic_loss = (weight * (critic_nll + c.dreamer.slow_critic_reg * critic_reg)).mean()
    loss = c.dreamer.loss_actor * actor_loss + c.dreamer.loss_critic * critic_loss
    metrics = {
        "loss_actor": actor_loss,
        "loss_critic": critic_nll.mean(),
        "actor_entropy": entropy.mean(),
        "imag_return": returns.mean(),
        "imag_cont": cont.mean(),
        "return_scale": scale,
        "value": values.mean(),
    }
    return loss, (new_norm, returns, metrics)


def replay_value_loss(
    nets: Networks, critic_params, slow_critic, feat: jax.Array, batch: dict, boot: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The reference's replay value loss ("repval"): the critic also regresses lambda returns computed along
    the replayed windows, bootstrapped at every step from the imagined lambda return that starts there.

    feat [B, T, F] (posterior features, no gradient), batch leaves [B, T] (reward, is_last, is_terminal),
    boot [B, T]. Returns the mean loss (steps at an episode's last step weigh 0) and the returns [B, T-1].
    """
    c, bins = nets.config, nets.bins
    tm = lambda x: jnp.swapaxes(x, 0, 1)  # lambda_returns is time-major
    returns = tm(
        lambda_returns(
            tm(batch["reward"][:, 1:]),
            tm(boot),
            c.dreamer.discount * (1.0 - tm(batch["is_terminal"][:, 1:]).astype(jnp.float32)),
            c.dreamer.return_lambda,
            truncated=tm(batch["is_last"][:, 1:]),
        )
    )
    logits = nets.value(critic_params, sg(feat[:, :-1]))
    slow_mean = twohot_mean(nets.value(slow_critic, sg(feat[:, :-1])), bins)
    nll = -twohot_log_prob(logits, bins, sg(returns)) - c.dreamer.slow_critic_reg * twohot_log_prob(
        logits, bins, sg(slow_mean)
    )
    weight = 1.0 - batch["is_last"][:, :-1].astype(jnp.float32)
    return (weight * nll).mean(), returns


# ---- the agent ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Dreamer(Agent):
    """The `Agent` functions (the policy carry is the posterior `Latent` at the last observation; the replay
    context is its {"deter", "stoch"}), plus the networks they use."""

    networks: Networks

    @property
    def world_model(self) -> WorldModel:
        return self.networks.world_model

    def policy(self, actor_params, feat):
        return self.networks.policy(actor_params, feat)


def make_dreamer(config: Config, spec: EnvSpec) -> Dreamer:
    c = config
    nets = make_networks(config, spec)
    wm = nets.world_model
    A = spec.action_dim
    example_obs = {k: jnp.zeros((1, *shape), obs_dtype(shape)) for k, shape in spec.obs_shapes.items()}
    o = c.optim
    optimizer = make_optimizer(
        o.lr, agc=o.agc, eps=o.eps, beta1=o.beta1, beta2=o.beta2, warmup_steps=o.warmup
    )
    feat_dim = c.wm.deter + c.wm.stoch * c.wm.classes

    def init(key) -> AgentState:
        k_wm, k_actor, k_critic, k_sample = jax.random.split(key, 4)
        params = DreamerParams(
            wm=wm.init(k_wm, example_obs, jnp.zeros((1, A)), k_sample, method=WorldModel.init_all),
            actor=nets.actor.init(k_actor, jnp.zeros((1, feat_dim))),
            critic=nets.critic.init(k_critic, jnp.zeros((1, feat_dim))),
        )
        return AgentState(params, optimizer.init(params), params.critic, return_norm_init())

    def initial_carry(n: int) -> Latent:
        return wm.zeros((n,))

    def replay_context(carry: Latent) -> dict:
        if not c.replay.context:
            return {}
        return {"deter": carry.deter, "stoch": carry.stoch}

    def act(state: AgentState, carry: Latent, obs, prev_action, is_first, key, mode: bool = False):
        """obs: {key: [n, *shape]}, prev_action: [n, A] (led to obs), is_first: [n] -> action [n, A] and
        the new carry."""
        k_post, k_act = jax.random.split(key)
        keep = 1.0 - is_first.astype(jnp.float32)
        latent = mask_latent(carry, keep)
        embed = wm.apply(state.params.wm, obs, method=WorldModel.encode)
        post, _ = wm.apply(
            state.params.wm, latent, prev_action * keep[:, None], embed, k_post, method=WorldModel.obs_step
        )
        dist = nets.policy(state.params.actor, post.feat)
        action = dist.mode() if mode else dist.sample(seed=k_act)
        return action, post

    def behaviour_loss(actor_params, critic_params, traj, slow_critic, return_norm, feat, rows):
        loss, (norm, returns, metrics) = actor_critic_loss(
            nets, actor_params, critic_params, traj, slow_critic, return_norm
        )
        if c.dreamer.loss_repval > 0:
            B, T = rows["reward"].shape
            boot = returns[0].reshape(B, T)
            repval, _ = replay_value_loss(nets, critic_params, slow_critic, feat, rows, boot)
            loss = loss + c.dreamer.loss_repval * repval
            metrics = {**metrics, "loss_repval": repval}
        return loss, (norm, metrics)

    def split_context(windows: dict) -> tuple[Latent | None, dict]:
        """Sampled windows -> (latent before the first trained step, the trained steps): with the replay
        context the first step only carries the stored latent."""
        if not c.replay.context:
            return None, windows
        first = Latent(windows["deter"][:, 0], windows["stoch"][:, 0], jnp.zeros_like(windows["stoch"][:, 0]))
        return first, jax.tree.map(lambda x: x[:, 1:], windows)

    def learn(state: AgentState, batch: dict, key) -> tuple[AgentState, dict, dict]:
        """One update of world model, actor and critic on batch leaves [B, L, ...] (L = batch_length, plus
        one leading context step with the replay context). Returns the new state, metrics, and the fields
        to write back to the replay for the last batch_length steps (fresh posteriors; {} without context)."""
        k_wm, k_imag = jax.random.split(key)
        params = state.params
        batch = dict(batch)
        imag_windows = batch.pop("imag", None)
        start, rows = split_context(batch)
        keys = jax.random.split(k_wm, rows["is_first"].shape[1])
        (wm_loss, (posts, wm_metrics)), wm_grads = jax.value_and_grad(
            world_model_loss, argnums=1, has_aux=True
        )(nets, params.wm, rows, keys, start)
        if imag_windows is None:
            # Imagine from every posterior state of the batch (B*T starts); nothing here is differentiated.
            starts = jax.tree.map(lambda x: sg(x.reshape(-1, *x.shape[2:])), posts)
        else:
            # Drama: imagination starts at the last step of windows sampled for it (replay.sampler=frequency),
            # after the world model (parameters before this update) observes the context before it.
            ctx_start, ctx = split_context(imag_windows)
            ctx_keys = jax.random.split(jax.random.fold_in(k_imag, 1), ctx["is_first"].shape[1])
            ctx_posts, _ = observe(
                wm, params.wm, ctx["obs"], ctx["action"], ctx["is_first"], ctx_keys, ctx_start
            )
            starts = jax.tree.map(lambda x: sg(x[:, -1]), ctx_posts)
        traj = imagine_trajectory(nets, params, starts, k_imag)
        (_, (return_norm, ac_metrics)), (actor_grads, critic_grads) = jax.value_and_grad(
            behaviour_loss, argnums=(0, 1), has_aux=True
        )(params.actor, params.critic, traj, state.slow_critic, state.return_norm, sg(posts.feat), rows)
        grads = DreamerParams(wm=wm_grads, actor=actor_grads, critic=critic_grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        slow = optax.incremental_update(params.critic, state.slow_critic, c.dreamer.slow_critic_rate)
        metrics = {"loss_model": wm_loss, **wm_metrics, **ac_metrics, "grad_norm": optax.tree.norm(grads)}
        writes = replay_context(sg(posts))  # {} without the replay context
        return AgentState(params, opt_state, slow, return_norm), metrics, writes

    return Dreamer(
        init=init,
        initial_carry=initial_carry,
        act=act,
        learn=learn,
        replay_context=replay_context,
        networks=nets,
    )


__all__ = [
    "AgentState",
    "DreamerParams",
    "Networks",
    "Dreamer",
    "make_networks",
    "make_dreamer",
    "world_model_loss",
    "imagine_trajectory",
    "imagination_weights",
    "actor_critic_loss",
    "replay_value_loss",
    "check_dreamer",
]
