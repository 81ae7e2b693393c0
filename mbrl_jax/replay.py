"""On-device replay: one ring buffer of steps per env (all envs written in lockstep), sampled as windows.

Episode boundaries inside a window are not avoided: the env's `is_first` flag, stored with each step, marks
them, and the world model resets its latent there (DreamerV3).

Two mechanisms of the DreamerV3 reference's replay live here:
- **Online queue** (`online=True` in `replay_sample`): every fresh, non-overlapping window of the newest data
  is trained on exactly once, in the first rows of a batch, as soon as it is complete; the other rows are
  uniform. Windows of one queue entry come from every env at once (envs are written in lockstep).
- **Write-back** (`replay_update`): the learner writes fields it computed for sampled steps (the posterior
  latents that the replay context starts from) back to the slots they were read from.

And Drama's **dynamic frequency-based sampling** (Wang et al., "Drama: Mamba-Enabled Model-Based
Reinforcement Learning Is Sample and Parameter Efficient", ICLR 2025; `sampler="frequency"`): per window start
the replay counts how often it was trained on (v_wm) and imagined from (v_ac); world-model windows are drawn
with p = softmax(-v_wm / tau), imagination windows with p = softmax((v_wm - alpha v_ac' - beta max(0,
v_wm - v_ac')) / tau_imag), v_ac' = v_ac / (imagination batch / world-model batch), as the authors' code does
(replay_buffer.py of realwenlongwang/drama). `reward_context` reads rewards around sampled windows for
DreamSmooth (mbrl_jax.returns.smooth_rewards).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import struct

from mbrl_jax.settings import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, Rule, one_of, setting


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


@struct.dataclass
class UseCounts:
    """Drama's per-index use counts, by window start: [num_envs, capacity] int32 each, zeroed when a slot is
    overwritten (a new step has not been used yet)."""

    train: jax.Array  # windows starting here that the world model trained on (v_wm)
    imagine: jax.Array  # windows starting here that imagination started from (v_ac)


@struct.dataclass
class Replay:
    """Ring buffer. Logical step i (0 = oldest) lives at physical slot (cursor - count + i) % capacity."""

    data: dict[str, jax.Array]  # each [num_envs, capacity, ...]
    cursor: jax.Array  # int32 scalar, next physical slot to write
    count: jax.Array  # int32 scalar, number of valid slots (<= capacity)
    written: jax.Array  # int32 scalar, steps ever written per env; step s (absolute) is at slot s % capacity
    online_next: jax.Array  # int32 scalar, absolute start of the next window of the online queue
    counts: UseCounts | None = None  # frequency sampler only (None: the uniform sampler's state is unchanged)


@struct.dataclass
class ReplayIndex:
    """Where a sampled batch came from: rows `env[b]`, slots `slot[b, t]`."""

    env: jax.Array  # [B] int32
    slot: jax.Array  # [B, L] int32
    start: jax.Array  # [B] int32, absolute index of each window's first step


def replay_init(example: dict[str, jax.Array], capacity: int, counts: bool = False) -> Replay:
    """Empty buffer shaped after one step. example leaves: [num_envs, ...]; buffers [num_envs, capacity, ...]
    of zeros with the example's dtypes. `counts`: keep Drama's use counts (the frequency sampler)."""
    if capacity < 1:
        raise ValueError(f"capacity must be >= 1, got {capacity!r}")
    data = jax.tree.map(lambda x: jnp.zeros((x.shape[0], capacity, *x.shape[1:]), x.dtype), example)
    zero = jnp.zeros((), jnp.int32)
    use = None
    if counts:
        num_envs = jax.tree.leaves(example)[0].shape[0]
        use = UseCounts(*(jnp.zeros((num_envs, capacity), jnp.int32) for _ in range(2)))
    return Replay(data=data, cursor=zero, count=zero, written=zero, online_next=zero, counts=use)


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
    counts = replay.counts
    if counts is not None:
        counts = jax.tree.map(lambda c: c.at[:, replay.cursor].set(0), counts)
    return replay.replace(
        data=data,
        counts=counts,
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
    sampler: str = "uniform",
    tau: float = 10.0,
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
    oldest = replay.written - replay.count  # absolute index of the oldest valid step
    if sampler == "uniform":
        k_env, k_start = jax.random.split(key)
        env = jax.random.randint(k_env, (batch_size,), 0, num_envs)
        start = jax.random.randint(k_start, (batch_size,), 0, jnp.maximum(replay.count - length + 1, 1))
        absolute = oldest + start
    elif sampler == "frequency":
        scores = world_model_scores(replay.counts, tau)
        env, absolute = _frequency_starts(replay, key, batch_size, length, scores)
    else:
        raise ValueError(f"unknown sampler {sampler!r}; allowed: 'uniform', 'frequency'")
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
    if sampler == "frequency":
        counts = replay.counts.replace(train=replay.counts.train.at[env, slot[:, 0]].add(1))
        replay = replay.replace(counts=counts)
    return batch, ReplayIndex(env=env, slot=slot, start=absolute), replay


def _valid_starts(replay: Replay, length: int) -> jax.Array:
    """[num_envs, capacity] bool: slots where a window of `length` steps can start (inside the valid steps,
    in time order)."""
    num_envs, capacity = jax.tree.leaves(replay.data)[0].shape[:2]
    logical = (jnp.arange(capacity) - (replay.cursor - replay.count)) % capacity  # 0 = oldest
    return jnp.broadcast_to(logical <= replay.count - length, (num_envs, capacity))


def frequency_logits(replay: Replay, length: int, scores: jax.Array) -> jax.Array:
    """[num_envs, capacity] scores with invalid window starts at -inf: softmax over all of it is the
    sampling distribution."""
    return jnp.where(_valid_starts(replay, length), scores, -jnp.inf)


def world_model_scores(counts: UseCounts, tau: float) -> jax.Array:
    """Drama's world-model sampling scores -v_wm / tau: the less a start was trained on, the likelier."""
    return -counts.train / tau


