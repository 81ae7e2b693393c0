"""Every setting of a run: nested frozen dataclasses grouped by component; presets; validated overrides.

    Config(agent, run, env, replay, wm=(..., gru), dreamer, optim, tdmpc2)

A setting is named by its dotted path: `replay.batch_size`, `wm.gru.blocks`, `dreamer.imag_horizon`.
`make_config("cartpole", "size1m", **{"run.seed": 3, "replay.batch_size": 32})` (or
`make_config("cartpole", replay={"batch_size": 32})`) applies presets left to right, then overrides, then
validates once. The command line does the same with `--preset a,b` and `key=value` pairs.
Each field carries its one-line meaning and the rule it must satisfy (`setting(default, help, rule)`); the
relations between fields live in the `check` method of the smallest group that holds them all.
Derived quantities (discount, updates per iteration, ...) are properties, never stored fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A bad setting. The message names the field, the bad value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """A condition on one field's value and how an error message states what is allowed."""

    test: Callable[[Any], bool]
    allowed: str


POSITIVE = Rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
UNIT_INTERVAL = Rule(lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
AT_LEAST_ONE = Rule(lambda v: v >= 1, ">= 1")


def one_of(*allowed: Any) -> Rule:
    return Rule(lambda v: v in allowed, "one of " + ", ".join(repr(a) for a in allowed))


def setting(default: Any, help: str, rule: Rule | None = None) -> Any:
    """A config field with its one-line meaning (shown by `--show-config`) and the rule it must satisfy."""
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule})


