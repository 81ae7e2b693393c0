"""gymnax adapter: N gymnax envs, vmapped, behind the `VecEnv` interface with the DreamerV3 reset convention.

gymnax's own `step` auto-resets and so hides the terminal observation; we vmap `step_env` and `reset_env`
instead and pick per env with `jnp.where`.

Observations become a dict: a vector env's under "vector" (float32), a MinAtar grid's (10 x 10 x C channels
of 0 / 1) under "image" as uint8 0 / 255. As DreamerV3 takes observations, any other array goes flattened
into a vector (bsuite's Catch, 10 x 5, as 50 floats; a scalar as a vector of one) and a Discrete observation
space one-hot (FrozenLake-misc's 16 cells as 16 floats). A name with the suffix `-rgb64`
("Breakout-MinAtar-rgb64") renders a grid env to a 64 x 64 x 3 uint8 image, DreamerV3's Atari / DMC input:
each channel gets a fixed colour and each cell a 6 x 6 block, centred with a 2-pixel border.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

from mbrl_jax.envs.base import EnvSpec, TimeStep, VecEnv, first_timestep, rescale_action
from mbrl_jax.errors import ConfigError, did_you_mean

RGB64 = "-rgb64"
RGB64_CELL, RGB64_SIZE = 6, 64


@struct.dataclass
class GymnaxState:
    """Batched adapter state. `env` leaves are [N, ...]; the rest are [N]."""

    env: Any  # gymnax EnvState of the N envs
    is_last: jax.Array  # [N] bool, the last TimeStep ended the episode: the next step resets
    episode_return: jax.Array  # [N] float32
    episode_length: jax.Array  # [N] int32


def list_envs() -> list[str]:
    """Names of all registered gymnax envs, and the `-rgb64` renderings of the grid (MinAtar) envs."""
    # gymnax is imported on first use: importing it creates arrays, which starts jax's backend, and a
    # multi-host run must call jax.distributed.initialize before that (mbrl_jax.parallel.initialize_hosts)
    import gymnax

    names = list(gymnax.registered_envs)
    return names + [n + RGB64 for n in names if n.endswith("-MinAtar")]


def _make_gymnax(name: str) -> tuple[Any, Any]:
    envs = list_envs()
    if name not in envs:
        raise ValueError(
            f"Unknown env name {name!r}{did_you_mean(name, envs)}. Registered gymnax envs: {', '.join(envs)}"
        )
    import gymnax

    try:
        return gymnax.make(name.removesuffix(RGB64))
    except OSError as err:  # MNISTBandit-bsuite downloads MNIST when it is built; offline that fails
        raise ConfigError(
            f"env.name={name!r}: gymnax could not build this env ({type(err).__name__}: {err}); it fetches "
            "data when it is made, which needs a network connection or the data in its cache"
        ) from None


def _palette(channels: int) -> jax.Array:
    """[C, 3] float32: a distinct, fixed colour per grid channel (evenly spaced hues, full saturation)."""
    import colorsys

    return (
        jnp.array([colorsys.hsv_to_rgb(c / channels, 1.0, 1.0) for c in range(channels)], jnp.float32) * 255
    )


def observation_kind(env: Any, params: Any) -> tuple[str, tuple[int, ...]]:
    """How the adapter presents the env's observation, and the shape the agent sees (without the env axis):
    ("grid", (H, W, C)) for an H x W x C grid (MinAtar), ("onehot", (n,)) for a Discrete space of n values,
    ("vector", (d,)) for any other array, flattened (d = 1 for a scalar)."""
    from gymnax.environments import spaces

    shape = tuple(jax.eval_shape(env.reset_env, jax.random.key(0), params)[0].shape)
    if isinstance(env.observation_space(params), spaces.Discrete):
        return "onehot", (int(env.observation_space(params).n),)
    if len(shape) == 3:
        return "grid", shape
    return "vector", (math.prod(shape),)


def observe(name: str, obs: jax.Array, kind: str, shape: tuple[int, ...]) -> dict[str, jax.Array]:
    """Gymnax observations [N, *env shape] -> the adapter's dict (see the module docstring); `kind` and
    `shape` from `observation_kind`."""
    n = obs.shape[0]
    if kind == "grid" and name.endswith(RGB64):  # [N, 10, 10, C] -> [N, 64, 64, 3] uint8
        colour = jnp.minimum(obs.astype(jnp.float32) @ _palette(obs.shape[-1]), 255.0)
        big = jnp.repeat(jnp.repeat(colour, RGB64_CELL, -3), RGB64_CELL, -2)
        pad = (RGB64_SIZE - big.shape[-2]) // 2
        return {"image": jnp.pad(big, [(0, 0), (pad, pad), (pad, pad), (0, 0)]).astype(jnp.uint8)}
    if kind == "grid":
        return {"image": (obs * 255).astype(jnp.uint8)}
    if kind == "onehot":
        return {"vector": jax.nn.one_hot(obs.reshape(n), shape[0], dtype=jnp.float32)}
    return {"vector": obs.astype(jnp.float32).reshape(n, *shape)}


def _spec(name: str, env: Any, params: Any) -> EnvSpec:
    kind, shape = observation_kind(env, params)
    if name.endswith(RGB64):
        shapes = {"image": (RGB64_SIZE, RGB64_SIZE, 3)}
    else:
        shapes = {"image" if kind == "grid" else "vector": shape}
    from gymnax.environments import spaces

    space = env.action_space(params)
    discrete = isinstance(space, spaces.Discrete)
    action_dim = int(space.n) if discrete else math.prod(space.shape)
    # The registry id, not env.name: a few gymnax envs report another name (DiscountingChain -> "-v0").
    return EnvSpec(name, shapes, discrete, action_dim, int(params.max_steps_in_episode))


def env_spec(name: str) -> EnvSpec:
    """Spec of the gymnax env `name` without building a batch (shapes by abstract evaluation)."""
    env, params = _make_gymnax(name)
    return _spec(name, env, params)


class GymnaxVecEnv(VecEnv):
    """`num_envs` copies of one gymnax env with its default params."""

    def __init__(self, name: str, num_envs: int):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        self.name = name
        self.num_envs = num_envs
        self.env, self.params, self.spec = self._make(name)
        self._space = self.env.action_space(self.params)

    def _make(self, name: str) -> tuple[Any, Any, EnvSpec]:
        """The env object, its params and the adapter's spec (a subclass adapts another gymnax-API package
        here, with `_observe` and `_end`)."""
        env, params = _make_gymnax(name)
        self._obs_kind, self._obs_shape = observation_kind(env, params)
        # gymnax >= 1.0 reports truncation apart (`is_truncated`); older versions merge it into `done`.
        self._legacy_done = not hasattr(env, "is_truncated")
        return env, params, _spec(name, env, params)

    def _observe(self, obs: jax.Array) -> dict[str, jax.Array]:
        """The env's observations [N, *env shape] -> the adapter's dict."""
        return observe(self.name, obs, self._obs_kind, self._obs_shape)

    def _end(self, env_state: Any, done: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(terminated, truncated), [N] bool each, of the stepped envs `env_state`; `done`: [N] bool."""
        if self._legacy_done:
            truncated = env_state.time >= self.params.max_steps_in_episode
            return done & ~truncated, truncated
        # a termination on the time-limit step stays a termination: no bootstrap
        truncated = jax.vmap(self.env.is_truncated, in_axes=(0, None))(env_state, self.params)
        return done, truncated.reshape(self.num_envs).astype(bool)

    def _env_action(self, action: jax.Array) -> jax.Array:
        """Agent action -> gymnax action: [N] int32, or [N, *space.shape] rescaled to [low, high]."""
        if self.spec.discrete:
            return action.astype(jnp.int32).reshape(self.num_envs)
        action = action.astype(jnp.float32).reshape(self.num_envs, *self._space.shape)
        low, high = jnp.asarray(self._space.low, jnp.float32), jnp.asarray(self._space.high, jnp.float32)
        return rescale_action(action, low, high)

    def _reset_envs(self, key: jax.Array) -> tuple[jax.Array, Any]:
        keys = jax.random.split(key, self.num_envs)
        return jax.vmap(self.env.reset_env, in_axes=(0, None))(keys, self.params)

    def reset(self, key: jax.Array) -> tuple[GymnaxState, TimeStep]:
        """Reset all envs. TimeStep leaves are [N, ...] with is_first all True."""
        obs, env_state = self._reset_envs(key)
        ts = first_timestep(self._observe(obs))
        return GymnaxState(env_state, ts.is_last, ts.episode_return, ts.episode_length), ts

    def step(self, state: GymnaxState, action: jax.Array, key: jax.Array) -> tuple[GymnaxState, TimeStep]:
        """One call for all envs. action: [N] int32 or [N, action_dim] float32 in [-1, 1].
        Envs with `state.is_last` ignore their action and reset (is_first=True, reward 0)."""
        n, reset = self.num_envs, state.is_last
        k_step, k_reset = jax.random.split(key)
        step_env = jax.vmap(self.env.step_env, in_axes=(0, 0, 0, None))
        obs, env_state, reward, done, _ = step_env(
            jax.random.split(k_step, n), state.env, self._env_action(action), self.params
        )
        obs0, env_state0 = self._reset_envs(k_reset)

        def pick(first: jax.Array, stepped: jax.Array) -> jax.Array:
            # Keep the stepped dtype so the state's types do not change across calls (scan carry).
            mask = reset.reshape(n, *([1] * (stepped.ndim - 1)))
            return jnp.where(mask, first, stepped).astype(stepped.dtype)

        terminated, truncated = self._end(env_state, done.reshape(n).astype(bool))
        is_last = (terminated | truncated) & ~reset
        reward = jnp.where(reset, 0.0, reward.reshape(n).astype(jnp.float32))
        episode_return = jnp.where(reset, 0.0, state.episode_return + reward)
        episode_length = jnp.where(reset, 0, state.episode_length + 1).astype(jnp.int32)
        ts = TimeStep(
            obs=self._observe(pick(obs0, obs)),
            reward=reward,
            is_first=reset,
            is_last=is_last,
            is_terminal=terminated & ~reset,
            episode_return=episode_return,
            episode_length=episode_length,
        )
        env_state = jax.tree.map(pick, env_state0, env_state)
        return GymnaxState(env_state, is_last, episode_return, episode_length), ts


def make_env(name: str, num_envs: int) -> GymnaxVecEnv:
    """Batched gymnax env by registry id, e.g. "CartPole-v1"; see `list_envs()`.
    Raises ValueError for an unknown name, with the closest registered name."""
    return GymnaxVecEnv(name, num_envs)
