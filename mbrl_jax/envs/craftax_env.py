"""Craftax (Matthews et al., 2024: Crafter and its larger sequel in JAX) as on-device envs, through
`GymnaxVecEnv`: craftax's envs follow gymnax's API (`reset_env`, `step_env`, `default_params`), so only
building the env, presenting its observations and telling termination from truncation differ.

Names: "craftax:" and one of `CRAFTAX_ENVS` ("craftax:Craftax-Classic-Symbolic-v1", ...). Symbolic
observations are a float32 vector ("vector"). Pixel observations (craftax renders float32 RGB in 0..1,
63 x 63 for Classic, 130 x 110 for Craftax) become "image", 64 x 64 x 3 uint8 (DreamerV3's image input): the
rendering is resized bilinearly with `jax.image.resize` (Craftax's 130 x 110 is squashed to a square) and
scaled to 0..255, rounded.

An episode ends by death (Classic also by stepping into lava; Craftax also by beating the final boss),
a termination, or at `params.max_timesteps` (10,000 steps in Classic, 100,000 in Craftax), a truncation;
an episode that terminates on its last allowed step counts as terminated. Each env reports its episode's
unlocked achievements (`achievements`), from which an evaluation reports Crafter's success rates and score.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbrl_jax.envs.base import EnvSpec, EnvState, VecEnv
from mbrl_jax.envs.gymnax_env import GymnaxState, GymnaxVecEnv
from mbrl_jax.errors import did_you_mean

PREFIX = "craftax:"
CRAFTAX_ENVS = (
    "Craftax-Classic-Symbolic-v1",
    "Craftax-Classic-Pixels-v1",
    "Craftax-Symbolic-v1",
    "Craftax-Pixels-v1",
)
IMAGE_SIZE = 64


def is_craftax(name: str) -> bool:
    """Whether `name` names a craftax env ("craftax:<id>")."""
    return name.startswith(PREFIX)


def list_craftax_envs() -> list[str]:
    """The craftax env names this adapter takes."""
    return [PREFIX + n for n in CRAFTAX_ENVS]


def unknown_craftax_env(name: str) -> str | None:
    """Why `name` ("craftax:<id>") is not a craftax env this adapter takes, or None where it is one."""
    if name in list_craftax_envs():
        return None
    return f"env.name={name!r} is not a craftax env{did_you_mean(name, list_craftax_envs())}; allowed: " + (
        ", ".join(map(repr, list_craftax_envs()))
    )


def _make_craftax(name: str) -> tuple[Any, Any, list[str]]:
    """The env (without auto-reset: the adapter resets), its default params and its achievements' names."""
    reason = unknown_craftax_env(name)
    if reason is not None:
        raise ValueError(reason)
    from craftax.craftax_env import make_craftax_env_from_name

    task = name.removeprefix(PREFIX)
    env = make_craftax_env_from_name(task, auto_reset=False)
    if task.startswith("Craftax-Classic"):
        from craftax.craftax_classic.constants import Achievement
    else:
        from craftax.craftax.constants import Achievement
    names = [a.name.lower() for a in sorted(Achievement, key=lambda a: a.value)]
    return env, env.default_params, names


def _spec(name: str, env: Any, params: Any) -> EnvSpec:
    shape = tuple(jax.eval_shape(env.reset_env, jax.random.key(0), params)[0].shape)
    obs_shapes = {"image": (IMAGE_SIZE, IMAGE_SIZE, 3)} if len(shape) == 3 else {"vector": shape}
    return EnvSpec(name, obs_shapes, True, int(env.action_space(params).n), int(params.max_timesteps))


def env_spec(name: str) -> EnvSpec:
    """Spec of the craftax env `name` ("craftax:<id>"), shapes by abstract evaluation."""
    env, params, _ = _make_craftax(name)
    return _spec(name, env, params)


def to_image(pixels: jax.Array) -> jax.Array:
    """craftax's rendering [N, H, W, 3] float32 in 0..1 -> [N, 64, 64, 3] uint8 in 0..255 (bilinear resize
    where H x W is not 64 x 64)."""
    n = pixels.shape[0]
    if pixels.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):
        pixels = jax.image.resize(pixels, (n, IMAGE_SIZE, IMAGE_SIZE, 3), "bilinear")
    return jnp.round(jnp.clip(pixels, 0.0, 1.0) * 255.0).astype(jnp.uint8)


class CraftaxVecEnv(GymnaxVecEnv):
    """`num_envs` copies of one craftax env with its default params (or `params`, e.g. a shorter time
    limit for tests); steps, resets and episode counters as `GymnaxVecEnv`."""

    def __init__(self, name: str, num_envs: int, params: Any = None):
        self._params_override = params
        super().__init__(name, num_envs)

    def _make(self, name: str) -> tuple[Any, Any, EnvSpec]:
        env, params, names = _make_craftax(name)
        self.achievement_names = tuple(names)
        if self._params_override is not None:
            params = self._params_override
        return env, params, _spec(name, env, params)

    def _observe(self, obs: jax.Array) -> dict[str, jax.Array]:
        if "image" in self.spec.obs_shapes:
            return {"image": to_image(obs)}
        return {"vector": obs.astype(jnp.float32).reshape(self.num_envs, -1)}

    def _end(self, env_state: Any, done: jax.Array) -> tuple[jax.Array, jax.Array]:
        # craftax's `done` merges the time limit into its game-over test; the same test without the limit
        # tells the terminations apart
        no_limit = self.params.replace(max_timesteps=np.iinfo(np.int32).max)
        terminal = jax.vmap(self.env.is_terminal, in_axes=(0, None))(env_state, no_limit)
        terminated = done & terminal.reshape(self.num_envs).astype(bool)
        return terminated, done & ~terminated

    def achievements(self, state: EnvState) -> jax.Array:
        assert isinstance(state, GymnaxState)
        return state.env.achievements.astype(bool)


def crafter_score(rates: np.ndarray) -> float:
    """Crafter's score (Hafner, 2021): the geometric mean of the achievements' success rates `rates` (in
    percent, 0..100), S = exp(mean_i ln(1 + s_i)) - 1, in percent."""
    rates = np.asarray(rates, np.float64)
    return float(np.exp(np.mean(np.log1p(rates))) - 1.0)


def make_env(name: str, num_envs: int) -> VecEnv:
    """Batched craftax env by name, e.g. "craftax:Craftax-Classic-Symbolic-v1"; ValueError for another."""
    return CraftaxVecEnv(name, num_envs)
