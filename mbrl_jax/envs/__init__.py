"""Batched envs: one interface (`VecEnv`, `TimeStep`, `EnvSpec`) and its adapters.

gymnax ids ("CartPole-v1") and craftax names ("craftax:Craftax-Classic-Symbolic-v1") are on-device `VecEnv`s.
"gymnasium:<id>" and "envpool:<task_id>" names are host envs: simulated on the host, so never vmapped over
seeds or split over devices. Which loop drives an env is
`env.loop` (`resolve_loop`): the compiled loop takes `VecEnv`s (gymnax, craftax, and envpool through its XLA
interface, `EnvpoolXlaVecEnv`); the host loop (`mbrl_jax.host_loop`) takes `HostVecEnv`s (`GymnasiumVecEnv`,
`EnvpoolVecEnv`).
"""

import contextlib
import shlex

from mbrl_jax.envs.base import EnvConfig, EnvSpec, EnvState, TimeStep, VecEnv, first_timestep, rescale_action
from mbrl_jax.envs.craftax_env import CraftaxVecEnv, crafter_score, is_craftax, unknown_craftax_env
from mbrl_jax.envs.envpool_env import (
    EnvpoolState,
    EnvpoolVecEnv,
    EnvpoolXlaSweep,
    EnvpoolXlaVecEnv,
    is_envpool,
    is_envpool_atari,
    is_envpool_dmc,
    xla_unsupported,
)
from mbrl_jax.envs.gymnasium_env import GymnasiumVecEnv, HostVecEnv, is_gymnasium
from mbrl_jax.envs.gymnax_env import GymnaxState, GymnaxVecEnv, list_envs
from mbrl_jax.envs.gymnax_env import env_spec as gymnax_env_spec
from mbrl_jax.envs.gymnax_env import make_env as make_gymnax_env
from mbrl_jax.errors import ConfigError, did_you_mean

LOOPS = ("auto", "compiled", "host")


def is_host_env(name: str) -> bool:
    """Whether `name` is an env stepped on the host (Python), which only the host loop can drive."""
    return is_gymnasium(name) or is_envpool(name)


def resolve_loop(name: str, loop: str = "auto") -> str:
    """The loop that drives env `name` under `env.loop=loop`: "compiled" (act, env step and learn in one
    compiled chunk: gymnax, envpool through its XLA interface) or "host" (env steps in Python: Gymnasium,
    envpool where its XLA interface cannot serve). "auto" takes the compiled loop wherever it works.
    ConfigError, naming the reason, where the loop asked for cannot drive the env."""
    if loop not in LOOPS:
        raise ConfigError(f"env.loop={loop!r} is not known; allowed: {', '.join(map(repr, LOOPS))}")
    if is_gymnasium(name):
        if loop == "compiled":
            raise ConfigError(
                f"env.loop=compiled with env.name={name!r}: a Gymnasium env steps in Python, so only the "
                "host loop drives it; allowed: env.loop=auto or host"
            )
        return "host"
    if is_envpool(name):
        if loop == "host":
            return "host"
        reason = xla_unsupported(name)
        if reason is None:
            return "compiled"
        if loop == "compiled":
            raise ConfigError(
                f"env.loop=compiled with env.name={name!r}: {reason}; allowed here: env.loop=auto or host"
            )
        return "host"
    if loop == "host":
        kind = "craftax" if is_craftax(name) else "gymnax"
        raise ConfigError(
            f"env.loop=host with env.name={name!r}: a {kind} env runs on device, in the compiled loop; "
            "allowed: env.loop=auto or compiled (the host loop is for 'gymnasium:' and 'envpool:' envs)"
        )
    return "compiled"


def make_env(
    name: str,
    num_envs: int,
    seed: int = 0,
    sticky_actions: float = 0.25,
    sweep_seeds: list[int] | None = None,
) -> VecEnv:
    """`num_envs` envs for the compiled loop: a gymnax id ("CartPole-v1") or an envpool task on its XLA
    interface ("envpool:CartPole-v1", seeded with `seed`; `sticky_actions` is for its Atari tasks). gymnax
    envs take their randomness from the keys of `reset` and `step` and ignore `seed`.
    `sweep_seeds`: the envs of a seed sweep's program (vmapped over seeds), seed s's seeded with
    `sweep_seeds[s]` instead of `seed` (envpool: one pool per seed, `EnvpoolXlaSweep`; gymnax: the same)."""
    if is_envpool(name):
        if sweep_seeds is not None:
            return EnvpoolXlaSweep(name, num_envs, sweep_seeds, sticky_actions)
        return EnvpoolXlaVecEnv(name, num_envs, seed, sticky_actions)
    if is_gymnasium(name):
        raise ConfigError(
            f"env.name={name!r} is a Gymnasium env: only the host loop drives it (make_host_env)"
        )
    if is_craftax(name):
        with missing_package_as_config_error(name):
            return CraftaxVecEnv(name, num_envs)
    return make_gymnax_env(name, num_envs)