def imagination_scores(counts: UseCounts, tau: float, alpha: float, beta: float, scale: float) -> jax.Array:
    """Drama's imagination scores (v_wm - alpha v_ac' - beta max(0, v_wm - v_ac')) / tau, v_ac' = v_ac /
    scale (scale: imagination batch / world-model batch, so both counts grow at the same rate): starts the
    world model has learnt well and that were seldom imagined from are favoured."""
    imagine = counts.imagine / scale
    train = counts.train.astype(imagine.dtype)
    return (train - alpha * imagine - beta * jnp.maximum(0.0, train - imagine)) / tau


def _frequency_starts(replay: Replay, key: jax.Array, n: int, length: int, scores: jax.Array):
    """n (env [n], absolute start [n]) drawn with p = softmax(scores) over the valid starts."""
    capacity = scores.shape[1]
    flat = jax.random.categorical(key, frequency_logits(replay, length, scores).reshape(-1), shape=(n,))
    env, slot = flat // capacity, flat % capacity
    oldest = replay.written - replay.count
    absolute = oldest + (slot - (replay.cursor - replay.count)) % capacity
    return env.astype(jnp.int32), absolute.astype(jnp.int32)


def replay_sample_imagination(
    replay: Replay, key: jax.Array, n: int, length: int, tau: float, alpha: float, beta: float, scale: float
) -> tuple[dict[str, jax.Array], Replay]:
    """n windows of `length` steps whose last step starts imagination (Drama), drawn by
    `imagination_scores`; each drawn start's v_ac grows by one. Returns leaves [n, length, ...] and the
    replay with the counts updated."""
    capacity = jax.tree.leaves(replay.data)[0].shape[1]
    scores = imagination_scores(replay.counts, tau, alpha, beta, scale)
    env, absolute = _frequency_starts(replay, key, n, length, scores)
    slot = (absolute[:, None] + jnp.arange(length)) % capacity
    batch = jax.tree.map(lambda buf: buf[env[:, None], slot], replay.data)
    counts = replay.counts.replace(imagine=replay.counts.imagine.at[env, slot[:, 0]].add(1))
    return batch, replay.replace(counts=counts)


def reward_context(replay: Replay, index: ReplayIndex, left: int, right: int) -> tuple[jax.Array, jax.Array]:
    """Rewards and episode starts around sampled windows, for smoothing that reads neighbouring steps:
    [B, left + L + right] each. Steps outside the valid data repeat the nearest valid one, and the oldest
    valid step counts as an episode start, so smoothing treats the data's edges as 'nearest' boundaries."""
    capacity = jax.tree.leaves(replay.data)[0].shape[1]
    length = index.slot.shape[1]
    oldest = replay.written - replay.count
    absolute = index.start[:, None] + jnp.arange(-left, length + right)
    clamped = jnp.clip(absolute, oldest, replay.written - 1)
    slot = clamped % capacity
    env = index.env[:, None]
    reward = replay.data["reward"][env, slot]
    starts = replay.data["is_first"][env, slot].astype(bool) | (absolute == oldest)
    return reward, starts


def replay_update(replay: Replay, index: ReplayIndex, values: dict[str, jax.Array]) -> Replay:
    """Overwrite the fields in `values` (leaves [B, L, ...], L <= the sampled length: the last L sampled
    steps) at the slots they were sampled from. Where windows overlap, one of the written values is kept."""
    length = jax.tree.leaves(values)[0].shape[1]
    env, slot = index.env[:, None], index.slot[:, -length:]
    data = dict(replay.data)
    for name, value in values.items():
        data[name] = data[name].at[env, slot].set(value.astype(data[name].dtype))
    return replay.replace(data=data)
