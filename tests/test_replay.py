"""Replay ring buffer: windows are consecutive, inside the last `capacity` writes, never unwritten, and cover
every valid start; flags such as is_first come back unchanged."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from mbrl_jax.replay import Replay, replay_add, replay_init, replay_sample

OFFSET = 1000  # env e writes value e * OFFSET + t at global step t
EPISODE = 7  # is_first every EPISODE steps, so windows straddle episode starts


def counter_step(t: jax.Array, num_envs: int) -> dict[str, jax.Array]:
    """Step t of every env: value [num_envs] int32, is_first [num_envs] bool, obs [num_envs, 2] float32."""
    value = jnp.arange(num_envs, dtype=jnp.int32) * OFFSET + t
    is_first = jnp.full((num_envs,), t % EPISODE == 0)
    return {"value": value, "is_first": is_first, "obs": jnp.stack([value, -value], -1).astype(jnp.float32)}


def fill(num_envs: int, capacity: int, writes: int) -> Replay:
    """A buffer with unwritten slots set to the sentinel -1, after `writes` counter steps. One jitted program
    per buffer shape (num_envs, capacity), `writes` its argument: run op by op, every new shape a hypothesis
    example draws compiled each small op on its own."""
    return _fill(num_envs, capacity, np.int32(writes))


@functools.partial(jax.jit, static_argnums=(0, 1))
def _fill(num_envs: int, capacity: int, writes: jax.Array) -> Replay:
    replay = replay_init(counter_step(jnp.int32(0), num_envs), capacity)
    replay = replay.replace(data={**replay.data, "value": jnp.full_like(replay.data["value"], -1)})
    return jax.lax.fori_loop(0, writes, lambda t, r: replay_add(r, counter_step(t, num_envs)), replay)


def check_windows(batch: dict[str, np.ndarray], num_envs: int, capacity: int, writes: int, length: int):
    """Every window: one env, consecutive t, within the last min(writes, capacity) steps, flags intact."""
    value = batch["value"]
    assert (value >= 0).all(), "read an unwritten slot"
    env, t = value // OFFSET, value % OFFSET
    assert (env == env[:, :1]).all() and (env < num_envs).all()
    assert (np.diff(t, axis=1) == 1).all()
    assert (t >= writes - min(writes, capacity)).all() and (t < writes).all()
    np.testing.assert_array_equal(batch["is_first"], t % EPISODE == 0)
    np.testing.assert_array_equal(batch["obs"], np.stack([value, -value], -1).astype(np.float32))
    assert batch["is_first"].dtype == bool and batch["value"].dtype == np.int32


def test_init_and_add_bookkeeping():
    replay = fill(2, 5, 12)
    assert int(replay.cursor) == 12 % 5 and int(replay.count) == 5
    assert replay.data["obs"].shape == (2, 5, 2) and replay.data["is_first"].dtype == bool
    # Physical slot s holds the latest t with t % capacity == s.
    np.testing.assert_array_equal(np.asarray(replay.data["value"])[1], OFFSET + np.array([10, 11, 7, 8, 9]))
    partial = fill(2, 5, 3)
    assert int(partial.cursor) == 3 and int(partial.count) == 3
    assert (np.asarray(partial.data["value"])[:, 3:] == -1).all()


def test_wraparound_windows_cover_valid_range():
    num_envs, capacity, writes, length, batch = 3, 16, 45, 5, 4096
    key = jax.random.key(0)
    replay = fill(num_envs, capacity, writes)
    out = jax.tree.map(
        np.asarray, jax.jit(replay_sample, static_argnums=(2, 3))(replay, key, batch, length)[0]
    )
    assert out["value"].shape == (batch, length) and out["obs"].shape == (batch, length, 2)
    check_windows(out, num_envs, capacity, writes, length)
    # Starts are uniform over the capacity - length + 1 valid ones (t in [29, 40]) and over envs.
    starts = out["value"][:, 0] % OFFSET
    valid = np.arange(writes - capacity, writes - length + 1)
    counts = np.array([(starts == s).sum() for s in valid])
    assert counts.sum() == batch, "a window started outside the valid range"
    expected = batch / len(valid)
    assert (np.abs(counts - expected) < 0.25 * expected).all(), counts
    env_counts = np.bincount(out["value"][:, 0] // OFFSET, minlength=num_envs)
    assert (np.abs(env_counts - batch / num_envs) < 0.15 * batch / num_envs).all(), env_counts
    # Windows across episode starts do occur and keep is_first inside.
    assert out["is_first"][:, 1:].any()


@settings(max_examples=20, deadline=None)
@given(
    num_envs=st.integers(1, 3),
    capacity=st.integers(1, 12),
    data=st.data(),
)
def test_sample_property(num_envs: int, capacity: int, data: st.DataObject):
    length = data.draw(st.integers(1, capacity), label="length")
    writes = data.draw(st.integers(length, 3 * capacity + 2), label="writes")
    replay = fill(num_envs, capacity, writes)
    assert int(replay.count) == min(writes, capacity) and int(replay.cursor) == writes % capacity
    # replay_sample op by op: its random draws, the costly part to compile, have the same shapes in every
    # example and compile once; jitted, every new buffer shape and length would recompile them.
    out = jax.tree.map(np.asarray, replay_sample(replay, jax.random.key(writes), 64, length)[0])
    check_windows(out, num_envs, capacity, writes, length)
    # With 64 draws over at most 12 starts, both the oldest and the newest window are very likely hit;
    # checking the range ends catches an off-by-one in the start bound.
    starts = out["value"][:, 0] % OFFSET
    lo, hi = writes - min(writes, capacity), writes - length
    if hi - lo < 4:
        assert starts.min() == lo and starts.max() == hi