def env_spec(name: str, action_repeat: int = 1) -> EnvSpec:
    """Spec of the env `name`: a gymnax id, "gymnasium:<id>" or "envpool:<task_id>" (see the module
    docstring); `action_repeat` (envpool DMC tasks) counts the time limit in agent steps."""
    if is_gymnasium(name):
        from mbrl_jax.envs.gymnasium_env import env_spec as gymnasium_env_spec

        with missing_package_as_config_error(name):
            return gymnasium_env_spec(name)
    if is_envpool(name):
        from mbrl_jax.envs.envpool_env import env_spec as envpool_env_spec

        return envpool_env_spec(name, action_repeat)
    if is_craftax(name):
        from mbrl_jax.envs.craftax_env import env_spec as craftax_env_spec

        with missing_package_as_config_error(name):
            return craftax_env_spec(name)
    return gymnax_env_spec(name)


def check_env_settings(env: EnvConfig, devices: int) -> None:
    """Raises ConfigError for an env name that is not known, or env settings that do not apply to it."""
    default_sticky = EnvConfig.sticky_actions
    if env.sticky_actions != default_sticky and not is_envpool_atari(env.name):
        raise ConfigError(
            f"env.sticky_actions={env.sticky_actions} applies to Atari tasks on envpool "
            f"('envpool:Pong-v5'); env.name={env.name!r} is not one: leave it at "
            f"{default_sticky}"
        )
    if env.action_repeat != 1 and not is_envpool_dmc(env.name):
        raise ConfigError(
            f"env.action_repeat={env.action_repeat} applies to DMC tasks on envpool "
            f"('envpool:WalkerWalk-v1'), whose episodes all last the same number of env steps; "
            f"env.name={env.name!r} is not one: leave it at 1 (Atari's action repeat of 4 is "
            "envpool's frame skip)"
        )
    if is_host_env(env.name):
        if devices != 1:
            raise ConfigError(
                f"run.devices={devices} with env.name={env.name!r}: a host env is one "
                "set of envs on the host, which feeds one device; allowed: run.devices=1"
            )
    elif is_craftax(env.name):
        reason = unknown_craftax_env(env.name)
        if reason is not None:
            raise ConfigError(reason)
    elif env.name not in list_envs():
        hint = did_you_mean(env.name, list_envs())
        raise ConfigError(
            f"env.name={env.name!r} is not a known gymnax env{hint} (craftax envs: 'craftax:<id>', e.g. "
            "'craftax:Craftax-Classic-Symbolic-v1'; host envs: 'gymnasium:<id>', e.g. "
            "'gymnasium:CartPole-v1', or 'envpool:<task_id>')"
        )


def make_host_env(
    name: str, num_envs: int, sticky_actions: float = 0.25, action_repeat: int = 1
) -> HostVecEnv:
    """`num_envs` host envs by name ("gymnasium:<id>" or "envpool:<task_id>"); `sticky_actions` is for Atari
    tasks on envpool, `action_repeat` for its DMC tasks (`EnvConfig`)."""
    if is_envpool(name):
        return EnvpoolVecEnv(name, num_envs, sticky_actions, action_repeat)
    if not is_gymnasium(name):
        raise ValueError(
            f"{name!r} is not a host env name (host envs: 'gymnasium:<id>', 'envpool:<task_id>')"
        )
    with missing_package_as_config_error(name):
        return GymnasiumVecEnv(name, num_envs)


@contextlib.contextmanager
def missing_package_as_config_error(name: str):
    """Turns a package that env `name` needs and cannot import (missing, or broken) into a one-line
    ConfigError naming the package and how to install it, instead of a traceback from deep in its import."""
    try:
        from gymnasium.error import DependencyNotInstalled
    except ImportError:  # no Gymnasium: what it needs is the ImportError below
        DependencyNotInstalled = ()  # noqa: N806
    try:
        yield
    except DependencyNotInstalled as err:  # Gymnasium's own message says what to install
        raise ConfigError(f"env.name={name!r} needs a package that is not installed: {err}") from None
    except ImportError as err:
        package = (err.name or "").split(".")[0] or "a package it imports"
        install = f"pip install {shlex.quote(package)}" if err.name else "reinstall its package"
        raise ConfigError(
            f"env.name={name!r} cannot import {package} ({type(err).__name__}: {err}); {install}"
        ) from None


__all__ = [
    "CraftaxVecEnv",
    "EnvConfig",
    "EnvSpec",
    "check_env_settings",
    "EnvState",
    "EnvpoolState",
    "EnvpoolVecEnv",
    "EnvpoolXlaSweep",
    "EnvpoolXlaVecEnv",
    "LOOPS",
    "GymnasiumVecEnv",
    "GymnaxState",
    "GymnaxVecEnv",
    "HostVecEnv",
    "TimeStep",
    "VecEnv",
    "crafter_score",
    "env_spec",
    "first_timestep",
    "is_craftax",
    "is_envpool_atari",
    "is_envpool_dmc",
    "is_host_env",
    "list_envs",
    "make_env",
    "make_host_env",
    "rescale_action",
    "resolve_loop",
    "xla_unsupported",
]