def group(cls: type, help: str) -> Any:
    """A nested config group field."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


def _fail(path: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"{path}={value!r} must be {allowed}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int = setting(0, "PRNG seed of the whole run (0 to 2**32 - 1)", NON_NEGATIVE)
    steps: int = setting(30_000, "total env steps over all envs, prefill included", POSITIVE)
    chunk_steps: int = setting(
        1_000, "env steps per compiled chunk: the log / eval / checkpoint interval", POSITIVE
    )
    eval_episodes: int = setting(8, "episodes per evaluation, run in parallel", POSITIVE)
    eval_every: int = setting(
        0,
        "env steps between evaluations, rounded up to whole chunks (0: after every chunk); the last chunk "
        "always evaluates",
        NON_NEGATIVE,
    )
    eval_steps: int = setting(
        0,
        "env steps an evaluation runs at most; an episode not ended by then counts its partial return "
        "(0: the env's episode limit, so every episode ends)",
        NON_NEGATIVE,
    )
    eval_policy: str = setting(
        "sample",
        "evaluation actions: sampled from the policy (as the reference), or its 'mode'",
        one_of("sample", "mode"),
    )
    checkpoint_every: int = setting(
        10_000, "env steps between checkpoints (whole chunks); one at the end", POSITIVE
    )
    checkpoint_minutes: float = setting(
        10.0, "also save at the first chunk end this long after the last save", POSITIVE
    )
    keep_checkpoints: int = setting(3, "checkpoints kept on disk", POSITIVE)
    devices: int = setting(
        1,
        "devices in the mesh: a run splits envs, replay and batch over them ('data' axis), a sweep its seeds",
        POSITIVE,
    )


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    name: str = setting(
        "CartPole-v1", "gymnax env id (on device), or 'gymnasium:<id>' / 'envpool:<task_id>' (host envs)"
    )
    num_envs: int = setting(4, "envs stepped in parallel on the device", POSITIVE)
    loop: str = setting(
        "auto",
        "what drives the envs: 'compiled' (act, env step and learn in one compiled chunk: gymnax, envpool "
        "through its XLA interface), 'host' (env steps in Python: Gymnasium, envpool on TPU or with 64-bit "
        "arrays), or 'auto' (compiled wherever it works)",
        one_of("auto", "compiled", "host"),
    )
    sticky_actions: float = setting(
        0.25,
        "Atari on envpool: probability that the env repeats its previous action instead of the chosen one "
        "(Machado et al., 2018; DreamerV3's Atari setting); the atari100k preset turns it off",
        UNIT_INTERVAL,
    )
    action_repeat: int = setting(
        1,
        "DMC on envpool: env steps per agent step, the action repeated and the rewards summed (DreamerV3's "
        "DMC setting is 2; the dmc preset sets it); run.steps and the time limit count agent steps",
        POSITIVE,
    )


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    capacity: int = setting(100_000, "env steps kept, over all envs", POSITIVE)
    prefill: int = setting(1_024, "random-action env steps before learning starts", NON_NEGATIVE)
    batch_size: int = setting(16, "replayed windows per update", POSITIVE)
    batch_length: int = setting(64, "steps per replayed window", POSITIVE)
    train_ratio: float = setting(512.0, "replayed steps per env step, as DreamerV3 counts it", POSITIVE)
    context: bool = setting(True, "a window starts from the latent stored for the step before it (reference)")
    online: bool = setting(True, "each fresh window is trained on once, in the first batch rows (reference)")
    max_gib: float = setting(
        16.0,
        "largest replay allowed, in GiB (all seeds of a sweep together); checked before allocating",
        POSITIVE,
    )
    # Drama's dynamic frequency-based sampling (replay.py); the defaults are the authors' (config train.yaml).
    sampler: str = setting(
        "uniform",
        "window starts: 'uniform', or Drama's 'frequency' (softmax of per-start use counts, for world-model "
        "windows and for imagination starts)",
        one_of("uniform", "frequency"),
    )
    dfs_tau: float = setting(10.0, "frequency sampler: temperature of the world-model softmax", POSITIVE)
    dfs_imag_tau: float = setting(10.0, "frequency sampler: temperature of the imagination softmax", POSITIVE)
    dfs_alpha: float = setting(1.0, "frequency sampler: weight of the imagination count", NON_NEGATIVE)
    dfs_beta: float = setting(
        1.0, "frequency sampler: weight of max(0, train count - imagination count)", NON_NEGATIVE
    )
    imag_batch: int = setting(
        1024,
        "frequency sampler: imagination starts per update, each the last step of its own window",
        POSITIVE,
    )
    imag_context: int = setting(
        8, "frequency sampler: steps observed before each imagination start", POSITIVE
    )
    # DreamSmooth: applied to the sampled reward column, so any agent that reads batch["reward"] gets it.
    reward_smoothing: str = setting(
        "none",
        "DreamSmooth: smooth each episode's rewards (the learner's reward target; raw kept as reward_raw)",
        one_of("none", "gaussian", "uniform", "ema"),
    )
    smooth_sigma: float = setting(3.0, "DreamSmooth gaussian: standard deviation in steps", POSITIVE)
    smooth_delta: int = setting(9, "DreamSmooth uniform: window in steps", AT_LEAST_ONE)
    smooth_alpha: float = setting(
        0.33,
        "DreamSmooth ema: s_t = alpha s_(t-1) + (1 - alpha) r_t",
        Rule(lambda v: 0.0 <= v < 1.0, "in [0, 1)"),
    )


@dataclasses.dataclass(frozen=True)
class GRUConfig:
    blocks: int = setting(8, "block-diagonal groups of the GRU (wm.deter must divide by it)", POSITIVE)


@dataclasses.dataclass(frozen=True)
class MambaConfig:
    layers: int = setting(2, "Mamba-2 layers (Drama: 2)", POSITIVE)
    expand: int = setting(2, "inner width / wm.deter of each layer's mixer and gated MLP", POSITIVE)
    head_dim: int = setting(64, "channels per SSM head (wm.deter * expand must divide by it)", POSITIVE)
    state: int = setting(16, "SSM state size N per head", POSITIVE)
    conv: int = setting(4, "causal depthwise convolution width", AT_LEAST_ONE)
    chunk: int = setting(
        64, "steps per chunk of the parallel (training) form; its work grows as T x chunk", POSITIVE
    )


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    layers: int = setting(2, "Transformer layers", POSITIVE)
    heads: int = setting(
        4, "attention heads (wm.deter / heads must be even, for rotary embeddings)", POSITIVE
    )
    context: int = setting(
        64, "steps a step attends to, itself included (the key/value cache's length)", POSITIVE
    )
    mlp_ratio: int = setting(2, "gated MLP width / wm.deter", POSITIVE)


@dataclasses.dataclass(frozen=True)
class WorldModelConfig:
    backbone: str = setting("gru", "sequence backbone of the world model (mbrl_jax.world_models.BACKBONES)")
    deter: int = setting(512, "deterministic state size (the backbone's output)", POSITIVE)
    hidden: int = setting(64, "RSSM input / prior / posterior layer width", POSITIVE)
    stoch: int = setting(32, "categorical latent variables", POSITIVE)
    classes: int = setting(4, "classes per latent variable", POSITIVE)
    units: int = setting(64, "MLP width of encoder, decoder and heads (and actor, critic)", POSITIVE)
    depth: int = setting(
        4, "image encoder / decoder channels: depth x (2, 3, 4, 4) per stride-2 stage (reference)", POSITIVE
    )
    conv: str = setting(
        "auto",
        "image convolutions as 'patches' (patch matrices times kernels: fast in CPU loops, k*k x the "
        "memory) or 'xla' (XLA's convolution ops: native on GPU and TPU), same function and parameters; "
        "'auto' takes patches on CPU and xla on GPU / TPU (jax.default_backend() when networks are built)",
        one_of("auto", "patches", "xla"),
    )
    enc_layers: int = setting(3, "encoder MLP layers", POSITIVE)
    dec_layers: int = setting(3, "decoder MLP layers", POSITIVE)
    head_layers: int = setting(1, "reward and continue head MLP layers", NON_NEGATIVE)
    unimix: float = setting(0.01, "uniform mixture in the latent categoricals", UNIT_INTERVAL)
    free_nats: float = setting(1.0, "KL below this (summed over latents) is not penalised", NON_NEGATIVE)
    num_bins: int = setting(255, "two-hot bins of reward and value heads", POSITIVE)
    loss_rec: float = setting(1.0, "scale of the reconstruction loss", NON_NEGATIVE)
    loss_rew: float = setting(1.0, "scale of the reward loss", NON_NEGATIVE)
    loss_con: float = setting(1.0, "scale of the continue loss", NON_NEGATIVE)
    loss_dyn: float = setting(1.0, "scale of the dynamics KL (trains the prior)", NON_NEGATIVE)
    loss_rep: float = setting(0.1, "scale of the representation KL (trains the posterior)", NON_NEGATIVE)
    gru: GRUConfig = group(GRUConfig, "block GRU backbone")
    mamba: MambaConfig = group(MambaConfig, "Mamba-2 backbone (Drama)")
    transformer: TransformerConfig = group(TransformerConfig, "causal Transformer backbone")

    def check(self, path: str) -> None:
        if self.backbone == "gru" and self.deter % self.gru.blocks:
            raise ConfigError(
                f"{path}.deter={self.deter} must be divisible by {path}.gru.blocks={self.gru.blocks}"
            )
        if self.backbone == "mamba" and (self.deter * self.mamba.expand) % self.mamba.head_dim:
            raise ConfigError(
                f"{path}.deter * {path}.mamba.expand = {self.deter * self.mamba.expand} must be divisible by "
                f"{path}.mamba.head_dim={self.mamba.head_dim}"
            )
        heads = self.transformer.heads
        if self.backbone == "transformer" and (self.deter % heads or (self.deter // heads) % 2):
            raise ConfigError(
                f"{path}.deter={self.deter} must split into {path}.transformer.heads={heads} heads of an "
                "even size (rotary embeddings rotate pairs of channels)"
            )


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


# ---- TD-MPC2 (agent=tdmpc2): its config group and presets, kept together --------------------------------


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


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """DreamerV3's optimiser: adaptive gradient clipping + LaProp, one for all networks."""

    lr: float = setting(4e-5, "learning rate", POSITIVE)
    agc: float = setting(0.3, "adaptive gradient clipping ratio", POSITIVE)
    eps: float = setting(1e-20, "LaProp epsilon", POSITIVE)
    beta1: float = setting(0.9, "momentum rate", UNIT_INTERVAL)
    beta2: float = setting(0.999, "second-moment rate", UNIT_INTERVAL)
    warmup: int = setting(1_000, "updates of linear learning-rate warm-up", NON_NEGATIVE)


