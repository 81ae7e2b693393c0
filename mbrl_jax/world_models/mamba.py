"""Mamba-2 sequence backbone (Dao & Gu, 2024) as Drama uses it (Wang et al., 2025): pure JAX, no CUDA kernels.

Each layer is a pre-norm residual Mamba-2 mixer followed by a pre-norm residual gated MLP (SwiGLU; `mlp=False`
leaves it out, as Drama's layers do):

    u -> RMSNorm -> in_proj -> z, xBC, dt
    xBC -> causal depthwise conv (kernel `conv`) -> SiLU -> x [H, P], B [N], C [N]
    a_t = exp(dt_t * A) (A = -exp(A_log) < 0, one scalar per head), S_t = a_t S_{t-1} + dt_t x_t B_t^T
    y_t = S_t C_t + D x_t;  out = out_proj(RMSNorm(y * SiLU(z)))

The selective state S [H, P, N] decays by an input-dependent step dt. Training runs a whole window at once by
Mamba-2's chunked state-space-dual form: within a chunk of `chunk` steps the outputs are a masked, decayed
attention-like product (y_t = sum_{s<=t} (C_t . B_s) prod_{s<r<=t} a_r dt_s x_s), and only the state at
each chunk's end is carried to the next, by a first-order linear recurrence over chunks (an associative scan).
Work grows linearly in the window length and no [T, H, P, N] tensor enters the gradient. Imagination runs
`step`, the same recurrence one step at a time with a carried state (the conv window and S), O(1) per step. An
episode start (`reset`) zeroes what came before it, in both forms.

The per-position states of the parallel form are returned too: DreamerV3 imagines from every posterior state
of the window, and for this backbone a state is (conv window, S) per layer, not its output. They come from the
same chunk products; the world model never differentiates them (imagination starts are stop-gradient).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbrl_jax.errors import ConfigError
from mbrl_jax.nets.layers import dense_init
from mbrl_jax.settings import AT_LEAST_ONE, POSITIVE, setting


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


def check_mamba(wm: Any, path: str) -> None:
    if (wm.deter * wm.mamba.expand) % wm.mamba.head_dim:
        raise ConfigError(
            f"{path}.deter * {path}.mamba.expand = {wm.deter * wm.mamba.expand} must be divisible by "
            f"{path}.mamba.head_dim={wm.mamba.head_dim}"
        )


def make_mamba(wm: Any) -> Mamba2:
    m = wm.mamba
    return Mamba2(wm.deter, m.layers, m.expand, m.head_dim, m.state, m.conv, m.chunk)


# A parallel backbone starts every window from zeros (the replay stores only the GRU's latent).
MAMBA_PRESETS = {"mamba": {"wm.backbone": "mamba", "replay.context": False}}


def _dt_bias_init(key, shape, dtype=jnp.float32, dt_min=1e-3, dt_max=0.1):
    """softplus^-1 of steps drawn log-uniformly from [dt_min, dt_max] (Mamba's initialisation)."""
    dt = jnp.exp(jax.random.uniform(key, shape, dtype, math.log(dt_min), math.log(dt_max)))
    return dt + jnp.log(-jnp.expm1(-dt))


def _a_log_init(key, shape, dtype=jnp.float32):
    """log of A's magnitude drawn uniformly from [1, 16] (Mamba-2's initialisation)."""
    return jnp.log(jax.random.uniform(key, shape, dtype, 1.0, 16.0))


def _linear_recurrence(a: jax.Array, b: jax.Array) -> jax.Array:
    """s_t = a_t * s_{t-1} + b_t with s_{-1} = 0, along axis 1, for every t at once. a broadcasts to b."""

    def combine(left, right):
        a_l, b_l = left
        a_r, b_r = right
        return a_l * a_r, a_r * b_l + b_r

    return jax.lax.associative_scan(combine, (a, b), axis=1)[1]


class Mamba2Layer(nn.Module):
    width: int
    expand: int
    head_dim: int
    state: int
    conv: int
    chunk: int = 64
    mlp: bool = True  # the gated MLP after the mixer; Drama's layers have none (its d_intermediate = 0)

    @property
    def inner(self) -> int:
        return self.expand * self.width

    @property
    def heads(self) -> int:
        return self.inner // self.head_dim

    @property
    def conv_channels(self) -> int:
        return self.inner + 2 * self.state

    def initial_state(self, batch_shape: tuple[int, ...]) -> dict:
        return {
            "conv": jnp.zeros((*batch_shape, self.conv - 1, self.conv_channels)),
            "ssm": jnp.zeros((*batch_shape, self.heads, self.head_dim, self.state)),
        }

    def setup(self):
        self.mix_norm = nn.RMSNorm(epsilon=1e-5)
        self.in_proj = nn.Dense(
            2 * self.inner + 2 * self.state + self.heads, use_bias=False, kernel_init=dense_init
        )
        fan_in = nn.initializers.variance_scaling(1.0, "fan_in", "uniform", in_axis=0, out_axis=1)
        self.conv_kernel = self.param("conv_kernel", fan_in, (self.conv, self.conv_channels))
        self.conv_bias = self.param("conv_bias", nn.initializers.zeros, (self.conv_channels,))
        self.dt_bias = self.param("dt_bias", _dt_bias_init, (self.heads,))
        self.a_log = self.param("a_log", _a_log_init, (self.heads,))
        self.skip = self.param("skip", nn.initializers.ones, (self.heads,))
        self.gate_norm = nn.RMSNorm(epsilon=1e-5)
        self.out_proj = nn.Dense(self.width, use_bias=False, kernel_init=dense_init)
        if self.mlp:
            self.mlp_norm = nn.RMSNorm(epsilon=1e-5)
            self.mlp_in = nn.Dense(2 * self.expand * self.width, use_bias=False, kernel_init=dense_init)
            self.mlp_out = nn.Dense(self.width, use_bias=False, kernel_init=dense_init)

    def _project(self, u: jax.Array):
        zxbcdt = self.in_proj(self.mix_norm(u))
        z, xbc, dt = jnp.split(zxbcdt, [self.inner, 2 * self.inner + 2 * self.state], -1)
        return z, xbc, dt

    def _ssm_inputs(self, xbc: jax.Array, dt: jax.Array):
        """Post-conv xBC [..., C] and raw dt [..., H] -> x [..., H, P], B, C [..., N], step dt [..., H] and
        log decay dt * A [..., H] (A < 0)."""
        x, b, c = jnp.split(jax.nn.silu(xbc), [self.inner, self.inner + self.state], -1)
        x = x.reshape(*x.shape[:-1], self.heads, self.head_dim)
        dt = jax.nn.softplus(dt + self.dt_bias)
        return x, b, c, dt, dt * -jnp.exp(self.a_log)

    def _output(self, u, z, x, y):
        y = y + self.skip[:, None] * x
        y = y.reshape(*y.shape[:-2], self.inner)
        u = u + self.out_proj(self.gate_norm(y * jax.nn.silu(z)))
        if not self.mlp:
            return u
        gate, value = jnp.split(self.mlp_in(self.mlp_norm(u)), 2, -1)
        return u + self.mlp_out(jax.nn.silu(gate) * value)

    def step(self, u: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        """u [B, W], state leaves [B, ...] -> (output [B, W], state)."""
        z, xbc, dt = self._project(u)
        window = jnp.concatenate([state["conv"], xbc[:, None]], 1)  # [B, K, C], oldest first
        conv = jnp.einsum("bkc,kc->bc", window, self.conv_kernel) + self.conv_bias
        x, b, c, dt, log_decay = self._ssm_inputs(conv, dt)
        increment = (dt[..., None] * x)[..., None] * b[:, None, None, :]
        ssm = jnp.exp(log_decay)[..., None, None] * state["ssm"] + increment
        y = jnp.einsum("bhpn,bn->bhp", ssm, c)
        return self._output(u, z, x, y), {"conv": window[:, 1:], "ssm": ssm}

    def sequence(self, u: jax.Array, reset: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        """u [B, T, W], reset [B, T] (True: nothing before t reaches t), state: before the first step.
        Returns outputs [B, T, W] and the state after every step (leaves [B, T, ...])."""
        T, K = u.shape[1], self.conv
        z, xbc, dt = self._project(u)
        # Causal depthwise convolution over [carried window, xbc]; a tap reaches t only from t's own episode.
        padded = jnp.concatenate([state["conv"], xbc], 1)  # [B, K-1+T, C]
        segment = jnp.cumsum(reset.astype(jnp.int32), 1)
        segment = jnp.concatenate([jnp.zeros_like(segment[:, :1]).repeat(K - 1, 1), segment], 1)
        taps = []  # taps[j][:, t] = input at t - (K-1) + j, zero if from an earlier episode
        for j in range(K):
            same = (segment[:, j : j + T] == segment[:, K - 1 :])[..., None]
            taps.append(jnp.where(same, padded[:, j : j + T], 0.0))
        conv = sum(tap * self.conv_kernel[j] for j, tap in enumerate(taps)) + self.conv_bias
        x, b, c, dt, log_decay = self._ssm_inputs(conv, dt)
        y, ssm = _chunked_ssd(x, b, c, dt, log_decay, reset, state["ssm"], min(self.chunk, T))
        conv_states = jnp.stack(taps[1:], 2)  # the window after step t: inputs t-K+2 .. t
        return self._output(u, z, x, y), {"conv": conv_states, "ssm": ssm}


def _chunked_ssd(x, b, c, dt, log_decay, reset, initial, chunk: int):
    """The selective scan S_t = a_t S_{t-1} + dt_t x_t B_t^T (a_t = 0 where reset[t], else exp(log_decay_t)),
    y_t = S_t C_t, over a window, by Mamba-2's chunked dual form.

    x [B, T, H, P], b and c [B, T, N], dt and log_decay [B, T, H], reset [B, T], initial [B, H, P, N].
    Returns y [B, T, H, P] and S_t for every t [B, T, H, P, N]. The window is padded to whole chunks with
    steps that add nothing and decay nothing; padding comes after the real steps, so it never reaches them.
    """
    batch, length = x.shape[:2]
    chunks = -(-length // chunk)
    pad = chunks * chunk - length

    def to_chunks(a):
        a = jnp.pad(a, [(0, 0), (0, pad)] + [(0, 0)] * (a.ndim - 2))
        return a.reshape(batch, chunks, chunk, *a.shape[2:])

    x, b, c, dt, log_decay, reset = map(to_chunks, (x, b, c, dt, log_decay, reset))
    # Within a chunk, s reaches t (s <= t) unless an episode starts in (s, t]; the chunk's carried state
    # reaches t unless one starts in [0, t].
    starts = jnp.cumsum(reset.astype(jnp.int32), 2)  # [B, C, Q]: episode starts up to and including t
    causal = jnp.tril(jnp.ones((chunk, chunk), bool))
    reaches = causal & (starts[..., :, None] == starts[..., None, :])  # [B, C, Q(t), Q(s)]
    carried = starts == 0  # [B, C, Q]
    # Decay from s to t, sum_{s<r<=t} log a_r, by a cumulative sum down t of the terms with r > s: no
    # difference of two large partial sums, so short steps keep their precision after long decays.
    strictly = jnp.tril(jnp.ones((chunk, chunk), bool), -1)
    terms = jnp.where(strictly[..., None], log_decay[:, :, :, None, :], 0.0)  # [B, C, Q(r), Q(s), H]
    decay = jnp.where(reaches[..., None], jnp.exp(jnp.cumsum(terms, 2)), 0.0)  # [B, C, Q(t), Q(s), H]
    from_start = jnp.where(carried[..., None], jnp.exp(jnp.cumsum(log_decay, 2)), 0.0)  # [B, C, Q, H]

    dx = dt[..., None] * x  # [B, C, Q, H, P]
    scores = jnp.einsum("bctn,bcsn->bcts", c, b)
    y_within = jnp.einsum("bcts,bctsh,bcshp->bcthp", scores, decay, dx)
    # Each chunk's own contribution to the state at its end, then the states between chunks.
    own = jnp.einsum("bcsh,bcshp,bcsn->bchpn", decay[:, :, -1], dx, b)
    through = from_start[:, :, -1]  # [B, C, H]: what of the state before a chunk survives it
    own = own.at[:, 0].add(through[:, 0, :, None, None] * initial)
    ends = _linear_recurrence(through[..., None, None], own)  # [B, C, H, P, N]
    before = jnp.concatenate([initial[:, None], ends[:, :-1]], 1)
    y_carried = jnp.einsum("bctn,bchpn,bcth->bcthp", c, before, from_start)
    states = jnp.einsum("bctsh,bcshp,bcsn->bcthpn", decay, dx, b)
    states = states + from_start[..., None, None] * before[:, :, None]

    def to_window(a):
        return a.reshape(batch, chunks * chunk, *a.shape[3:])[:, :length]

    return to_window(y_within + y_carried), to_window(states)


class Mamba2(nn.Module):
    """`layers` Mamba-2 layers of width `width` and a final RMSNorm: the world model's sequence backbone.

    The backbone interface for parallel cores (mbrl_jax/world_models/backbone.py): `initial_state`,
    `sequence(inputs [B, T, W], reset [B, T], state) -> (outputs, per-step states)` and
    `step(input [B, W], state) -> (output, state)`; the state is a tuple with one dict per layer."""

    width: int
    layers: int
    expand: int
    head_dim: int
    state: int
    conv: int
    chunk: int = 64
    mlp: bool = True  # each layer's gated MLP (False: Drama's layers, the mixer alone)
    parallel = True
    grouped = False

    def setup(self):
        self.blocks = [
            Mamba2Layer(self.width, self.expand, self.head_dim, self.state, self.conv, self.chunk, self.mlp)
            for _ in range(self.layers)
        ]
        self.norm = nn.RMSNorm(epsilon=1e-5)

    def to_state(self, deter: jax.Array) -> jax.Array:
        return deter  # the output h_t is flat [B, D]; the recurrent state lives in `Latent.core`

    def to_deter(self, state: jax.Array) -> jax.Array:
        return state

    def initial_state(self, batch_shape: tuple[int, ...]) -> tuple:
        layer = Mamba2Layer(
            self.width, self.expand, self.head_dim, self.state, self.conv, self.chunk, parent=None
        )
        return tuple(layer.initial_state(batch_shape) for _ in range(self.layers))

    def step(self, u: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
        new = []
        for block, s in zip(self.blocks, state, strict=True):
            u, s = block.step(u, s)
            new.append(s)
        return self.norm(u), tuple(new)

    def sequence(self, u: jax.Array, reset: jax.Array, state: tuple) -> tuple[jax.Array, tuple]:
        states = []
        for block, s in zip(self.blocks, state, strict=True):
            u, s = block.sequence(u, reset, s)
            states.append(s)
        return self.norm(u), tuple(states)

    def __call__(self, u: jax.Array, reset: jax.Array, state: tuple):
        return self.sequence(u, reset, state)
