"""DreamerV3 (Hafner et al., 2023/2025): world-model learning and actor-critic learning in imagination.

`make_dreamer(config, spec)` builds the networks and optimiser and returns a `Dreamer` of pure functions:
  init(key)                                   -> AgentState
  initial_carry(n)                            -> PolicyCarry for n envs
  act(state, carry, obs, is_first, key, mode) -> (action [n, A], carry)   one env step of the policy
  learn(state, batch, key)                    -> (state, metrics)         one gradient update
Actions are vectors: one-hot for discrete envs, values in [-1, 1] for continuous ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrl_jax.config import Config
from mbrl_jax.envs import EnvSpec
from mbrl_jax.nets.distributions import (
    bernoulli_log_prob,
    bounded_normal,
    categorical_kl,
    kl_loss_free_nats,
    onehot_categorical,
    symlog,
    twohot_bins,
    twohot_log_prob,
    twohot_mean,
    unimix_logits,
)
from mbrl_jax.nets.layers import Head
from mbrl_jax.optim import make_optimizer
from mbrl_jax.returns import ReturnNorm, lambda_returns, return_norm_init, return_scale, update_return_norm
from mbrl_jax.world_models.rssm import Latent, WorldModel, imagine, mask_latent, observe, zeros_latent

sg = jax.lax.stop_gradient


@struct.dataclass
class AgentState:
    params: dict  # {"wm", "actor", "critic"}
    opt_state: optax.OptState
    slow_critic: dict  # EMA of the critic parameters (regulariser target)
    return_norm: ReturnNorm


@struct.dataclass
class PolicyCarry:
    latent: Latent  # posterior at the last observation, leaves [n, ...]
    prev_action: jax.Array  # [n, A] the action taken at the last observation


@dataclasses.dataclass(frozen=True)
class Dreamer:
    init: Callable
    initial_carry: Callable
    act: Callable
    learn: Callable
    policy: Callable  # (actor params, feat [N, F]) -> distrax distribution over actions [N, A]
    world_model: WorldModel


def make_dreamer(config: Config, spec: EnvSpec) -> Dreamer:
    if len(spec.obs_shape) != 1:
        raise ValueError(
            f"env {spec.name!r} has observations of shape {spec.obs_shape}; Dreamer here takes "
            "vector observations (1-d)"
        )
    c = config
    A = spec.action_dim
    obs_dim = spec.obs_shape[0]
    wm = WorldModel(
        obs_dim=obs_dim,
        deter=c.deter,
        hidden=c.hidden,
        stoch=c.stoch,
        classes=c.classes,
        blocks=c.blocks,
        units=c.units,
        enc_layers=c.enc_layers,
        dec_layers=c.dec_layers,
        head_layers=c.head_layers,
        num_bins=c.num_bins,
        unimix=c.unimix,
    )
    actor = Head(A if spec.discrete else 2 * A, c.units, c.ac_layers)
    critic = Head(c.num_bins, c.units, c.ac_layers, zero_init=True)
    bins = twohot_bins(c.num_bins)
    optimizer = make_optimizer(
        c.lr, agc=c.agc, eps=c.opt_eps, beta1=c.beta1, beta2=c.beta2, warmup_steps=c.warmup
    )
    feat_dim = c.deter + c.stoch * c.classes

    def policy_dist(actor_params, feat):
        out = actor.apply(actor_params, feat)
        if spec.discrete:
            return onehot_categorical(unimix_logits(out, c.unimix))
        mean, std = jnp.split(out, 2, -1)
        return bounded_normal(mean, std, c.action_minstd, c.action_maxstd)

    def init(key) -> AgentState:
        k_wm, k_actor, k_critic, k_sample = jax.random.split(key, 4)
        params = {
            "wm": wm.init(
                k_wm, jnp.zeros((1, obs_dim)), jnp.zeros((1, A)), k_sample, method=WorldModel.init_all
            ),
            "actor": actor.init(k_actor, jnp.zeros((1, feat_dim))),
            "critic": critic.init(k_critic, jnp.zeros((1, feat_dim))),
        }
        return AgentState(params, optimizer.init(params), params["critic"], return_norm_init())

    def initial_carry(n: int) -> PolicyCarry:
        return PolicyCarry(zeros_latent((n,), c.deter, c.stoch, c.classes), jnp.zeros((n, A)))

    def act(state: AgentState, carry: PolicyCarry, obs, is_first, key, mode: bool = False):
        """obs: [n, obs_dim], is_first: [n] -> action [n, A], new carry."""
        k_post, k_act = jax.random.split(key)
        keep = 1.0 - is_first.astype(jnp.float32)
        latent = mask_latent(carry.latent, keep)
        embed = wm.apply(state.params["wm"], obs, method=WorldModel.encode)
        post, _ = wm.apply(
            state.params["wm"],
            latent,
            carry.prev_action * keep[:, None],
            embed,
            k_post,
            method=WorldModel.obs_step,
        )
        dist = policy_dist(state.params["actor"], post.feat)
        action = dist.mode() if mode else dist.sample(seed=k_act)
        return action, PolicyCarry(post, action)

    def world_model_loss(wm_params, batch, key):
        posts, prior_logits = observe(wm, wm_params, batch["obs"], batch["action"], batch["is_first"], key)
        obs_pred, reward_logits, cont_logit = wm.apply(wm_params, posts.feat, method=WorldModel.heads)
        rec = jnp.sum((obs_pred - symlog(batch["obs"])) ** 2, -1)  # symlog-MSE, summed over dims
        rew = -twohot_log_prob(reward_logits, bins, batch["reward"])
        con = -bernoulli_log_prob(cont_logit, 1.0 - batch["is_terminal"].astype(jnp.float32))
        dyn = kl_loss_free_nats(categorical_kl(sg(posts.logits), prior_logits), c.free_nats)
        rep = kl_loss_free_nats(categorical_kl(posts.logits, sg(prior_logits)), c.free_nats)
        loss = (
            c.loss_rec * rec + c.loss_rew * rew + c.loss_con * con + c.loss_dyn * dyn + c.loss_rep * rep
        ).mean()
        metrics = {
            "loss_rec": rec.mean(),
            "loss_rew": rew.mean(),
            "loss_con": con.mean(),
            "loss_dyn": dyn.mean(),
            "loss_rep": rep.mean(),
            "kl": categorical_kl(posts.logits, prior_logits).mean(),
        }
        return loss, (posts, metrics)

    def actor_critic_loss(ac_params, traj, slow_critic, return_norm):
        """traj: imagined states (feat [H+1, N, F]), actions [H, N, A], reward [H, N], cont [H+1, N]."""
        feat, actions = traj["feat"], traj["action"]
        critic_logits = critic.apply(ac_params["critic"], feat)  # [H+1, N, bins]
        values = twohot_mean(critic_logits, bins)
        discounts = c.discount * traj["cont"][1:]
        returns = lambda_returns(traj["reward"], sg(values), discounts, c.return_lambda)  # [H, N]
        # Weight of each imagined step: probability that the episode is still running (cumulative continue).
        weight = sg(jnp.cumprod(c.discount * traj["cont"], 0) / c.discount)[:-1]
        new_norm = update_return_norm(return_norm, returns, c.retnorm_rate)
        scale = return_scale(new_norm)
        advantage = sg((returns - values[:-1]) / scale)
        dist = policy_dist(ac_params["actor"], feat[:-1])
        log_prob = dist.log_prob(sg(actions))
        entropy = dist.entropy()
        actor_loss = -(weight * (log_prob * advantage + c.actor_entropy * entropy)).mean()
        slow_mean = twohot_mean(critic.apply(slow_critic, feat[:-1]), bins)
        critic_nll = -twohot_log_prob(critic_logits[:-1], bins, sg(returns))
        critic_reg = -twohot_log_prob(critic_logits[:-1], bins, sg(slow_mean))
        critic_loss = (weight * (critic_nll + c.slow_critic_reg * critic_reg)).mean()
        loss = c.loss_actor * actor_loss + c.loss_critic * critic_loss
        metrics = {
            "loss_actor": actor_loss,
            "loss_critic": critic_nll.mean(),
            "actor_entropy": entropy.mean(),
            "imag_return": returns.mean(),
            "return_scale": scale,
            "value": values.mean(),
        }
        return loss, (new_norm, metrics)

    def learn(state: AgentState, batch: dict, key) -> tuple[AgentState, dict]:
        """One update of world model, actor and critic on batch leaves [B, T, ...]."""
        k_wm, k_imag = jax.random.split(key)
        params = state.params
        (wm_loss, (posts, wm_metrics)), wm_grads = jax.value_and_grad(world_model_loss, has_aux=True)(
            params["wm"], batch, k_wm
        )

        # Imagine from every posterior state of the batch (B*T starts); nothing here is differentiated.
        start = jax.tree.map(lambda x: sg(x.reshape(-1, *x.shape[2:])), posts)
        policy = lambda feat, k: policy_dist(params["actor"], feat).sample(seed=k)
        states, actions = imagine(wm, params["wm"], policy, start, c.imag_horizon, k_imag)
        reward_logits, cont_logit = wm.apply(params["wm"], states.feat, method=WorldModel.reward_cont)
        cont = (cont_logit > 0).astype(jnp.float32)
        first_cont = 1.0 - batch["is_terminal"].reshape(-1).astype(jnp.float32)
        traj = {
            "feat": states.feat,
            "action": actions,
            "reward": twohot_mean(reward_logits[1:], bins),
            "cont": jnp.concatenate([first_cont[None], cont[1:]], 0),
        }
        traj = jax.tree.map(sg, traj)
        ac_params = {"actor": params["actor"], "critic": params["critic"]}
        (ac_loss, (return_norm, ac_metrics)), ac_grads = jax.value_and_grad(actor_critic_loss, has_aux=True)(
            ac_params, traj, state.slow_critic, state.return_norm
        )

        grads = {"wm": wm_grads, **ac_grads}
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        slow = optax.incremental_update(params["critic"], state.slow_critic, c.slow_critic_rate)
        metrics = {"loss_model": wm_loss, **wm_metrics, **ac_metrics, "grad_norm": optax.tree.norm(grads)}
        return AgentState(params, opt_state, slow, return_norm), metrics

    return Dreamer(
        init=init, initial_carry=initial_carry, act=act, learn=learn, policy=policy_dist, world_model=wm
    )


def random_action(spec: EnvSpec, n: int, key) -> jax.Array:
    """Uniform random actions in the agent's format: one-hot [n, A] or [-1, 1]^A."""
    if spec.discrete:
        return jax.nn.one_hot(jax.random.randint(key, (n,), 0, spec.action_dim), spec.action_dim)
    return jax.random.uniform(key, (n, spec.action_dim), minval=-1.0, maxval=1.0)


def env_action(spec: EnvSpec, action: jax.Array) -> jax.Array:
    """Agent action vector -> what the env adapter takes (index for discrete envs)."""
    return jnp.argmax(action, -1).astype(jnp.int32) if spec.discrete else action


__all__ = ["AgentState", "PolicyCarry", "Dreamer", "make_dreamer", "random_action", "env_action"]
