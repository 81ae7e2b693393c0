"""The one functional, batched env interface that every adapter (gymnax, envpool) implements.

Observations are dicts of arrays, as DreamerV3 takes them. Their rank says what they are: a rank-1 key
(shape (n,), float32) is a vector, a rank-3 key (H, W, C), uint8 in 0..255) an image. Adapters name a lone
vector "vector" and a lone image "image".

Reset convention (DreamerV3 / embodied): the terminal observation is returned with `is_last=True`, and the
next `step` call ignores its action for that env and returns the first observation of a new episode
(`is_first=True`, reward 0). An episode of n actions thus spans n + 1 timesteps and one extra call.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from mbrl_jax.settings import POSITIVE, UNIT_INTERVAL, one_of, setting

EnvState = Any  # adapter-specific pytree, batched over envs


@dataclasses.dataclass(frozen=True)
class EnvConfig:
    name: str = setting(
        "CartPole-v1",
        "gymnax env id or 'craftax:<id>' (on device), or 'gymnasium:<id>' / 'envpool:<task_id>' (host envs)",
    )
    num_envs: int = setting(4, "envs stepped in parallel on the device", POSITIVE)
    loop: str = setting(
        "auto",
        "what drives the envs: 'compiled' (act, env step and learn in one compiled chunk: gymnax, craftax, "
        "envpool through its XLA interface), 'host' (env steps in Python: Gymnasium, envpool on TPU or with "
        "64-bit arrays), or 'auto' (compiled wherever it works)",
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


@struct.dataclass
class TimeStep:
    """What the agent sees after `reset` or `step`. Every field is batched over N envs."""

    obs: dict[str, jax.Array]  # {key: [N, *shape]}: vectors float32, images uint8
    reward: jax.Array  # [N] float32, received on arriving at obs; 0 on is_first
    is_first: jax.Array  # [N] bool, first obs of an episode
    is_last: jax.Array  # [N] bool, episode ended here (terminated or truncated)
    is_terminal: jax.Array  # [N] bool, ended by termination: no bootstrap. Truncation: is_last & ~is_terminal
    episode_return: jax.Array  # [N] float32, sum of rewards of the current episode incl. this step
    episode_length: jax.Array  # [N] int32, actions taken in the current episode (0 on is_first)


@dataclasses.dataclass(frozen=True)
class EnvSpec:
    """Static description of an env, enough to build networks."""

    name: str
    obs_shapes: dict[str, tuple[int, ...]]  # per observation key, without the env axis
    discrete: bool
    action_dim: int  # number of actions (discrete) or size of the action vector (continuous)
    max_episode_steps: int

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(k for k, shape in sorted(self.obs_shapes.items()) if len(shape) == 3)

    @property
    def vector_keys(self) -> tuple[str, ...]:
        return tuple(k for k, shape in sorted(self.obs_shapes.items()) if len(shape) == 1)


def obs_dtype(shape: tuple[int, ...]) -> jnp.dtype:
    """The dtype an observation of this shape has: uint8 for images (rank 3), float32 otherwise."""
    return jnp.dtype(jnp.uint8) if len(shape) == 3 else jnp.dtype(jnp.float32)


class VecEnv(abc.ABC):
    """N envs stepped in lockstep. Holds only static things; `reset` and `step` are pure functions of arrays,
    so they can be jitted, scanned and vmapped (e.g. over seeds: `jax.vmap(env.reset)(keys)`).

    Actions: discrete -> int32 [N] indices; continuous -> float32 [N, action_dim] in [-1, 1].
    """

    spec: EnvSpec
    num_envs: int
    host_state: bool = False  # True where the envs' state lives outside `EnvState` (envpool's C++ pool)
    achievement_names: tuple[str, ...] = ()  # what `achievements` reports (Crafter's, on craftax envs)

    @abc.abstractmethod
    def reset(self, key: jax.Array) -> tuple[EnvState, TimeStep]:
        """Start all N envs. Returns the state and a TimeStep with is_first all True."""

    @abc.abstractmethod
    def step(self, state: EnvState, action: jax.Array, key: jax.Array) -> tuple[EnvState, TimeStep]:
        """Advance every env by one call; envs whose last TimeStep had is_last=True reset instead."""

    def achievements(self, state: EnvState) -> jax.Array:
        """[N, len(achievement_names)] bool: what each env's current episode has unlocked so far; after a
        step that returned is_last, the ended episode's; [N, 0] for envs without achievements."""
        return jnp.zeros((self.num_envs, 0), bool)


def first_timestep(obs: dict[str, jax.Array]) -> TimeStep:
    """TimeStep for freshly reset envs. obs: {key: [N, *shape]} in the dtypes of `obs_dtype`."""
    n = jax.tree.leaves(obs)[0].shape[0]
    false = jnp.zeros((n,), bool)
    return TimeStep(
        obs=obs,
        reward=jnp.zeros((n,), jnp.float32),
        is_first=jnp.ones((n,), bool),
        is_last=false,
        is_terminal=false,
        episode_return=jnp.zeros((n,), jnp.float32),
        episode_length=jnp.zeros((n,), jnp.int32),
    )


def next_step_timestep(
    xp: Any, obs: dict, was_last, reward, terminated, truncated, episode_return, episode_length
) -> TimeStep:
    """The TimeStep of one call of envs that auto-reset the NEXT_STEP way (Gymnasium's vector envs, envpool):
    an env whose last TimeStep had is_last (`was_last`) ignored its action and returned a new episode's first
    observation, marked here is_first with reward 0 and fresh counters. `episode_return` and `episode_length`
    are the counters after the previous call. `xp` is numpy for the host adapters, jax.numpy for envpool's
    XLA adapter."""
    terminated = xp.asarray(terminated, bool) & ~was_last
    is_last = (terminated | xp.asarray(truncated, bool)) & ~was_last
    reward = xp.where(was_last, 0.0, xp.asarray(reward, xp.float32)).astype(xp.float32)
    return TimeStep(
        obs=obs,
        reward=reward,
        is_first=was_last,
        is_last=is_last,
        is_terminal=terminated,
        episode_return=xp.where(was_last, 0.0, episode_return + reward).astype(xp.float32),
        episode_length=xp.where(was_last, 0, episode_length + 1).astype(xp.int32),
    )


def rescale_action(action: jax.Array, low: jax.Array, high: jax.Array) -> jax.Array:
    """Map an agent action in [-1, 1] (clipped first) linearly onto [low, high]. Shapes broadcast."""
    action = jnp.clip(action, -1.0, 1.0)
    return low + (action + 1.0) * 0.5 * (high - low)