@dataclasses.dataclass(frozen=True)
class Config:
    agent: str = setting("dreamer", "the agent (mbrl_jax.agents.AGENTS)")
    run: RunConfig = group(RunConfig, "length, seed, evaluation and checkpoints")
    env: EnvConfig = group(EnvConfig, "the environment")
    replay: ReplayConfig = group(ReplayConfig, "the on-device replay and how it is sampled")
    wm: WorldModelConfig = group(WorldModelConfig, "the world model and its sequence backbone")
    dreamer: DreamerConfig = group(DreamerConfig, "DreamerV3's actor-critic in imagination")
    optim: OptimConfig = group(OptimConfig, "the optimiser")
    tdmpc2: TDMPC2Config = group(TDMPC2Config, "TD-MPC2's latent model, Q ensemble, policy prior and MPPI")

    # ---- derived ----
    @property
    def env_steps_per_iteration(self) -> int:
        """Env steps (over all envs) between learner phases: the smallest multiple of num_envs that
        makes the number of updates a whole number for the given train_ratio."""
        r = self.replay
        per_update = r.batch_size * r.batch_length / r.train_ratio  # env steps per update
        k = max(1, math.ceil(per_update / self.env.num_envs - 1e-9))
        return k * self.env.num_envs

    @property
    def updates_per_iteration(self) -> int:
        r = self.replay
        return max(1, round(self.env_steps_per_iteration * r.train_ratio / (r.batch_size * r.batch_length)))

    @property
    def effective_train_ratio(self) -> float:
        r = self.replay
        return self.updates_per_iteration * r.batch_size * r.batch_length / self.env_steps_per_iteration

    @property
    def iterations_per_chunk(self) -> int:
        return max(1, round(self.run.chunk_steps / self.env_steps_per_iteration))

    @property
    def env_steps_per_chunk(self) -> int:
        return self.iterations_per_chunk * self.env_steps_per_iteration

    @property
    def chunks_per_eval(self) -> int:
        if self.run.eval_every == 0:
            return 1
        return max(1, math.ceil(self.run.eval_every / self.env_steps_per_chunk))

    @property
    def prefill_steps_per_env(self) -> int:
        return math.ceil(self.replay.prefill / self.env.num_envs)

    @property
    def num_chunks(self) -> int:
        """Chunks after prefill, the last one cut short where the budget ends inside a chunk."""
        remaining = self.run.steps - self.prefill_steps_per_env * self.env.num_envs
        return max(0, math.ceil(remaining / self.env_steps_per_chunk))

    @property
    def total_env_steps(self) -> int:
        """Env steps a run does: `run.steps`, or the next whole iteration (`env_steps_per_iteration`, all
        envs stepping together) above it; likewise the prefill takes whole steps of all envs."""
        prefill = self.prefill_steps_per_env * self.env.num_envs
        per_iteration = self.env_steps_per_iteration
        return prefill + math.ceil(max(0, self.run.steps - prefill) / per_iteration) * per_iteration

    @property
    def sample_length(self) -> int:
        """Steps per sampled window: batch_length, plus one step of context with the replay context."""
        return self.replay.batch_length + int(self.replay.context)

    @property
    def imag_sample_length(self) -> int:
        """Steps per sampled imagination window (frequency sampler): imag_context, plus one of context."""
        return self.replay.imag_context + int(self.replay.context)

    @property
    def capacity_per_env(self) -> int:
        return math.ceil(self.replay.capacity / self.env.num_envs)

    def check(self, path: str = "") -> None:
        r, n = self.replay, self.env.num_envs
        if self.capacity_per_env < self.sample_length:
            raise ConfigError(
                f"replay.batch_length={r.batch_length} (+1 with replay.context) is longer than the replay "
                f"per "
                f"env (replay.capacity={r.capacity} / env.num_envs={n} = {self.capacity_per_env})"
            )
        if self.prefill_steps_per_env < self.sample_length:
            raise ConfigError(
                f"replay.prefill={r.prefill} gives {self.prefill_steps_per_env} steps per env, fewer "
                f"than the "
                f"sampled window of {self.sample_length} steps (replay.batch_length, +1 with "
                "replay.context); "
                f"allowed: replay.prefill >= {self.sample_length * n}"
            )
        if r.online and n > r.batch_size:
            raise ConfigError(
                f"replay.online=True puts one fresh window per env in each batch, so env.num_envs={n} "
                "must be "
                f"<= replay.batch_size={r.batch_size}; or set replay.online=false"
            )
        if r.sampler == "frequency":
            if self.agent == "dreamer" and self.dreamer.loss_repval > 0:
                raise ConfigError(
                    f"replay.sampler='frequency' imagines from separately sampled starts, but "
                    f"dreamer.loss_repval={self.dreamer.loss_repval} bootstraps from imagination started at "
                    "every replayed step; set dreamer.loss_repval=0 (Drama has no replay value loss) or "
                    "replay.sampler='uniform'"
                )
            if self.prefill_steps_per_env < self.imag_sample_length:
                raise ConfigError(
                    f"replay.imag_context={r.imag_context} (+1 with replay.context) is longer than the "
                    f"{self.prefill_steps_per_env} prefill steps per env; allowed: replay.imag_context <= "
                    f"{self.prefill_steps_per_env - int(r.context)}"
                )
        d = self.run.devices
        if d > 1 and r.sampler == "frequency" and r.imag_batch % d:
            raise ConfigError(f"run.devices={d} must divide replay.imag_batch={r.imag_batch}")
        if d > 1 and (n % d or r.batch_size % d):
            raise ConfigError(
                f"run.devices={d} must divide env.num_envs={n} and replay.batch_size={r.batch_size} "
                "(each device holds as many envs and replayed windows as the others)"
            )
        if self.prefill_steps_per_env * n > self.run.steps:
            raise ConfigError(f"replay.prefill={r.prefill} exceeds the budget run.steps={self.run.steps}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict, grouped as the dataclasses are (what config.yaml holds)."""
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{dotted path: value} of every field."""
        return {path: _get(self, path) for path in FIELDS}

    def replace(self, **overrides: Any) -> Config:
        """This config with overrides (dotted keys, or group=mapping), validated."""
        return make_config(base=self, **overrides)


# ---- the field table -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    path: str
    type: type
    help: str
    rule: Rule | None


def _walk(cls: type, prefix: str = "") -> Iterable[FieldInfo]:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        typ, path = hints[f.name], prefix + f.name
        if dataclasses.is_dataclass(typ):
            yield from _walk(typ, path + ".")
        else:
            yield FieldInfo(path, typ, f.metadata.get("help", ""), f.metadata.get("rule"))


def _groups(cls: type, prefix: str = "") -> Iterable[tuple[str, type, str]]:
    """(path, class, help) of every nested group, outermost first."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield prefix + f.name, hints[f.name], f.metadata.get("help", "")
            yield from _groups(hints[f.name], prefix + f.name + ".")


FIELDS: dict[str, FieldInfo] = {info.path: info for info in _walk(Config)}
GROUPS: dict[str, tuple[type, str]] = {path: (cls, help) for path, cls, help in _groups(Config)}


def _get(config: Any, path: str) -> Any:
    for name in path.split("."):
        config = getattr(config, name)
    return config


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


# ---- presets ---------------------------------------------------------------------------------------------

# DreamerV3 model sizes (paper's size table; reference configs). Layer counts follow the reference.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    name: {
        "wm.deter": deter,
        "wm.hidden": hidden,
        "wm.classes": classes,
        "wm.units": units,
        "wm.depth": depth,
    }
    for name, deter, hidden, classes, units, depth in [
        ("size1m", 512, 64, 4, 64, 4),
        ("size12m", 2048, 256, 16, 256, 16),
        ("size25m", 3072, 384, 24, 384, 24),
        ("size50m", 4096, 512, 32, 512, 32),
        ("size100m", 6144, 768, 48, 768, 48),
        ("size200m", 8192, 1024, 64, 1024, 64),
        ("size400m", 12288, 1536, 96, 1536, 96),
    ]
}

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

