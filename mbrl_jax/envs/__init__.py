"""Batched, functional envs: one interface (`VecEnv`, `TimeStep`, `EnvSpec`) and its adapters."""

from mbrl_jax.envs.base import EnvSpec, EnvState, TimeStep, VecEnv, first_timestep, rescale_action
from mbrl_jax.envs.gymnax_env import GymnaxState, GymnaxVecEnv, env_spec, list_envs, make_env

__all__ = [
    "EnvSpec",
    "EnvState",
    "GymnaxState",
    "GymnaxVecEnv",
    "TimeStep",
    "VecEnv",
    "env_spec",
    "first_timestep",
    "list_envs",
    "make_env",
    "rescale_action",
]
