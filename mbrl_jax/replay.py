"""On-device replay: one ring buffer of steps per env (all envs written in lockstep), sampled as windows.

Episode boundaries inside a window are not avoided: the env's `is_first` flag, stored with each step, marks
them, and the world model resets its latent there (DreamerV3).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct


@struct.dataclass
class Replay:
    """Ring buffer. Logical step i (0 = oldest) lives at physical slot (cursor - count + i) % capacity."""

    data: dict[str, jax.Array]  # each [num_envs, capacity, ...]
    cursor: jax.Array  # int32 scalar, next physical slot to write
    count: jax.Array  # int32 scalar, number of valid slots (<= capacity)


def replay_init(example: dict[str, jax.Array], capacity: int) -> Replay:
    """Empty buffer shaped after one step. example leaves: [num_envs, ...]; buffers [num_envs, capacity, ...]
    of zeros with the example's dtypes."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity!r}")
    data = jax.tree.map(lambda x: jnp.zeros((x.shape[0], capacity, *x.shape[1:]), x.dtype), example)
    return Replay(data=data, cursor=jnp.zeros((), jnp.int32), count=jnp.zeros((), jnp.int32))


def replay_add(replay: Replay, step: dict[str, jax.Array]) -> Replay:
    """Write one step of every env at the cursor, overwriting the oldest step once full.
    step leaves: [num_envs, ...], same structure as the buffers."""
    capacity = jax.tree.leaves(replay.data)[0].shape[1]
    data = jax.tree.map(
        lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), replay.cursor, axis=1),
        replay.data,
        step,
    )
    return Replay(
        data=data,
        cursor=(replay.cursor + 1) % capacity,
        count=jnp.minimum(replay.count + 1, capacity),
    )


def replay_sample(replay: Replay, key: jax.Array, batch_size: int, length: int) -> dict[str, jax.Array]:
    """`batch_size` windows of `length` consecutive steps; leaves [batch_size, length, ...].

    Env and window start are uniform; a window lies in the `count` valid steps in time order, so it never
    reads an unwritten slot nor joins the newest step to the oldest. Requires count >= length (the trainer
    prefills); otherwise windows read unwritten slots.
    """
    num_envs, capacity = jax.tree.leaves(replay.data)[0].shape[:2]
    k_env, k_start = jax.random.split(key)
    env = jax.random.randint(k_env, (batch_size,), 0, num_envs)
    start = jax.random.randint(k_start, (batch_size,), 0, jnp.maximum(replay.count - length + 1, 1))
    oldest = (replay.cursor - replay.count) % capacity
    slot = (oldest + start[:, None] + jnp.arange(length)) % capacity  # [batch_size, length]
    return jax.tree.map(lambda buf: buf[env[:, None], slot], replay.data)
