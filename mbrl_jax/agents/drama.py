"""Drama (Wang et al., "Drama: Mamba-Enabled Model-Based Reinforcement Learning Is Sample and Parameter
Efficient", ICLR 2025): a Mamba-2 world model and an actor-critic trained in imagination, as the authors' code
(realwenlongwang/drama: sub_models/world_models.py, agents.py, train.py, config_files/train.yaml) sets them.

`make_drama(config, spec)` returns the `Agent` functions (mbrl_jax/agents/base.py):
  init(key)                                                -> DramaState
  initial_carry(n)                                         -> ActCarry (the last `act_context` steps per env)
  act(state, carry, obs, prev_action, is_first, key, mode) -> (action [n, A], carry)  one env step
  learn(state, batch, key)                                 -> (state, metrics, {})  one update
  replay_context(carry)                                    -> {} (nothing stored with the replay)
It reads its own group `drama` and the replay's frequency sampler (`replay.sampler='frequency'`), whose
imagination windows (`batch["imag"]`, `replay.imag_context` steps) start imagination. Its settings
(`DramaConfig`), checks, memory estimate and preset (`drama`) live here; `mbrl_jax/agents/__init__.py`
registers them.

The world model (authors' `WorldModel`), per step t of a window:
  posterior  z_t ~ q(z_t | o_t): encoder, then ONE linear layer to 32 x 32 categorical logits (unimix 1%)
  sequence   h_t = Mamba-2(stem(z_<=t, a_<=t)), stem = Linear -> RMSNorm -> SiLU, 2 layers without MLP
  prior      p(z_{t+1} | h_t): one linear layer from h_t
  heads      reward r_t and termination d_t of the step taken at o_t read h_t (two-hot, Bernoulli);
             the decoder reads z_t alone
and the loss rec + rew + term + max(1, KL_dyn) + 0.1 max(1, KL_rep), the free bits on the batch-mean KL.

Replay convention: the replay stores with step t the action that led to o_t (zero at episode starts) and the
reward received on arriving; the authors store the action taken at o_t and the reward that followed. So a
window of L steps holds L - 1 of their transitions: a_t = action[t + 1], r_t = reward[t + 1],
d_t = is_terminal[t + 1], valid unless step t + 1 starts an episode (those pairs are masked out).

The losses are module functions, each callable on its own: `world_model_loss`, `imagine`,
`actor_critic_loss`, `drama_lambda_returns`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrl_jax.agents.base import Agent
from mbrl_jax.envs.base import EnvSpec, obs_dtype
from mbrl_jax.errors import ConfigError
from mbrl_jax.nets.distributions import (
    bernoulli_log_prob,
    categorical_kl,
    onehot_categorical,
    straight_through_onehot_sample,
    twohot_bins,
    twohot_log_prob,
    twohot_mean,
    unimix_logits,
)
from mbrl_jax.nets.image import KERNEL, MIN_RES, Conv, ConvTranspose, conv_form, image_stages
from mbrl_jax.nets.layers import Head
from mbrl_jax.nets.observations import ObservationCoding
from mbrl_jax.returns import ReturnNorm, return_norm_init, return_scale, update_return_norm
from mbrl_jax.settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, UNIT_INTERVAL, one_of, setting
from mbrl_jax.world_models.mamba import Mamba2
from mbrl_jax.world_models.rssm import reconstruction_loss

if TYPE_CHECKING:
    from mbrl_jax.config import Config

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class DramaConfig:
    """Drama's settings; defaults are the authors' (config_files/train.yaml, their Atari 100k model)."""

    deter: int = setting(512, "Mamba-2 width d_model: the size of h_t (HiddenStateDim)", POSITIVE)
    stoch: int = setting(32, "categorical latent variables (CategoricalDim)", POSITIVE)
    classes: int = setting(32, "classes per latent variable (ClassDim)", POSITIVE)
    layers: int = setting(2, "Mamba-2 layers, each the mixer alone (no MLP: d_intermediate = 0)", POSITIVE)
    expand: int = setting(2, "Mamba-2 inner width / deter", POSITIVE)
    head_dim: int = setting(64, "Mamba-2 channels per SSM head (deter * expand must divide by it)", POSITIVE)
    ssm_state: int = setting(16, "Mamba-2 SSM state size N per head (d_state)", POSITIVE)
    ssm_conv: int = setting(4, "Mamba-2 causal convolution width (d_conv)", AT_LEAST_ONE)
    chunk: int = setting(64, "steps per chunk of Mamba-2's parallel form (compute only)", POSITIVE)
    depth: int = setting(16, "image encoder / decoder channels: depth x (1, 2, 3, 4, 4) per stage", POSITIVE)
    conv: str = setting(
        "auto",
        "image convolutions as 'patches' or 'xla' (same function and parameters, as wm.conv); 'auto': "
        "patches on CPU, xla on GPU / TPU",
        one_of("auto", "patches", "xla"),
        resumable=True,
    )
    mlp_units: int = setting(256, "vector observations: encoder / decoder MLP width (ours)", POSITIVE)
    mlp_layers: int = setting(2, "vector observations: encoder / decoder MLP layers (ours)", POSITIVE)
    head_units: int = setting(256, "reward and termination head width", POSITIVE)
    head_layers: int = setting(1, "reward and termination head hidden layers", NON_NEGATIVE)
    unimix: float = setting(0.01, "uniform mixture in the latent categoricals", UNIT_INTERVAL)
    free_bits: float = setting(1.0, "batch-mean KL below this is not penalised", NON_NEGATIVE)
    loss_dyn: float = setting(1.0, "scale of the dynamics KL (trains the prior)", NON_NEGATIVE)
    loss_rep: float = setting(0.1, "scale of the representation KL (trains the posterior)", NON_NEGATIVE)
    num_bins: int = setting(255, "two-hot bins of reward and value heads, on [-20, 20] in symlog", POSITIVE)
    wm_lr: float = setting(4e-5, "world model LaProp learning rate", POSITIVE)
    wm_eps: float = setting(1e-20, "world model LaProp epsilon", POSITIVE)
    wm_clip: float = setting(1000.0, "world model global gradient norm clip", POSITIVE)
    wm_warmup: int = setting(1000, "world model updates of linear learning-rate warm-up", NON_NEGATIVE)
    imag_horizon: int = setting(16, "imagined steps per rollout (ImagineBatchLength)", POSITIVE)
    gamma: float = setting(0.985, "discount", UNIT_INTERVAL)
    return_lambda: float = setting(0.95, "lambda of the lambda returns", UNIT_INTERVAL)
    actor_entropy: float = setting(3e-4, "entropy bonus of the actor", NON_NEGATIVE)
    actor_unimix: float = setting(0.0, "uniform mixture in the policy (Drama: none)", UNIT_INTERVAL)
    ac_layers: int = setting(3, "actor and critic hidden layers", POSITIVE)
    actor_units: int = setting(256, "actor width", POSITIVE)
    critic_units: int = setting(512, "critic width", POSITIVE)
    ac_lr: float = setting(4e-5, "actor-critic LaProp learning rate", POSITIVE)
    ac_eps: float = setting(1e-20, "actor-critic LaProp epsilon", POSITIVE)
    ac_clip: float = setting(100.0, "actor-critic global gradient norm clip", POSITIVE)
    ac_warmup: int = setting(1000, "actor-critic updates of linear learning-rate warm-up", NON_NEGATIVE)
    slow_critic_rate: float = setting(0.02, "EMA rate of the slow critic", UNIT_INTERVAL)
    retnorm_rate: float = setting(0.01, "EMA rate of the return percentiles", UNIT_INTERVAL)
    feat_clip: float = setting(10.0, "the actor's normalised inputs are clipped to +-this", POSITIVE)
    act_context: int = setting(
        16, "steps of the episode the policy re-reads each env step (RealityContextLength)", POSITIVE
    )

    def check(self, path: str) -> None:
        if (self.deter * self.expand) % self.head_dim:
            raise ConfigError(
                f"{path}.deter * {path}.expand = {self.deter * self.expand} must be divisible by "
                f"{path}.head_dim={self.head_dim}"
            )
        if self.num_bins < 2:
            raise ConfigError(f"{path}.num_bins={self.num_bins} must be >= 2")


# Drama's settings (config_files/train.yaml): one env, a 100k-step replay, batch 16 x 128 and one world-model
# and one actor-critic update per env step (train ratio 16 x 128 = 2,048), training from 1,032 steps of
# random play, 1,024 imagination starts per update drawn by the frequency sampler after 8 context steps
# (9 replayed steps: the action taken at the 8th is stored with the 9th), greedy evaluation. Not tuned to any
# task; combine with --env (CartPole-v1 by default).
DRAMA_PRESETS: dict[str, dict[str, Any]] = {
    "drama": {
        "agent": "drama",
        "env.num_envs": 1,
        "run.eval_policy": "mode",
        "replay.capacity": 100_000,
        "replay.prefill": 1_032,
        "replay.batch_size": 16,
        "replay.batch_length": 128,
        "replay.train_ratio": 2048.0,
        "replay.context": False,
        "replay.online": False,
        "replay.sampler": "frequency",
        "replay.imag_batch": 1024,
        "replay.imag_context": 9,
    },
}


# ---- networks ----------------------------------------------------------------------------------------------

# The authors' initialisers: `weight_init` (a truncated normal scaled by fan-average) for encoder, decoder and
# heads; PyTorch's default U(+-1/sqrt(fan_in)) for the posterior, prior and stem layers; orthogonal (gain
# sqrt 2, output 0.001) for actor and critic.
fan_avg_init = nn.initializers.variance_scaling(1.0, "fan_avg", "truncated_normal")
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
MULTS = (1, 2, 3, 4, 4)  # the authors' Encoder/Decoder Mults


def image_channels(height: int, width: int, depth: int) -> tuple[int, ...]:
    """Channels of each encoder stage: a stride-1 stage, then one per stride-2 halving (`image_stages`)."""
    return tuple(depth * m for m in MULTS[: image_stages(height, width) + 1])


def _batch_norm(name: str, x: jax.Array, train: bool) -> jax.Array:
    # PyTorch's BatchNorm2d: momentum 0.1 (flax's 0.9), eps 1e-5; batch statistics in training, running
    # ones when acting and imagining (the authors' eval mode).
    return nn.BatchNorm(momentum=0.9, epsilon=1e-5, name=name)(x, use_running_average=not train)


class ImageEncoder(nn.Module):
    """[..., H, W, C] uint8 -> [..., h * w * channels[-1]]: 5 x 5 convolutions, the first of stride 1 and the
    others of stride 2, each with BatchNorm and SiLU (the authors' Encoder; their config names an RMS norm,
    their code builds BatchNorm2d)."""

    depth: int
    conv: str = "patches"

    @nn.compact
    def __call__(self, image: jax.Array, train: bool = False) -> jax.Array:
        lead, (height, width, channels) = image.shape[:-3], image.shape[-3:]
        x = image.astype(jnp.float32).reshape(-1, height, width, channels) / 255.0
        for i, ch in enumerate(image_channels(height, width, self.depth)):
            x = Conv(ch, KERNEL, 1 if i == 0 else 2, self.conv, name=f"conv{i}")(x)
            x = jax.nn.silu(_batch_norm(f"norm{i}", x, train))
        return x.reshape(*lead, -1)


class ImageDecoder(nn.Module):
    """[..., S*K] latent z -> [..., H, W, C] pixels in [0, 1]: a linear layer to the smallest map, stride-2
    transposed convolutions back up, each with BatchNorm and SiLU, and a stride-1 convolution to the image's
    channels through a sigmoid (the authors' Decoder, FinalLayerSigmoid)."""

    shape: tuple[int, int, int]
    depth: int
    conv: str = "patches"

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        height, width, channels = self.shape
        chans = image_channels(height, width, self.depth)
        stages = len(chans) - 1
        small = (height >> stages, width >> stages, chans[-1])
        lead = z.shape[:-1]
        x = nn.Dense(math.prod(small), kernel_init=fan_avg_init, name="space")(z).reshape(-1, *small)
        x = jax.nn.silu(_batch_norm("space_norm", x, train))
        for i in reversed(range(stages)):
            x = ConvTranspose(chans[i], KERNEL, self.conv, name=f"conv{i}")(x)
            x = jax.nn.silu(_batch_norm(f"norm{i}", x, train))
        x = Conv(channels, KERNEL, 1, self.conv, name="out")(x)
        return jax.nn.sigmoid(x).reshape(*lead, height, width, channels)


def orthogonal_init(scale: float):
    """PyTorch's `orthogonal_(w, gain=scale)` for a flax kernel [in, out]: the Q factor (diag(R) > 0) of a
    Gaussian matrix, orthonormal along its shorter side, times `scale`.

    Q comes from classical Gram-Schmidt run twice per column, not from `jnp.linalg.qr` (which flax's
    `orthogonal` calls): under `vmap` (a seed sweep's `init`) jax's batched QR kernel waits on XLA's CPU
    thread pool from inside it and deadlocks a 2-core machine (jaxlib 0.10)."""

    def init(key, shape, dtype=jnp.float32):
        rows, cols = shape
        tall = rows >= cols
        a = jax.random.normal(key, (rows, cols) if tall else (cols, rows), jnp.float32)

        def column(j, q):
            v = a[:, j]
            for _ in range(2):  # "twice is enough" (Giraud et al. 2005): orthogonal to float precision
                v = v - q @ (q.T @ v)
            return q.at[:, j].set(v / jnp.linalg.norm(v))

        q = jax.lax.fori_loop(0, a.shape[1], column, jnp.zeros_like(a))
        return (scale * (q if tall else q.T)).astype(dtype)

    return init


class ActorCriticNet(nn.Module):
    """`layers` x (Dense -> RMSNorm -> SiLU) and a linear output, orthogonally initialised (the authors'
    actor and critic; `layer_init`)."""

    out: int
    units: int
    layers: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.layers):
            x = nn.Dense(self.units, kernel_init=orthogonal_init(math.sqrt(2.0)))(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-6)(x))
        return nn.Dense(self.out, kernel_init=orthogonal_init(1e-3))(x)


