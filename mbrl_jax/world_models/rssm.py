"""DreamerV3's world model: encoder, RSSM (block GRU + categorical latents), decoder, reward and
continue heads.

Networks are flax modules; the loops over time (`observe`, `imagine`) are plain functions of the parameters,
so they compose with `lax.scan`, `jit` and `vmap` without module-level magic.

Inside those loops the recurrent state h is carried group-major, [g, B, D/g] (see `BlockGRU`), and every
layer that reads it takes it in that layout, so h is converted from and to [B, D] once per sequence rather
than twice per step. `Latent.deter` is [..., D] wherever a Latent leaves this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct

from mbrl_jax.errors import ConfigError, did_you_mean
from mbrl_jax.nets.distributions import straight_through_onehot_sample, symlog, unimix_logits
from mbrl_jax.nets.image import ImageDecoder, ImageEncoder, image_target
from mbrl_jax.nets.layers import MLP, Head, dense_init
from mbrl_jax.nets.observations import ObservationCoding
from mbrl_jax.settings import (
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    Composite,
    RegisteredGroups,
    one_of,
    registered,
    setting,
)
from mbrl_jax.world_models.backbone import BACKBONES, make_backbone


@dataclasses.dataclass(frozen=True)
class WorldModelConfig(Composite):
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
        resumable=True,
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
    groups: RegisteredGroups = registered("wm")  # each backbone's settings: wm.gru, wm.mamba, ...

    def check(self, path: str) -> None:
        if self.backbone not in BACKBONES:
            raise ConfigError(
                f"{path}.backbone={self.backbone!r} is not known{did_you_mean(self.backbone, BACKBONES)}; "
                f"allowed: {', '.join(map(repr, BACKBONES))}"
            )
        for name, value in self.groups.items:  # another backbone's settings would be ignored
            if name == self.backbone:
                continue
            for field in dataclasses.fields(value):
                if getattr(value, field.name) != field.default:
                    raise ConfigError(
                        f"{path}.{name}.{field.name}={getattr(value, field.name)!r} is a setting of backbone "
                        f"{name!r}; {path}.backbone={self.backbone!r} would ignore it: leave it at "
                        f"{field.default!r}"
                    )
        entry = BACKBONES[self.backbone]
        if entry.check is not None:
            entry.check(self, path)


def check_replay_context(config: Any) -> None:
    """The replay stores the latent h of a step-by-step backbone; a parallel one keeps a larger state, so its
    windows start from zeros. For agents that read the world model, from their checks."""
    if config.replay.context and make_backbone(config.wm).parallel:
        raise ConfigError(
            f"replay.context=true stores the latent h with each step; wm.backbone={config.wm.backbone!r} "
            "keeps a larger recurrent state (a parallel backbone), so its windows start from zeros: set "
            "replay.context=false"
        )


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


@struct.dataclass
class Latent:
    """Model state at one time step (any leading batch shape)."""

    deter: jax.Array  # [..., D] recurrent state h
    stoch: jax.Array  # [..., S, K] one-hot sample z (straight-through)
    logits: jax.Array  # [..., S, K] log-probabilities of the distribution z was drawn from (unimix applied)
    # The backbone's recurrent state where it is more than `deter` (parallel backbones such as Mamba: conv
    # windows and SSM states, leaves [..., ...]); None for the GRU, whose state is deter itself.
    core: Any = None

    @property
    def feat(self) -> jax.Array:
        """[..., D + S*K]: what the heads, actor and critic read."""
        return jnp.concatenate([self.deter, self.stoch.reshape(*self.stoch.shape[:-2], -1)], -1)


def zeros_latent(batch_shape: tuple[int, ...], deter: int, stoch: int, classes: int) -> Latent:
    z = jnp.zeros((*batch_shape, stoch, classes))
    return Latent(jnp.zeros((*batch_shape, deter)), z, z)


def mask_latent(latent: Latent, keep: jax.Array) -> Latent:
    """Zeroes the state where keep is 0 (episode starts). keep: [...] matching the batch shape."""
    return jax.tree.map(lambda x: x * keep.reshape(keep.shape + (1,) * (x.ndim - keep.ndim)), latent)


# Inside the loops over time the latent's deter is held in the backbone's own state layout (`loop` latents:
# group-major [g, B, D/g] for the block GRU), converted from and to [B, D] once per sequence.


def mask_loop(latent: Latent, keep: jax.Array) -> Latent:
    """`mask_latent` of a loop latent (any deter layout whose last two axes are [B, d]); keep: [B]."""
    return Latent(
        latent.deter * keep[:, None],
        *(x * keep[:, None, None] for x in (latent.stoch, latent.logits)),
        jax.tree.map(lambda x: x * keep.reshape(-1, *[1] * (x.ndim - 1)), latent.core),
    )


class WorldModel(ObservationCoding, nn.Module):
    """Encoder, RSSM and heads around a sequence backbone `core` (mbrl_jax/world_models/backbone.py), whose
    state the prior and posterior layers read in the backbone's layout.

    Observations are dicts (mbrl_jax/envs/base.py), encoded and decoded as DreamerV3 does
    (`ObservationCoding`, mbrl_jax/nets/observations.py) with DreamerV3's image networks
    (mbrl_jax/nets/image.py); the decoder reads (h, z).

    A parallel backbone (`core.parallel`: Mamba, as in Drama and STORM) changes two things: the posterior
    reads the observation's embedding alone, so every z_t of a window is known before the backbone runs,
    and the backbone then runs over the whole window at once on inputs (z_{t-1}, a_{t-1})
    (`observe_parallel`), one step at a time (`core.step`) when acting and imagining. The prior reads h_t
    as with the GRU."""

    core: nn.Module  # the backbone, from `make_backbone(config.wm)`; its parameters are "core"
    obs_shapes: tuple[tuple[str, tuple[int, ...]], ...]  # (key, shape) pairs, sorted by key
    depth: int  # image encoder / decoder channels of the first stage / 2 (reference `depth`)
    conv: str  # the image convolutions' form, "patches" or "xla" (mbrl_jax/nets/image.py, `conv_form`)
    deter: int
    hidden: int
    stoch: int
    classes: int
    units: int
    enc_layers: int
    dec_layers: int
    head_layers: int
    num_bins: int
    unimix: float

    def setup(self):
        self.setup_observation_nets(self.units, self.enc_layers, self.dec_layers, ImageEncoder, ImageDecoder)
        if self.parallel:
            self.core_in = nn.Dense(self.deter, kernel_init=dense_init)
        self.prior_net = MLP(self.hidden, 2)  # "imglayers" = 2 in the reference
        self.prior_out = nn.Dense(self.stoch * self.classes, kernel_init=dense_init)
        self.post_net = MLP(self.hidden, 1)  # "obslayers" = 1
        self.post_out = nn.Dense(self.stoch * self.classes, kernel_init=dense_init)
        self.reward_head = Head(self.num_bins, self.units, self.head_layers, out_scale=0.0)
        self.cont_head = Head(1, self.units, self.head_layers)

    @property
    def parallel(self) -> bool:
        return self.core.parallel

    def zeros(self, batch_shape: tuple[int, ...]) -> Latent:
        """The latent before an episode's first step (with the backbone's zero state, if it has one)."""
        latent = zeros_latent(batch_shape, self.deter, self.stoch, self.classes)
        return latent.replace(core=self.core.initial_state(batch_shape)) if self.parallel else latent

    def encode(self, obs: dict[str, jax.Array]) -> jax.Array:
        """{key: [..., *shape]} -> [..., embed] (mbrl_jax/nets/observations.py)."""
        return self.encode_observation(obs)

    def decode(self, feat: jax.Array) -> dict[str, jax.Array]:
        """feat [..., F] -> {key: prediction}: symlog vectors, images as pixels / 255 in [0, 1]."""
        return self.decode_observation(feat)

    def _logits(self, x: jax.Array) -> jax.Array:
        x = x.reshape(*x.shape[:-1], self.stoch, self.classes)
        return unimix_logits(x, self.unimix)

    def img_step(self, prev: Latent, action: jax.Array, key: jax.Array) -> Latent:
        """Prior step: p(z_t | h_t), h_t = GRU(h_{t-1}, z_{t-1}, a_{t-1}). prev: [B] leaves, action: [B, A]
        (deter [B, D] in and out)."""
        return self.from_loop(self.img_step_loop(self.to_loop(prev), action, key))

    def obs_step(self, prev: Latent, action: jax.Array, embed: jax.Array, key: jax.Array):
        """Posterior step: q(z_t | h_t, e_t). Returns (posterior latent, prior logits [B, S, K])."""
        post, prior_logits = self.obs_step_loop(self.to_loop(prev), action, embed, key)
        return self.from_loop(post), prior_logits

    def to_loop(self, latent: Latent) -> Latent:
        """Latent (deter [..., D]) -> loop latent (deter in the backbone's state layout)."""
        return latent.replace(deter=self.core.to_state(latent.deter))

    def from_loop(self, latent: Latent) -> Latent:
        """Loop latent -> Latent with deter [..., D]."""
        return latent.replace(deter=self.core.to_deter(latent.deter))

    def loop_feat(self, latent: Latent) -> jax.Array:
        """`Latent.feat` of a loop latent, [B, D + S*K]."""
        return self.from_loop(latent).feat

    def _read_state(self, net: nn.Module, state: jax.Array, rest: jax.Array | None = None) -> jax.Array:
        """net(concat(h, rest)) with h read in the backbone's layout (grouped backbones: per group)."""
        if self.core.grouped:
            return net(rest, grouped=state)
        return net(state if rest is None else jnp.concatenate([state, rest], -1))

    def _core_input(self, stoch: jax.Array, action: jax.Array) -> jax.Array:
        """(z [..., S, K], a [..., A]) -> a parallel backbone's input [..., deter]."""
        action = action / jax.lax.stop_gradient(jnp.maximum(1.0, jnp.abs(action)))
        return self.core_in(jnp.concatenate([stoch.reshape(*stoch.shape[:-2], -1), action], -1))

    def _advance(self, prev: Latent, action: jax.Array) -> tuple[jax.Array, Any]:
        """h_t (in the loop layout) and the backbone's new state from (h_{t-1}, z_{t-1}, a_{t-1})."""
        if self.parallel:
            return self.core.step(self._core_input(prev.stoch, action), prev.core)
        return self.core(prev.deter, prev.stoch.reshape(*prev.stoch.shape[:-2], -1), action), None

    def _prior_logits(self, deter: jax.Array) -> jax.Array:
        return self._logits(self.prior_out(self._read_state(self.prior_net, deter)))

    def _post_logits(self, deter: jax.Array | None, embed: jax.Array) -> jax.Array:
        if self.parallel:  # the observation alone (Drama, STORM)
            return self._logits(self.post_out(self.post_net(embed)))
        return self._logits(self.post_out(self._read_state(self.post_net, deter, embed)))

    def img_step_loop(self, prev: Latent, action: jax.Array, key: jax.Array) -> Latent:
        """`img_step` from and to a loop latent: the step of a loop over time."""
        deter, core = self._advance(prev, action)
        logits = self._prior_logits(deter)
        return Latent(deter, straight_through_onehot_sample(key, logits), logits, core)

    def obs_step_loop(self, prev: Latent, action: jax.Array, embed: jax.Array, key: jax.Array):
        """`obs_step` from and to a loop latent. The posterior net reads concat(h_t, e_t) (GRU) or e_t."""
        prior = self.img_step_loop(prev, action, key)  # the prior's sample is unused; XLA removes it
        logits = self._post_logits(prior.deter, embed)
        post = Latent(prior.deter, straight_through_onehot_sample(key, logits), logits, prior.core)
        return post, prior.logits

    def observe_parallel(self, embed, prev_action, is_first, keys, start: Latent):
        """`observe` for a parallel backbone, the whole window at once (leaves [B, T, ...]; keys [T])."""
        logits = self._post_logits(None, embed)  # [B, T, S, K]
        stoch = jax.vmap(straight_through_onehot_sample, in_axes=(0, 1), out_axes=1)(keys, logits)
        keep = (1.0 - is_first.astype(jnp.float32))[..., None]
        prev_stoch = jnp.concatenate([start.stoch[:, None], stoch[:, :-1]], 1) * keep[..., None]
        inputs = self._core_input(prev_stoch, prev_action * keep)
        deter, states = self.core.sequence(inputs, is_first, start.core)
        return Latent(deter, stoch, logits, states), self._prior_logits(deter)

    def heads(self, feat: jax.Array):
        """feat -> (observation predictions of `decode`, reward logits [.., bins], continue logit [..])."""
        return (self.decode(feat), *self.reward_cont(feat))

    def reward_cont(self, feat: jax.Array):
        """feat -> (reward logits [.., bins], continue logit [..]): what imagination needs."""
        return self.reward_head(feat), self.cont_head(feat)[..., 0]

    def init_all(self, obs, action, key):
        latent = self.zeros(action.shape[:1])
        post, _ = self.obs_step(latent, action, self.encode(obs), key)
        return self.heads(post.feat)


def reconstruction_loss(model: WorldModel, pred: dict, obs: dict) -> dict[str, jax.Array]:
    """{key: [...] squared error summed over the key's dims}: symlog MSE for vectors, plain MSE of
    pixels / 255 for images (the reference does not symlog images)."""
    losses = {}
    for key in model.vector_keys:
        losses[key] = jnp.sum((pred[key] - symlog(obs[key])) ** 2, -1)
    for key in model.image_keys:
        losses[key] = jnp.sum((pred[key] - image_target(obs[key])) ** 2, (-3, -2, -1))
    return losses


def observe(
    model: WorldModel,
    params,
    obs: jax.Array,
    prev_action: jax.Array,
    is_first: jax.Array,
    keys: jax.Array,
    start: Latent | None = None,
) -> tuple[Latent, jax.Array]:
    """Posterior states for a batch of replayed windows.

    obs: {key: [B, T, *shape]}; prev_action: [B, T, A] (the action that led to obs_t); is_first: [B, T];
    keys: [T] one PRNG key per step (explicit, so that a window split in two observes exactly like the whole);
    start: the latent before the first step (leaves [B, ...]; the replay context), zeros when None.
    Returns posteriors (Latent with leaves [B, T, ...]) and prior logits [B, T, S, K].
    """
    B = is_first.shape[0]
    embed = model.apply(params, obs, method=WorldModel.encode)
    if start is None:
        start = model.zeros((B,))
    if model.parallel:
        return model.apply(
            params, embed, prev_action, is_first, keys, start, method=WorldModel.observe_parallel
        )

    def step(prev, inputs):
        embed_t, action_t, first_t, key_t = inputs
        keep = 1.0 - first_t.astype(jnp.float32)
        prev = mask_loop(prev, keep)
        post, prior_logits = model.apply(
            params, prev, action_t * keep[:, None], embed_t, key_t, method=WorldModel.obs_step_loop
        )
        return post, (post, prior_logits)

    swap = lambda x: jnp.swapaxes(x, 0, 1)
    start = model.apply(params, start, method=WorldModel.to_loop)
    _, (posts, prior_logits) = jax.lax.scan(
        step, start, (swap(embed), swap(prev_action), swap(is_first), keys)
    )
    # deter [T, <state layout>] -> [B, T, D]: one transpose of the whole sequence (XLA fuses the steps).
    posts = jax.vmap(lambda p: model.apply(params, p, method=WorldModel.from_loop))(posts)
    return jax.tree.map(swap, posts), swap(prior_logits)


def imagine(
    model: WorldModel,
    params,
    policy: Callable[[jax.Array, jax.Array], jax.Array],
    start: Latent,
    horizon: int,
    key: jax.Array,
) -> tuple[Latent, jax.Array]:
    """Rolls the prior forward from `start` ([N] leaves) for `horizon` steps with actions from
    `policy(feat, key) -> action`. Returns states s_0..s_H (leaves [H+1, N, ...]) and actions a_0..a_{H-1}
    ([H, N, A]), time-major."""

    def step(latent, key_t):
        k_act, k_dyn = jax.random.split(key_t)
        # The policy is any function of feat [N, D + S*K]: h is made flat for it, the one transpose per step
        # left (the agent does not differentiate imagination, so it has no backward twin).
        action = policy(model.apply(params, latent, method=WorldModel.loop_feat), k_act)
        nxt = model.apply(params, latent, action, k_dyn, method=WorldModel.img_step_loop)
        return nxt, (latent.replace(core=None), action)  # a parallel backbone's state stays in the carry

    keys = jax.random.split(key, horizon)
    start = model.apply(params, start, method=WorldModel.to_loop)
    last, (states, actions) = jax.lax.scan(step, start, keys)
    states = jax.tree.map(lambda seq, x: jnp.concatenate([seq, x[None]], 0), states, last.replace(core=None))
    # deter [H+1, <state layout>] -> [H+1, N, D], once for the whole rollout.
    return jax.vmap(lambda s: model.apply(params, s, method=WorldModel.from_loop))(states), actions
