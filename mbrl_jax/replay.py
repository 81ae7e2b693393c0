"""On-device replay: one ring buffer of steps per env (all envs written in lockstep), sampled as windows.

Episode boundaries inside a window are not avoided: the env's `is_first` flag, stored with each step, marks
them, and the world model resets its latent there (DreamerV3).

Two mechanisms of the DreamerV3 reference's replay live here:
- **Online queue** (`online=True` in `replay_sample`): every fresh, non-overlapping window of the newest data
  is trained on exactly once, in the first rows of a batch, as soon as it is complete; the other rows are
  uniform. Windows of one queue entry come from every env at once (envs are written in lockstep).
- **Write-back** (`replay_update`): the learner writes fields it computed for sampled steps (the posterior
  latents that the replay context starts from) back to the slots they were read from.
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
    written: jax.Array  # int32 scalar, steps ever written per env; step s (absolute) is at slot s % capacity
    online_next: jax.Array  # int32 scalar, absolute start of the next window of the online queue


@struct.dataclass
class ReplayIndex:
    """Where a sampled batch came from: rows `env[b]`, slots `slot[b, t]`."""

    env: jax.Array  # [B] int32
    slot: jax.Array  # [B, L] int32


def replay_init(example: dict[str, jax.Array], capacity: int) -> Replay:
    """Empty buffer shaped after one step. example leaves: [num_envs, ...]; buffers [num_envs, capacity, ...]
    of zeros with the example's dtypes."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity!r}")
    data = jax.tree.map(lambda x: jnp.zeros((x.shape[0], capacity, *x.shape[1:]), x.dtype), example)
    zero = jnp.zeros((), jnp.int32)
    return Replay(data=data, cursor=zero, count=zero, written=zero, online_next=zero)


def _capacity(replay: Replay) -> int:
    return jax.tree.leaves(replay.data)[0].shape[1]


def replay_add(replay: Replay, step: dict[str, jax.Array]) -> Replay:
    """Write one step of every env at the cursor, overwriting the oldest step once full.
    step leaves: [num_envs, ...], same structure as the buffers."""
    capacity = _capacity(replay)
    data = jax.tree.map(
        lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x.astype(buf.dtype), replay.cursor, axis=1),
        replay.data,
        step,
    )
    return replay.replace(
        data=data,
        cursor=(replay.cursor + 1) % capacity,
        count=jnp.minimum(replay.count + 1, capacity),
        written=replay.written + 1,
    )


def replay_sample(
    replay: Replay,
    key: jax.Array,
    batch_size: int,
    length: int,
    online: bool = False,
    stride: int | None = None,
) -> tuple[dict[str, jax.Array], ReplayIndex, Replay]:
    """`batch_size` windows of `length` consecutive steps; leaves [batch_size, length, ...].

    Env and window start are uniform; a window lies in the `count` valid steps in time order, so it never
    reads an unwritten slot nor joins the newest step to the oldest. Requires count >= length (the trainer
    prefills); otherwise windows read unwritten slots.

    With `online`, once `length` steps from `online_next` on are written, rows 0..num_envs-1 are the windows
    starting there (one per env), and `online_next` advances by `stride` (default `length`; `length - 1` when
    each window's first step is only context, so the trained steps tile the data). Needs num_envs <=
    batch_size. Returns the batch, where it was read from, and the replay with the queue advanced.
    """
    num_envs, capacity = jax.tree.leaves(replay.data)[0].shape[:2]
    k_env, k_start = jax.random.split(key)
    env = jax.random.randint(k_env, (batch_size,), 0, num_envs)
    start = jax.random.randint(k_start, (batch_size,), 0, jnp.maximum(replay.count - length + 1, 1))
    oldest = replay.written - replay.count  # absolute index of the oldest valid step
    absolute = oldest + start
    if online:
        if num_envs > batch_size:
            raise ValueError(f"the online queue needs num_envs={num_envs} <= batch_size={batch_size}")
        queue_start = jnp.maximum(replay.online_next, oldest)  # data the queue lagged behind on is gone
        ready = queue_start + length <= replay.written
        rows = jnp.arange(batch_size) < num_envs
        take = ready & rows
        env = jnp.where(take, jnp.arange(batch_size) % num_envs, env)
        absolute = jnp.where(take, queue_start, absolute)
        advance = stride if stride is not None else length
        replay = replay.replace(online_next=jnp.where(ready, queue_start + advance, replay.online_next))
    slot = (absolute[:, None] + jnp.arange(length)) % capacity  # [batch_size, length]
    batch = jax.tree.map(lambda buf: buf[env[:, None], slot], replay.data)
    return batch, ReplayIndex(env=env, slot=slot), replay


def replay_update(replay: Replay, index: ReplayIndex, values: dict[str, jax.Array]) -> Replay:
    """Overwrite the fields in `values` (leaves [B, L, ...], L <= the sampled length: the last L sampled
    steps) at the slots they were sampled from. Where windows overlap, one of the written values is kept."""
    length = jax.tree.leaves(values)[0].shape[1]
    env, slot = index.env[:, None], index.slot[:, -length:]
    data = dict(replay.data)
    for name, value in values.items():
        data[name] = data[name].at[env, slot].set(value.astype(data[name].dtype))
    return replay.replace(data=data)
