"""Causal Transformer sequence backbone with a key/value cache (the sequence model of STORM-like models).

Each layer is pre-norm residual multi-head self-attention with rotary position embeddings (RoPE) followed by a
pre-norm residual gated MLP. A step attends to itself and the `context - 1` steps before it, never across an
episode start. Training runs a whole window at once (block-local masked attention over [cache, window],
linear in the window's length); acting and imagination run `step` with a cache of the last `context` keys
and values, O(context) per step.

The state is the cache: per layer keys and values [heads, context, head_dim] (RoPE already applied), plus
`valid` [context] (1 where a cached step belongs to the current episode) and `pos` (steps since the episode
started, the next step's RoPE position). Zeroing it, as the world model does at an episode start, empties it.
The cache is a ring: the step at position p sits in slot p mod context, so a step writes one row per layer
instead of shifting the whole cache (attention does not care about the order of its keys). Heads lead the
cache's axes because the attention matmul batches over them: a cache stored [context, heads, ...] would be
transposed whole at every step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mbrl_jax.errors import ConfigError
from mbrl_jax.nets.layers import dense_init
from mbrl_jax.settings import POSITIVE, setting


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


def check_transformer(wm: Any, path: str) -> None:
    heads = wm.transformer.heads
    if wm.deter % heads or (wm.deter // heads) % 2:
        raise ConfigError(
            f"{path}.deter={wm.deter} must split into {path}.transformer.heads={heads} heads of an "
            "even size (rotary embeddings rotate pairs of channels)"
        )


def make_transformer(wm: Any) -> Transformer:
    m = wm.transformer
    return Transformer(wm.deter, m.layers, m.heads, m.context, m.mlp_ratio)


TRANSFORMER_PRESETS = {"transformer": {"wm.backbone": "transformer", "replay.context": False}}


def rope(x: jax.Array, pos: jax.Array) -> jax.Array:
    """Rotary embedding of x [..., H, d] at positions pos [...]: pair i turns by pos / 10000^(2i/d)."""
    half = x.shape[-1] // 2
    freq = 10000.0 ** (-jnp.arange(half) / half)
    angle = pos[..., None, None] * freq  # [..., 1, half]
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """q [..., Q, H, d], k, v [..., K, H, d], mask [..., Q, K] -> [..., Q, H, d]."""
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
    logits = jnp.where(mask[..., None, :, :], logits, -1e30)
    return jnp.einsum("...hqk,...khd->...qhd", jax.nn.softmax(logits, -1), v)


class TransformerLayer(nn.Module):
    width: int
    heads: int
    mlp_ratio: int

    def setup(self):
        self.attn_norm = nn.RMSNorm(epsilon=1e-5)
        self.qkv = nn.Dense(3 * self.width, use_bias=False, kernel_init=dense_init)
        self.attn_out = nn.Dense(self.width, use_bias=False, kernel_init=dense_init)
        self.mlp_norm = nn.RMSNorm(epsilon=1e-5)
        self.mlp_in = nn.Dense(2 * self.mlp_ratio * self.width, use_bias=False, kernel_init=dense_init)
        self.mlp_out = nn.Dense(self.width, use_bias=False, kernel_init=dense_init)

    def qkv_heads(self, u: jax.Array, pos: jax.Array):
        q, k, v = jnp.split(self.qkv(self.attn_norm(u)), 3, -1)
        q, k, v = (x.reshape(*x.shape[:-1], self.heads, self.width // self.heads) for x in (q, k, v))
        return rope(q, pos), rope(k, pos), v

    def finish(self, u: jax.Array, attended: jax.Array) -> jax.Array:
        u = u + self.attn_out(attended.reshape(*attended.shape[:-2], self.width))
        gate, value = jnp.split(self.mlp_in(self.mlp_norm(u)), 2, -1)
        return u + self.mlp_out(jax.nn.silu(gate) * value)


class Transformer(nn.Module):
    """`layers` causal Transformer layers of width `width` and a final RMSNorm (backbone interface for
    parallel cores, see mbrl_jax/world_models/backbone.py)."""

    width: int
    layers: int
    heads: int
    context: int
    mlp_ratio: int = 2
    parallel = True
    grouped = False

    def setup(self):
        self.blocks = [TransformerLayer(self.width, self.heads, self.mlp_ratio) for _ in range(self.layers)]
        self.norm = nn.RMSNorm(epsilon=1e-5)

    def to_state(self, deter: jax.Array) -> jax.Array:
        return deter

    def to_deter(self, state: jax.Array) -> jax.Array:
        return state

    def initial_state(self, batch_shape: tuple[int, ...]) -> dict:
        cache = (*batch_shape, self.heads, self.context, self.width // self.heads)
        return {
            "k": tuple(jnp.zeros(cache) for _ in range(self.layers)),
            "v": tuple(jnp.zeros(cache) for _ in range(self.layers)),
            "valid": jnp.zeros((*batch_shape, self.context)),
            "pos": jnp.zeros(batch_shape),
        }

    def step(self, u: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        """u [B, W] -> (output [B, W], state): this step's key and value overwrite the oldest slot."""
        pos = state["pos"]
        rows, slot = jnp.arange(u.shape[0]), jnp.mod(pos.astype(jnp.int32), self.context)
        valid = state["valid"].at[rows, slot].set(1.0)
        keys, values = [], []
        for block, k_cache, v_cache in zip(self.blocks, state["k"], state["v"], strict=True):
            q, k, v = block.qkv_heads(u, pos)
            k, v = k_cache.at[rows, :, slot].set(k), v_cache.at[rows, :, slot].set(v)
            logits = jnp.einsum("bhd,bhkd->bhk", q, k) / jnp.sqrt(q.shape[-1]).astype(q.dtype)
            logits = jnp.where(valid[:, None, :] > 0, logits, -1e30)
            attended = jnp.einsum("bhk,bhkd->bhd", jax.nn.softmax(logits, -1), v)
            u = block.finish(u, attended)
            keys.append(k)
            values.append(v)
        return self.norm(u), {"k": tuple(keys), "v": tuple(values), "valid": valid, "pos": pos + 1}

    def sequence(self, u: jax.Array, reset: jax.Array, state: dict) -> tuple[jax.Array, dict]:
        """u [B, T, W], reset [B, T] (True: nothing before t reaches t), state: the cache before the window.
        Returns outputs [B, T, W] and the cache after every step (leaves [B, T, ...])."""
        B, T = reset.shape
        C = self.context
        t = jnp.arange(T)
        last_reset = jax.lax.cummax(jnp.where(reset, t, -1), axis=1)  # [B, T]
        pos = jnp.where(last_reset >= 0, t - last_reset, state["pos"][:, None] + t)  # RoPE positions [B, T]
        start, step_pos = state["pos"].astype(jnp.int32), pos.astype(jnp.int32)  # the same, as indices
        # Keys are [cache oldest first (C steps), window (T steps)]; query t sits at key index C + t and
        # attends to key indices t + 1 .. C + t that are valid and in its episode.
        oldest_first = jnp.mod(start[:, None] - C + jnp.arange(C), C)  # [B, C]: ring slot of each cached step
        cache_valid = jnp.take_along_axis(state["valid"], oldest_first, 1)
        segment = jnp.cumsum(reset.astype(jnp.int32), 1)
        key_segment = jnp.concatenate([jnp.zeros((B, C), jnp.int32), segment], 1)  # [B, C+T]
        key_valid = jnp.concatenate([cache_valid, jnp.ones((B, T))], 1) > 0
        # Block-local attention, so the cost is linear in T: the window's queries in blocks of S, block i
        # (queries iS .. iS+S-1) reading the S + C keys from index iS, which hold all that its queries reach.
        # The window is padded to whole blocks; a padded key lies after every real query's reach.
        S = min(C, T)
        blocks = -(-T // S)
        pad = blocks * S - T
        query_t = S * np.arange(blocks)[:, None] + np.arange(S)  # [blocks, S]
        key_index = S * np.arange(blocks)[:, None] + np.arange(S + C)  # [blocks, S+C]
        reach = key_index[:, None, :] - query_t[..., None]  # [blocks, S, S+C]: key index - query's t
        in_window = (reach > 0) & (reach <= C)
        pad_time = lambda x, **how: jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), **how)
        padded_segment = pad_time(segment, mode="edge")
        padded_key_segment = pad_time(key_segment, constant_values=-1)
        same_episode = (
            padded_key_segment[:, key_index][:, :, None, :] == padded_segment[:, query_t][..., None]
        )
        mask = (
            in_window & pad_time(key_valid)[:, key_index][:, :, None, :] & same_episode
        )  # [B, blocks, S, S+C]
        by_block = lambda x: pad_time(x).reshape(B, blocks, S, *x.shape[2:])
        key_blocks = lambda x: pad_time(x)[:, key_index]
        # After step t, ring slot s holds the step at position p = pos_t - ((pos_t - s) mod C): key index
        # C + t - ((pos_t - s) mod C). A slot from an earlier episode is empty (zeroed at the reset).
        slot_key = C + t[None, :, None] - jnp.mod(step_pos[..., None] - jnp.arange(C), C)  # [B, T, C]
        kept = jnp.take_along_axis(key_segment[:, None, :], slot_key, 2) == segment[..., None]
        after_valid = (kept & jnp.take_along_axis(key_valid[:, None, :], slot_key, 2)).astype(jnp.float32)
        gather = jax.vmap(lambda x, index: x[index])  # [K, ...], [...index] -> [...index, ...] per batch row
        cache_order = lambda cache: gather(cache.swapaxes(1, 2), oldest_first)  # [B, C, H, d], oldest first
        ring = lambda x: jnp.where(kept[..., None, None], gather(x, slot_key), 0.0).swapaxes(2, 3)
        keys, values = [], []
        for block, k_cache, v_cache in zip(self.blocks, state["k"], state["v"], strict=True):
            q, k, v = block.qkv_heads(u, pos)
            k_all = jnp.concatenate([cache_order(k_cache), k], 1)  # [B, C+T, H, d]
            v_all = jnp.concatenate([cache_order(v_cache), v], 1)
            if blocks == 1:  # T <= C: one block holding every key, so no gather
                attended = attend(q, k_all, v_all, mask[:, 0])
            else:
                attended = attend(
                    by_block(q), key_blocks(k_all), key_blocks(v_all), mask
                )  # [B, blocks, S, H, d]
                attended = attended.reshape(B, blocks * S, *q.shape[2:])[:, :T]
            u = block.finish(u, attended)
            keys.append(ring(k_all))  # [B, T, H, C, d]
            values.append(ring(v_all))
        states = {"k": tuple(keys), "v": tuple(values), "valid": after_valid, "pos": pos + 1.0}
        return self.norm(u), states

    def __call__(self, u: jax.Array, reset: jax.Array, state: dict):
        return self.sequence(u, reset, state)
