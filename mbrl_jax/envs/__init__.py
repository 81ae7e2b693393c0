"""Batched envs: one interface (`VecEnv`, `TimeStep`, `EnvSpec`) and its adapters.

gymnax ids ("CartPole-v1") are on-device `VecEnv`s; "gymnasium:<id>" and "envpool:<task_id>" names are host
envs (`HostVecEnv`: `GymnasiumVecEnv`, `EnvpoolVecEnv`), driven by the host loop (`mbrl_jax.host_loop`).
"""

from mbrl_jax.envs.base import EnvSpec, EnvState, TimeStep, VecEnv, first_timestep, rescale_action
from mbrl_jax.envs.envpool_env import EnvpoolVecEnv, is_envpool, is_envpool_atari
from mbrl_jax.envs.gymnasium_env import GymnasiumVecEnv, HostVecEnv, is_gymnasium
from mbrl_jax.envs.gymnax_env import GymnaxState, GymnaxVecEnv, list_envs, make_env
from mbrl_jax.envs.gymnax_env import env_spec as gymnax_env_spec


def is_host_env(name: str) -> bool:
    """Whether `name` is an env stepped on the host (Python), which only the host loop can drive."""
    return is_gymnasium(name) or is_envpool(name)


def env_spec(name: str) -> EnvSpec:
    """Spec of the env `name`: a gymnax id, or "gymnasium:<id>" (see the module docstring)."""
    if is_gymnasium(name):
        from mbrl_jax.envs.gymnasium_env import env_spec as gymnasium_env_spec

        return gymnasium_env_spec(name)
    if is_envpool(name):
        from mbrl_jax.envs.envpool_env import env_spec as envpool_env_spec

        return envpool_env_spec(name)
    return gymnax_env_spec(name)


def make_host_env(name: str, num_envs: int, sticky_actions: float = 0.25) -> HostVecEnv:
    """`num_envs` host envs by name ("gymnasium:<id>" or "envpool:<task_id>"); `sticky_actions` is for Atari
    tasks on envpool (`EnvConfig.sticky_actions`)."""
    if is_envpool(name):
        return EnvpoolVecEnv(name, num_envs, sticky_actions)
    if not is_gymnasium(name):
        raise ValueError(
            f"{name!r} is not a host env name (host envs: 'gymnasium:<id>', 'envpool:<task_id>')"
        )
    return GymnasiumVecEnv(name, num_envs)


__all__ = [
    "EnvSpec",
    "EnvState",
    "EnvpoolVecEnv",
    "GymnasiumVecEnv",
    "GymnaxState",
    "GymnaxVecEnv",
    "HostVecEnv",
    "TimeStep",
    "VecEnv",
    "env_spec",
    "first_timestep",
    "is_envpool_atari",
    "is_host_env",
    "list_envs",
    "make_env",
    "make_host_env",
    "rescale_action",
]