# Sequence backbones (#11), combined with a task preset (`--preset cartpole,mamba`). A parallel backbone
# starts every window from zeros (replay.context=false: the replay stores only the GRU's latent).
BACKBONE_PRESETS: dict[str, dict[str, Any]] = {
    "mamba": {"wm.backbone": "mamba", "replay.context": False},
    "transformer": {"wm.backbone": "transformer", "replay.context": False},
    # Drama's world model (Wang et al., 2025): Mamba-2, 2 layers of width 512, batch 16 x 128, imagination
    # horizon 16. Drama imagines from 1,024 sampled starts; add replay.sampler=frequency for its sampler.
    "drama": {
        "wm.backbone": "mamba",
        "replay.context": False,
        "wm.deter": 512,
        "wm.mamba.layers": 2,
        "replay.batch_size": 16,
        "replay.batch_length": 128,
        "dreamer.imag_horizon": 16,
    },
}

TASK_PRESETS: dict[str, dict[str, Any]] = {
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
    # Tiny settings for tests and smoke runs: compiles fast, learns nothing in particular.
    "debug": {
        "run.steps": 2_000,
        "run.chunk_steps": 250,
        "run.eval_episodes": 2,
        "env.num_envs": 2,
        "replay.prefill": 256,
        "replay.batch_size": 4,
        "replay.batch_length": 16,
        "replay.train_ratio": 64.0,
        "replay.capacity": 4_000,
        "wm.deter": 64,
        "wm.hidden": 32,
        "wm.stoch": 4,
        "wm.classes": 4,
        "wm.gru.blocks": 4,
        "wm.units": 32,
        "wm.enc_layers": 1,
        "wm.dec_layers": 1,
        "dreamer.ac_layers": 1,
        "dreamer.imag_horizon": 5,
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    **TASK_PRESETS,
    **SIZE_PRESETS,
    **BACKBONE_PRESETS,
    **TDMPC2_TASK_PRESETS,
    **TDMPC2_SIZE_PRESETS,
}


# ---- construction and validation -------------------------------------------------------------------------


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """The hint " (did you mean 'X'?)", X the option closest to `name` (case ignored), or "" when none is
    close; for error messages about a mistyped key, preset or env name. A dotted option whose last part is
    the last part of `name` counts as closest (a key given without its group, or in the wrong one); when
    several groups have that name, all are named ("'optim.lr' or 'tdmpc2.lr'")."""
    options = [str(option) for option in options]
    leaf = str(name).rsplit(".", 1)[-1].lower()
    by_leaf = [o for o in options if o != name and o.rsplit(".", 1)[-1].lower() == leaf]
    if by_leaf:  # the same name in several groups: all of them
        return f" (did you mean {' or '.join(map(repr, by_leaf))}?)"
    by_lower = {option.lower(): option for option in options}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def coerce_value(key: str, value: Any) -> Any:
    """Turns a CLI string or a Python value into the field's type, or raises ConfigError."""
    if key not in FIELDS:
        raise ConfigError(
            f"unknown config key '{key}'{did_you_mean(key, FIELDS)}; see `python experiments/run.py "
            "--show-config` for every key"
        )
    typ = FIELDS[key].type
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            if typ is int:
                number = float(text.replace("_", ""))
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return typ(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a valid {typ.__name__}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} is not a valid {typ.__name__}")
    return value


# Counters and sizes are int32 on the device; the seed becomes a uint32 PRNG key.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1


def _check_field(info: FieldInfo, value: Any) -> None:
    if info.type is float and not math.isfinite(value):
        raise ConfigError(f"{info.path}={value!r} is not finite; allowed: a finite number")
    if info.type is int:
        seed = info.path == "run.seed"
        high = UINT32_MAX if seed else INT32_MAX
        if value > high:
            kind = "a uint32 PRNG seed" if seed else "an int32 on the device"
            raise ConfigError(f"{info.path}={value!r} is too large; allowed: at most {high} ({kind})")
    if info.rule is not None and not info.rule.test(value):
        raise _fail(info.path, value, info.rule.allowed)


def validate(config: Config) -> Config:
    """Checks every field against its rule, then each group's relations, then the agent's and env's; raises
    ConfigError naming the field."""
    for path, info in FIELDS.items():
        _check_field(info, _get(config, path))
    for path in GROUPS:
        group_value = _get(config, path)
        if hasattr(group_value, "check"):
            group_value.check(path)
    config.check()
    from mbrl_jax.agents import AGENTS, check_agent  # late imports: these pull in jax and gymnax
    from mbrl_jax.envs import (
        env_spec,
        is_envpool_atari,
        is_envpool_dmc,
        is_host_env,
        list_envs,
        resolve_loop,
    )
    from mbrl_jax.world_models import BACKBONES
    from mbrl_jax.world_models.backbone import make_backbone

    if config.agent not in AGENTS:
        raise ConfigError(
            f"agent={config.agent!r} is not known{did_you_mean(config.agent, AGENTS)}; "
            f"allowed: {', '.join(map(repr, AGENTS))}"
        )
    if config.wm.backbone not in BACKBONES:
        raise ConfigError(
            f"wm.backbone={config.wm.backbone!r} is not known{did_you_mean(config.wm.backbone, BACKBONES)}; "
            f"allowed: {', '.join(map(repr, BACKBONES))}"
        )
    if config.replay.context and getattr(make_backbone(config.wm), "parallel", False):
        raise ConfigError(
            f"replay.context=true stores the latent h with each step; wm.backbone={config.wm.backbone!r} "
            "keeps a larger recurrent state (a parallel backbone), so its windows start from zeros: set "
            "replay.context=false"
        )
    if config.env.sticky_actions != EnvConfig.sticky_actions and not is_envpool_atari(config.env.name):
        raise ConfigError(
            f"env.sticky_actions={config.env.sticky_actions} applies to Atari tasks on envpool "
            f"('envpool:Pong-v5'); env.name={config.env.name!r} is not one: leave it at "
            f"{EnvConfig.sticky_actions}"
        )
    if config.env.action_repeat != 1 and not is_envpool_dmc(config.env.name):
        raise ConfigError(
            f"env.action_repeat={config.env.action_repeat} applies to DMC tasks on envpool "
            f"('envpool:WalkerWalk-v1'), whose episodes all last the same number of env steps; "
            f"env.name={config.env.name!r} is not one: leave it at 1 (Atari's action repeat of 4 is "
            "envpool's frame skip)"
        )
    if is_host_env(config.env.name):
        if config.run.devices != 1:
            raise ConfigError(
                f"run.devices={config.run.devices} with env.name={config.env.name!r}: a host env is one "
                "set of envs on the host, which feeds one device; allowed: run.devices=1"
            )
    elif config.env.name not in list_envs():
        hint = did_you_mean(config.env.name, list_envs())
        raise ConfigError(
            f"env.name={config.env.name!r} is not a known gymnax env{hint} (host envs: "
            "'gymnasium:<id>', e.g. 'gymnasium:CartPole-v1', or 'envpool:<task_id>')"
        )
    resolve_loop(config.env.name, config.env.loop)
    check_agent(config, env_spec(config.env.name, config.env.action_repeat))
    return config


def _flatten_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{"replay": {"batch_size": 8}, "run.seed": 1} -> {"replay.batch_size": 8, "run.seed": 1}."""
    flat = {}
    for key, value in overrides.items():
        if key in GROUPS and isinstance(value, Mapping):
            flat.update(_flatten_overrides({f"{key}.{k}": v for k, v in value.items()}))
        else:
            flat[key] = value
    return flat


def make_config(*presets: str, base: Config | None = None, **overrides: Any) -> Config:
    """Presets applied left to right on `base` (default Config()), then overrides; validated.

    Overrides are dotted keys (`**{"replay.batch_size": 32}`) or groups (`replay={"batch_size": 32}`).
    """
    values = (base or Config()).flat()
    for name in presets:
        if name not in PRESETS:
            raise ConfigError(
                f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; allowed: {', '.join(PRESETS)}"
            )
        values.update(PRESETS[name])
    for key, value in _flatten_overrides(overrides).items():
        values[key] = coerce_value(key, value)
    return validate(_build(Config, values))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['optim.lr=1e-4', 'replay.batch_size=32'] -> {'optim.lr': 1e-4, 'replay.batch_size': 32}, typed."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, value = (part.strip() for part in pair.split("=", 1))
        if key in out:
            raise ConfigError(f"{key} is given twice ({pair!r} and an earlier one); give it once")
        out[key] = coerce_value(key, value)
    return out


# Fields added after runs were already stored, with the value that earlier runs behaved as: a stored config
# without the field reads as what it ran with, not as today's default.
ADDED_FIELDS_BEFORE: dict[str, Any] = {"run.eval_policy": "mode"}

# The flat keys of mbrl_jax 0.1 (before the groups), so that its run folders stay readable and resumable.
_RENAMED = {
    "env": ("env.name",),
    "replay_capacity": ("replay.capacity",),
    "replay_context": ("replay.context",),
    "replay_online": ("replay.online",),
    "opt_eps": ("optim.eps",),
    "blocks": ("wm.gru.blocks",),
    "unimix": ("wm.unimix", "dreamer.unimix"),  # 0.1 had one unimix for the latents and the policy
}
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    **{
        p.rsplit(".", 1)[1]: (p,)
        for p in FIELDS
        if p.count(".") == 1
        and not p.startswith("tdmpc2.")  # added after 0.1; its names repeat other groups' (lr, horizon)
        and p not in ADDED_FIELDS_BEFORE
        and all(p not in paths for paths in _RENAMED.values())
    },
    **_RENAMED,
}


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """A config from its `to_dict()` form (nested groups), or from an mbrl_jax 0.1 flat dict; validated."""
    if any(isinstance(v, Mapping) for v in values.values()):
        flat = _flatten_overrides(values)
    else:
        unknown = sorted(set(values) - set(LEGACY_KEYS) - {"agent"})
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}")
        flat = {path: v for k, v in values.items() for path in LEGACY_KEYS.get(k, (k,))}
    unknown = sorted(set(flat) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    flat = {**ADDED_FIELDS_BEFORE, **flat}
    return validate(_build(Config, {k: coerce_value(k, v) for k, v in flat.items()}))


# Fields that change how long a run trains, how often it saves or how it is evaluated, never what it learns
# (evaluation draws its keys apart from training's), and `wm.conv`, which computes the same function with the
# same parameters (a checkpoint moves between CPU and GPU): a run may be resumed with different values.
RESUMABLE_FIELDS = frozenset(
    {
        "run.steps",
        "run.checkpoint_every",
        "run.checkpoint_minutes",
        "run.keep_checkpoints",
        "run.eval_policy",
        "wm.conv",
    }
)


def config_diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: {dotted path: (a_value, b_value)}."""
    fa, fb = a.flat(), b.flat()
    return {k: (fa[k], fb[k]) for k in FIELDS if fa[k] != fb[k]}


def describe_config(config: Config) -> str:
    """The resolved config, one `path = value  # meaning` line per field under its group's heading."""
    lines, width = [], max(len(f"{p} = {_get(config, p)!r}") for p in FIELDS)
    current = None
    for path, info in FIELDS.items():
        group_path = path.rsplit(".", 1)[0] if "." in path else ""
        if group_path != current:
            current = group_path
            if group_path:
                lines.append(f"\n[{group_path}]  {GROUPS[group_path][1]}")
        text = f"{path} = {_get(config, path)!r}"
        lines.append(f"{text:<{width}}  # {info.help}")
    return "\n".join(lines).lstrip("\n")