class WorldModel(ObservationCoding, nn.Module):
    """Drama's world model (module docstring). Observations are dicts: vector keys, concatenated, go through
    a symlog and an MLP (ours: the authors' model takes images only), image keys, concatenated along
    channels, through `ImageEncoder`; the decoders mirror them from z alone."""

    obs_shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (key, shape) pairs, sorted by key
    deter: int
    stoch: int
    classes: int
    layers: int
    expand: int
    head_dim: int
    ssm_state: int
    ssm_conv: int
    chunk: int
    depth: int
    conv: str
    mlp_units: int
    mlp_layers: int
    head_units: int
    head_layers: int
    num_bins: int
    unimix: float

    def setup(self):
        self.setup_observation_nets(
            self.mlp_units, self.mlp_layers, self.mlp_layers, ImageEncoder, ImageDecoder
        )
        latents = self.stoch * self.classes
        self.post_head = nn.Dense(latents, kernel_init=torch_default_init)
        self.prior_head = nn.Dense(latents, kernel_init=torch_default_init)
        self.stem = nn.Dense(self.deter, kernel_init=torch_default_init)
        self.stem_norm = nn.RMSNorm(epsilon=1e-6)
        self.core = Mamba2(
            self.deter, self.layers, self.expand, self.head_dim, self.ssm_state, self.ssm_conv, self.chunk,
            mlp=False,
        )  # fmt: skip
        self.reward_head = Head(self.num_bins, self.head_units, self.head_layers)
        self.term_head = Head(1, self.head_units, self.head_layers)

    def encode(self, obs: dict[str, jax.Array], train: bool = False) -> jax.Array:
        """{key: [..., *shape]} -> [..., embed] (mbrl_jax/nets/observations.py)."""
        return self.encode_observation(obs, train)

    def decode(self, z: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        """z [..., S, K] -> {key: prediction}: symlog vectors, images as pixels / 255."""
        return self.decode_observation(_flat(z), train)

    def _logits(self, x: jax.Array) -> jax.Array:
        return unimix_logits(x.reshape(*x.shape[:-1], self.stoch, self.classes), self.unimix)

    def post_logits(self, embed: jax.Array) -> jax.Array:
        """q(z_t | o_t): embedding [..., E] -> logits [..., S, K]."""
        return self._logits(self.post_head(embed))

    def prior_logits(self, h: jax.Array) -> jax.Array:
        """p(z_{t+1} | h_t): [..., D] -> logits [..., S, K]."""
        return self._logits(self.prior_head(h))

    def core_input(self, z: jax.Array, action: jax.Array) -> jax.Array:
        """The stem: (z [..., S, K], a [..., A]) -> [..., D]."""
        return jax.nn.silu(self.stem_norm(self.stem(jnp.concatenate([_flat(z), action], -1))))

    def initial_state(self, batch_shape: tuple[int, ...]) -> tuple:
        return self.core.initial_state(batch_shape)

    def sequence(self, z: jax.Array, action: jax.Array, reset: jax.Array) -> jax.Array:
        """h [B, T, D] for z [B, T, S, K], a [B, T, A] (taken at step t) and reset [B, T] (an episode starts
        at t), from a zero state (Mamba-2's parallel form)."""
        state = self.core.initial_state(reset.shape[:1])
        return self.core.sequence(self.core_input(z, action), reset, state)[0]

    def step(self, z: jax.Array, action: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
        """One step of the sequence model: (z_t [B, S, K], a_t [B, A], state) -> (h_t [B, D], state)."""
        return self.core.step(self.core_input(z, action), state)

    def reward_term(self, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        """h [..., D] -> (reward logits [..., bins], termination logit [...])."""
        return self.reward_head(h), self.term_head(h)[..., 0]

    def observe(self, obs: dict, next_action: jax.Array, is_first: jax.Array, key: jax.Array, train: bool):
        """The training pass over windows (leaves [B, L, ...]); next_action [B, L-1, A] is the action taken at
        steps 0..L-2. Returns the posterior logits [B, L, S, K], the decoder's predictions of every o_t, and
        for t = 0..L-2: h_t [B, L-1, D], prior logits of z_{t+1}, reward logits and termination logits."""
        post = self.post_logits(self.encode(obs, train))
        z = straight_through_onehot_sample(key, post)
        h = self.sequence(z[:, :-1], next_action, is_first[:, :-1])
        reward, term = self.reward_term(h)
        return {
            "post": post,
            "obs_pred": self.decode(z, train),
            "h": h,
            "prior": self.prior_logits(h),
            "reward": reward,
            "term": term,
        }

    def init_all(self, obs: dict, action: jax.Array, key: jax.Array):
        """Touches every layer (for `init`): obs leaves [B, 2, ...], action [B, 1, A]."""
        is_first = jnp.zeros(action.shape[:1] + (2,), bool)
        return self.observe(obs, action, is_first, key, train=False)


def _flat(z: jax.Array) -> jax.Array:
    return z.reshape(*z.shape[:-2], -1)


# ---- the actor's input normalisation (the authors' VecNormalize) -------------------------------------------


@struct.dataclass
class FeatNorm:
    """Running mean and variance of the actor's input features (Chan et al.'s parallel update, as the
    authors' RunningMeanStd)."""

    mean: jax.Array  # [F]
    var: jax.Array  # [F]
    count: jax.Array  # [] float32


def feat_norm_init(size: int) -> FeatNorm:
    return FeatNorm(jnp.zeros(size), jnp.ones(size), jnp.asarray(1e-4, jnp.float32))


def update_feat_norm(norm: FeatNorm, x: jax.Array) -> FeatNorm:
    """Merges the statistics of x [..., F] (every leading entry one sample) into `norm`."""
    flat = sg(x).reshape(-1, x.shape[-1])
    count = jnp.asarray(flat.shape[0], jnp.float32)
    mean, var = flat.mean(0), flat.var(0)
    delta = mean - norm.mean
    total = norm.count + count
    m2 = norm.var * norm.count + var * count + delta**2 * norm.count * count / total
    return FeatNorm(norm.mean + delta * count / total, m2 / total, total)


def normalise_feat(norm: FeatNorm, x: jax.Array, clip: float) -> jax.Array:
    return jnp.clip((x - norm.mean) / jnp.sqrt(norm.var + 1e-8), -clip, clip)


# ---- state and network record ------------------------------------------------------------------------------


@struct.dataclass
class DramaParams:
    """The trained parameters: world model, actor, critic (two optimisers: world model; actor and critic)."""

    wm: Any  # the WorldModel's "params" collection
    actor: Any
    critic: Any


@struct.dataclass
class DramaState:
    params: DramaParams
    wm_stats: Any  # the image networks' BatchNorm running statistics; None without image observations
    wm_opt: optax.OptState
    ac_opt: optax.OptState
    slow_critic: Any  # EMA of the critic parameters
    return_norm: ReturnNorm
    feat_norm: FeatNorm


@struct.dataclass
class ActCarry:
    """The policy's context per env: the last `act_context` steps of the episode before the current one
    (posterior logits and the action taken there, oldest first, the newest `count` valid), and the current
    observation's posterior logits, which join the context with the action taken at it."""

    logits: jax.Array  # [n, C, S, K]
    action: jax.Array  # [n, C, A]
    count: jax.Array  # [n] int32
    pending: jax.Array  # [n, S, K]
    has_pending: jax.Array  # [n] bool


@dataclasses.dataclass(frozen=True)
class Networks:
    config: Config
    spec: EnvSpec
    world_model: WorldModel
    actor: ActorCriticNet
    critic: ActorCriticNet

    @property
    def bins(self) -> jax.Array:
        return twohot_bins(self.config.drama.num_bins)

    @property
    def feat_dim(self) -> int:
        d = self.config.drama
        return d.stoch * d.classes + d.deter

    def wm_variables(self, wm_params, wm_stats) -> dict:
        return {"params": wm_params} if wm_stats is None else {"params": wm_params, "batch_stats": wm_stats}

    def policy(self, actor_params, feat_norm: FeatNorm, feat: jax.Array):
        """feat [..., F] -> a one-hot categorical over actions [..., A]."""
        d = self.config.drama
        logits = self.actor.apply(actor_params, normalise_feat(feat_norm, feat, d.feat_clip))
        return onehot_categorical(logits, d.actor_unimix)


def make_networks(config: Config, spec: EnvSpec) -> Networks:
    check_drama(config, spec)
    d = config.drama
    world_model = WorldModel(
        obs_shapes=tuple(sorted(spec.obs_shapes.items())),
        deter=d.deter,
        stoch=d.stoch,
        classes=d.classes,
        layers=d.layers,
        expand=d.expand,
        head_dim=d.head_dim,
        ssm_state=d.ssm_state,
        ssm_conv=d.ssm_conv,
        chunk=d.chunk,
        depth=d.depth,
        conv=conv_form(d.conv),
        mlp_units=d.mlp_units,
        mlp_layers=d.mlp_layers,
        head_units=d.head_units,
        head_layers=d.head_layers,
        num_bins=d.num_bins,
        unimix=d.unimix,
    )
    actor = ActorCriticNet(spec.action_dim, d.actor_units, d.ac_layers)
    critic = ActorCriticNet(d.num_bins, d.critic_units, d.ac_layers)
    return Networks(config, spec, world_model, actor, critic)


def laprop(lr: float, eps: float, clip: float, warmup: int) -> optax.GradientTransformation:
    """The authors' optimiser: clipping by the global gradient norm, LaProp (betas 0.9, 0.999; the RMS
    normalisation before the momentum) and a linear warm-up that starts at lr / warmup (pytorch_warmup's
    LinearWarmup)."""
    if warmup > 0:
        schedule = lambda count: lr * jnp.minimum(1.0, (count + 1.0) / warmup)  # noqa: E731
    else:
        schedule = optax.constant_schedule(lr)
    return optax.chain(
        optax.clip_by_global_norm(clip),
        optax.scale_by_rms(decay=0.999, eps=eps, eps_in_sqrt=False, bias_correction=True),
        optax.ema(0.9, debias=True),
        optax.scale_by_learning_rate(schedule),
    )


# ---- losses ------------------------------------------------------------------------------------------------


def transitions(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """A replayed window (leaves [B, L, ...]) as the authors' transitions t = 0..L-2: the action taken at o_t
    [B, L-1, A], the reward and termination that followed [B, L-1], and whether t -> t+1 is a transition of
    one episode [B, L-1] (not when o_{t+1} starts an episode)."""
    valid = 1.0 - batch["is_first"][:, 1:].astype(jnp.float32)
    terminal = batch["is_terminal"][:, 1:].astype(jnp.float32)
    return batch["action"][:, 1:], batch["reward"][:, 1:], terminal, valid


def world_model_loss(
    nets: Networks, wm_params, wm_stats, batch: dict, key: jax.Array
) -> tuple[jax.Array, tuple[Any, dict]]:
    """The authors' world-model loss on replayed windows (batch leaves [B, L, ...]):
    rec + rew + term + loss_dyn max(free, KL(sg(q) || p)) + loss_rep max(free, KL(q || sg(p))), where the
    KLs (summed over latents) are averaged over the batch's transitions before the free bits apply, the
    reconstruction is summed over each observation's dims and averaged over the L steps, and reward (two-hot)
    and termination (binary cross-entropy) are averaged over the transitions. Returns the loss and (the new
    BatchNorm statistics, metrics)."""
    d, wm = nets.config.drama, nets.world_model
    next_action, reward, terminal, valid = transitions(batch)
    variables = nets.wm_variables(wm_params, wm_stats)
    args = (batch["obs"], next_action, batch["is_first"], key, True)
    if wm_stats is None:
        out, stats = wm.apply(variables, *args, method=WorldModel.observe), None
    else:
        out, mutated = wm.apply(variables, *args, method=WorldModel.observe, mutable=["batch_stats"])
        stats = mutated["batch_stats"]
    count = jnp.maximum(valid.sum(), 1.0)
    mean = lambda x: jnp.sum(x * valid) / count  # noqa: E731  (over the transitions)
    rec_by_key = reconstruction_loss(wm, out["obs_pred"], batch["obs"])
    rec = sum(rec_by_key.values()).mean()
    rew = mean(-twohot_log_prob(out["reward"], nets.bins, reward))
    term = mean(-bernoulli_log_prob(out["term"], terminal))
    post = out["post"][:, 1:]
    dyn_kl = mean(categorical_kl(sg(post), out["prior"]))
    rep_kl = mean(categorical_kl(post, sg(out["prior"])))
    dyn = jnp.maximum(dyn_kl, d.free_bits)
    rep = jnp.maximum(rep_kl, d.free_bits)
    loss = rec + rew + term + d.loss_dyn * dyn + d.loss_rep * rep
    metrics = {
        "loss_model": loss,
        "loss_rec": rec,
        "loss_rew": rew,
        "loss_term": term,
        "loss_dyn": dyn,
        "loss_rep": rep,
        "kl": dyn_kl,
    }
    if len(rec_by_key) > 1:
        metrics.update({f"loss_rec_{k}": v.mean() for k, v in rec_by_key.items()})
    return loss, (stats, metrics)


def imagine(
    nets: Networks, params: DramaParams, wm_stats, feat_norm: FeatNorm, windows: dict, key: jax.Array
) -> tuple[dict, jax.Array]:
    """The authors' `imagine_data2` from sampled windows (leaves [N, K, ...], K = replay.imag_context): the
    sequence model reads the K - 1 transitions (z_t, a_t) of the window, z_t posterior samples, and the
    first imagined latent is a prior sample from the last h; then `imag_horizon` steps of the policy.

    Returns (trajectory, start weights [N]); the trajectory, time-major and without gradient:
      feat [H+1, N, F]: (z_i, h_{i-1}), the latent and the h that predicted it;
      action [H, N, A]: a_i ~ policy(feat_i);
      reward [H, N], term [H, N] in {0, 1}: read from h_{i-1}, so those of the step INTO state i (the first
      one is the window's last real transition), as the authors' code indexes them.
    A start whose last window step opens an episode (its transition crosses episodes) weighs 0.
    """
    d, wm = nets.config.drama, nets.world_model
    variables = nets.wm_variables(params.wm, wm_stats)
    k_post, k_start, k_roll = jax.random.split(key, 3)
    context = jax.tree.map(lambda x: x[:, :-1], windows["obs"])  # the last observation is not read
    embed = wm.apply(variables, context, method=WorldModel.encode)
    z = straight_through_onehot_sample(k_post, wm.apply(variables, embed, method=WorldModel.post_logits))
    n = z.shape[0]

    def observe_step(state, inputs):
        z_t, a_t, first_t = inputs
        keep = 1.0 - first_t.astype(jnp.float32)
        state = jax.tree.map(lambda x: x * keep.reshape(-1, *[1] * (x.ndim - 1)), state)
        h, state = wm.apply(variables, z_t, a_t, state, method=WorldModel.step)
        return state, h

    swap = lambda x: jnp.swapaxes(x, 0, 1)  # noqa: E731
    state = wm.apply(variables, (n,), method=WorldModel.initial_state)
    inputs = (swap(z), swap(windows["action"][:, 1:]), swap(windows["is_first"][:, :-1]))
    state, hs = jax.lax.scan(observe_step, state, inputs)
    h = hs[-1]
    z0 = straight_through_onehot_sample(k_start, wm.apply(variables, h, method=WorldModel.prior_logits))

    def rollout_step(carry, key_t):
        z_i, h_prev, state = carry
        k_act, k_dyn = jax.random.split(key_t)
        feat = jnp.concatenate([_flat(z_i), h_prev], -1)
        action = nets.policy(params.actor, feat_norm, feat).sample(seed=k_act)
        h_i, state = wm.apply(variables, z_i, action, state, method=WorldModel.step)
        logits = wm.apply(variables, h_i, method=WorldModel.prior_logits)
        z_next = straight_through_onehot_sample(k_dyn, logits)
        return (z_next, h_i, state), (feat, action, h_prev)

    keys = jax.random.split(k_roll, d.imag_horizon)
    (z_last, h_last, _), (feats, actions, h_in) = jax.lax.scan(rollout_step, (z0, h, state), keys)
    feat = jnp.concatenate([feats, jnp.concatenate([_flat(z_last), h_last], -1)[None]], 0)
    reward_logits, term_logit = wm.apply(variables, h_in, method=WorldModel.reward_term)
    traj = {
        "feat": feat,
        "action": actions,
        "reward": twohot_mean(reward_logits, nets.bins),
        "term": (term_logit > 0).astype(jnp.float32),  # the authors' hard termination
    }
    weight = 1.0 - windows["is_first"][:, -1].astype(jnp.float32)
    return jax.tree.map(sg, traj), sg(weight)


def drama_lambda_returns(
    rewards: jax.Array, values: jax.Array, terminal: jax.Array, gamma: float, lambda_: float
) -> jax.Array:
    """The authors' `calc_lambda_return`, time-major: rewards and terminal [H, ...], values [H+1, ...] ->
    returns [H, ...] with R_H = values[H] and

        R_t = rewards[t] + gamma (1 - terminal[t]) ((1 - lambda) values[t] + lambda R_{t+1}).

    Unlike DreamerV3's (mbrl_jax.returns.lambda_returns) the one-step bootstrap is values[t], the state's own
    value; with `imagine`'s rewards (those of the step into state t) R_t is the return from that reward on."""

    def step(next_return, inputs):
        r, d, v = inputs
        ret = r + gamma * (1.0 - d) * ((1.0 - lambda_) * v + lambda_ * next_return)
        return ret, ret

    _, returns = jax.lax.scan(step, values[-1], (rewards, terminal, values[:-1]), reverse=True)
    return returns


def actor_critic_loss(
    nets: Networks,
    actor_params,
    critic_params,
    traj: dict,
    weight: jax.Array,
    slow_critic,
    return_norm: ReturnNorm,
    feat_norm: FeatNorm,
) -> tuple[jax.Array, tuple[ReturnNorm, dict]]:
    """The authors' `ActorCriticAgent.update` on an imagined trajectory: the critic regresses (two-hot) the
    lambda returns of its own values and those of the slow critic's values; the actor's REINFORCE advantage
    (R - v) is divided by max(1, EMA(P95) - EMA(P5)) of the returns; an entropy bonus. Every term is a mean
    over the H x N imagined steps, each start weighted by `weight` [N]. Returns the loss and (the updated
    return norm, metrics)."""
    d, bins = nets.config.drama, nets.bins
    feat, actions = traj["feat"], traj["action"]
    raw_value = nets.critic.apply(critic_params, feat)  # [H+1, N, bins]
    value = twohot_mean(raw_value, bins)
    slow_value = twohot_mean(nets.critic.apply(slow_critic, feat), bins)
    returns = drama_lambda_returns(traj["reward"], sg(value), traj["term"], d.gamma, d.return_lambda)
    slow_returns = drama_lambda_returns(traj["reward"], slow_value, traj["term"], d.gamma, d.return_lambda)
    new_norm = update_return_norm(return_norm, returns, d.retnorm_rate)
    scale = return_scale(new_norm)
    advantage = sg((returns - value[:-1]) / scale)
    dist = nets.policy(actor_params, feat_norm, feat[:-1])
    log_prob = dist.log_prob(sg(actions))
    entropy = dist.entropy()
    w = weight[None]
    mean = lambda x: jnp.mean(w * x)  # noqa: E731
    policy_loss = -mean(log_prob * advantage)
    value_loss = mean(-twohot_log_prob(raw_value[:-1], bins, sg(returns)))
    slow_loss = mean(-twohot_log_prob(raw_value[:-1], bins, sg(slow_returns)))
    entropy_mean = mean(entropy)
    loss = policy_loss + value_loss + slow_loss - d.actor_entropy * entropy_mean
    metrics = {
        "loss_actor": policy_loss,
        "loss_critic": value_loss,
        "loss_slow_critic": slow_loss,
        "actor_entropy": entropy_mean,
        "imag_return": returns.mean(),
        "imag_term": traj["term"].mean(),
        "return_scale": scale,
        "value": value.mean(),
    }
    return loss, (new_norm, metrics)


# ---- checks, memory ----------------------------------------------------------------------------------------


def check_drama(config: Config, spec: EnvSpec) -> None:
    """Raises ConfigError for settings or an env this agent cannot take (run in config validation)."""
    r = config.replay
    if not spec.discrete:
        raise ConfigError(
            f"env.name={spec.name!r} has continuous actions; agent='drama' has the authors' categorical "
            "policy, for discrete actions only (use agent=dreamer or agent=tdmpc2 for this env)"
        )
    if r.sampler != "frequency":
        raise ConfigError(
            f"replay.sampler={r.sampler!r}: agent='drama' imagines from windows the frequency sampler draws "
            "for it; set replay.sampler=frequency (as --preset drama does)"
        )
    if r.context:
        raise ConfigError(
            "replay.context=true starts windows from a stored latent; agent='drama' stores none (its windows "
            "start from zeros): set replay.context=false (as --preset drama does)"
        )
    for name, value in (("batch_length", r.batch_length), ("imag_context", r.imag_context)):
        if value < 2:
            raise ConfigError(
                f"replay.{name}={value}: agent='drama' needs at least 2 steps (one transition) per window"
            )
    for key, shape in spec.obs_shapes.items():
        if len(shape) not in (1, 3):
            raise ConfigError(
                f"env.name={spec.name!r} has observation {key!r} of shape {shape}; agent='drama' takes "
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
    """float32 values one update keeps per replayed step for its backward passes (mbrl_jax/memory.py): the
    world model's step (encoder and decoder, stem, Mamba-2 layers and their chunk products, heads), and the
    imagination's rollouts (imag_batch of them, spread over the replayed steps). For the drama preset on
    CartPole: 3.18 GiB against XLA's 2.96 GiB of temporaries (1.13 against 0.98 with imag_batch=256)."""
    d, r = config.drama, config.replay
    latents = d.stoch * d.classes
    inner, heads = d.expand * d.deter, d.expand * d.deter // d.head_dim
    layer = 3 * (2 * inner + 2 * d.ssm_state + heads) + 8 * inner + 4 * d.deter + 3 * d.chunk * heads
    vectors = sum(s[0] for s in obs_shapes.values() if len(s) == 1)
    coder = 6 * d.mlp_units * d.mlp_layers + 4 * vectors if vectors else 0
    images = [s for s in obs_shapes.values() if len(s) == 3]
    if images:
        height, width = images[0][:2]
        pixels = sum(h * w * c for h, w, c in images)
        sides = [(height >> i) * (width >> i) for i in range(image_stages(height, width) + 1)]
        maps = sum(s * c for s, c in zip(sides, image_channels(height, width, d.depth), strict=True))
        coder += 20 * maps + 4 * pixels
        if conv_form(d.conv) == "patches":  # every layer's patch matrix (mbrl_jax/nets/image.py)
            coder += 2 * KERNEL * KERNEL * maps
    wm_step = coder + 4 * d.deter + d.layers * layer + 8 * latents + 6 * d.num_bins + 6 * d.head_units
    # per imagined step: actor, critic and slow critic layers, forward and backward, two-hot values, features;
    # per rollout: the SSM states and their updates of each layer
    ac_step = (
        5 * d.ac_layers * (d.actor_units + 2 * d.critic_units) + 8 * d.num_bins + 6 * (latents + d.deter)
    )
    rollout = (d.imag_horizon + 1) * ac_step + 6 * d.layers * inner * d.ssm_state
    return wm_step + -(-r.imag_batch * rollout // (r.batch_size * r.batch_length))


# ---- the agent ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Drama(Agent):
    """The `Agent` functions, plus the networks they use."""

    networks: Networks


def make_drama(config: Config, spec: EnvSpec) -> Drama:
    nets = make_networks(config, spec)
    d, wm = config.drama, nets.world_model
    A, C = spec.action_dim, d.act_context
    wm_opt = laprop(d.wm_lr, d.wm_eps, d.wm_clip, d.wm_warmup)
    ac_opt = laprop(d.ac_lr, d.ac_eps, d.ac_clip, d.ac_warmup)
    example_obs = {k: jnp.zeros((1, 2, *s), obs_dtype(s)) for k, s in spec.obs_shapes.items()}

    def init(key) -> DramaState:
        k_wm, k_actor, k_critic, k_sample = jax.random.split(key, 4)
        variables = wm.init(k_wm, example_obs, jnp.zeros((1, 1, A)), k_sample, method=WorldModel.init_all)
        params = DramaParams(
            wm=variables["params"],
            actor=nets.actor.init(k_actor, jnp.zeros((1, nets.feat_dim))),
            critic=nets.critic.init(k_critic, jnp.zeros((1, nets.feat_dim))),
        )
        return DramaState(
            params=params,
            wm_stats=variables.get("batch_stats"),
            wm_opt=wm_opt.init(params.wm),
            ac_opt=ac_opt.init((params.actor, params.critic)),
            slow_critic=params.critic,
            return_norm=return_norm_init(),
            feat_norm=feat_norm_init(nets.feat_dim),
        )

    def initial_carry(n: int) -> ActCarry:
        return ActCarry(
            logits=jnp.zeros((n, C, d.stoch, d.classes)),
            action=jnp.zeros((n, C, A)),
            count=jnp.zeros((n,), jnp.int32),
            pending=jnp.zeros((n, d.stoch, d.classes)),
            has_pending=jnp.zeros((n,), bool),
        )

    def replay_context(carry: ActCarry) -> dict:
        return {}

    def act(state: DramaState, carry: ActCarry, obs, prev_action, is_first, key, mode: bool = False):
        """As the authors' training loop: the sequence model re-reads the episode's last `act_context`
        (observation, action) pairs before the current observation, and the policy acts on (a prior sample
        of the current step's latent, h); the current observation joins the context at the next step. The
        first step of an episode (no context yet) takes a uniform random action."""
        k_ctx, k_prior, k_act, k_rand = jax.random.split(key, 4)
        variables = nets.wm_variables(state.params.wm, state.wm_stats)
        append = carry.has_pending & ~is_first
        shift = lambda hist, new: jnp.concatenate([hist[:, 1:], new[:, None]], 1)  # noqa: E731
        pick = lambda a, b: jnp.where(append.reshape(-1, *[1] * (a.ndim - 1)), a, b)  # noqa: E731
        logits = pick(shift(carry.logits, carry.pending), carry.logits)
        actions = pick(shift(carry.action, prev_action), carry.action)
        count = jnp.where(is_first, 0, jnp.minimum(carry.count + append.astype(jnp.int32), C))
        z = straight_through_onehot_sample(k_ctx, logits)
        reset = jnp.arange(C)[None] == (C - count)[:, None]  # nothing before the episode's first held step
        h = wm.apply(variables, z, actions, reset, method=WorldModel.sequence)[:, -1]
        z_next = straight_through_onehot_sample(
            k_prior, wm.apply(variables, h, method=WorldModel.prior_logits)
        )
        dist = nets.policy(state.params.actor, state.feat_norm, jnp.concatenate([_flat(z_next), h], -1))
        action = dist.mode() if mode else dist.sample(seed=k_act)
        random = jax.nn.one_hot(jax.random.randint(k_rand, count.shape, 0, A), A)
        action = jnp.where((count > 0)[:, None], action, random)
        embed = wm.apply(variables, obs, method=WorldModel.encode)
        pending = wm.apply(variables, embed, method=WorldModel.post_logits)
        carry = ActCarry(logits, actions, count, pending, jnp.ones_like(carry.has_pending))
        return action, carry

    def behaviour_loss(ac_params, traj, weight, slow_critic, return_norm, feat_norm):
        actor_params, critic_params = ac_params
        return actor_critic_loss(
            nets, actor_params, critic_params, traj, weight, slow_critic, return_norm, feat_norm
        )

    def learn(state: DramaState, batch: dict, key) -> tuple[DramaState, dict, dict]:
        """One world-model update on the windows batch leaves [B, L, ...], then, as the authors' loop, one
        actor-critic update on imagination from `batch["imag"]` with the updated world model."""
        k_wm, k_imag = jax.random.split(key)
        batch = dict(batch)
        windows = batch.pop("imag")
        params = state.params
        (_, (stats, wm_metrics)), wm_grads = jax.value_and_grad(world_model_loss, argnums=1, has_aux=True)(
            nets, params.wm, state.wm_stats, batch, k_wm
        )
        updates, wm_opt_state = wm_opt.update(wm_grads, state.wm_opt, params.wm)
        params = params.replace(wm=optax.apply_updates(params.wm, updates))
        traj, weight = imagine(nets, params, stats, state.feat_norm, windows, k_imag)
        feat_norm = update_feat_norm(state.feat_norm, traj["feat"])
        ac_params = (params.actor, params.critic)
        (_, (return_norm, ac_metrics)), ac_grads = jax.value_and_grad(behaviour_loss, has_aux=True)(
            ac_params, traj, weight, state.slow_critic, state.return_norm, feat_norm
        )
        updates, ac_opt_state = ac_opt.update(ac_grads, state.ac_opt, ac_params)
        actor, critic = optax.apply_updates(ac_params, updates)
        params = params.replace(actor=actor, critic=critic)
        slow = optax.incremental_update(critic, state.slow_critic, d.slow_critic_rate)
        metrics = {
            **wm_metrics,
            **ac_metrics,
            "imag_weight": weight.mean(),
            "grad_norm_model": optax.tree.norm(wm_grads),
            "grad_norm_ac": optax.tree.norm(ac_grads),
        }
        new_state = DramaState(params, stats, wm_opt_state, ac_opt_state, slow, return_norm, feat_norm)
        return new_state, metrics, {}

    return Drama(
        init=init,
        initial_carry=initial_carry,
        act=act,
        learn=learn,
        replay_context=replay_context,
        networks=nets,
    )


__all__ = [
    "DRAMA_PRESETS",
    "ActCarry",
    "Drama",
    "DramaConfig",
    "DramaParams",
    "DramaState",
    "FeatNorm",
    "Networks",
    "WorldModel",
    "actor_critic_loss",
    "activation_floats",
    "check_drama",
    "drama_lambda_returns",
    "imagine",
    "make_drama",
    "make_networks",
    "world_model_loss",
]
