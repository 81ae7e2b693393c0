"""The agent interface that the training loop sees, and the registry that `agent=` picks from.

An agent is a record of pure functions over pytrees it defines itself (the training loop never looks inside;
memory estimates and parameter counts read the state's `params`, the trained weights):

    init(key)                                              -> agent state
    initial_carry(n)                                       -> policy carry for n envs
    act(state, carry, obs, prev_action, is_first, key, mode) -> (action [n, A], carry)
    learn(state, batch, key)                               -> (state, metrics, writes)
    replay_context(carry)                                  -> {name: [n, ...]} stored with each replay step

`prev_action` is the action that led to `obs` (the loop owns it, so that random prefill steps and policy
steps look alike to the agent); `writes` are per-step fields for the last `batch_length` steps of the sampled
windows that the loop writes back to the replay ({} when the agent stores nothing). Actions are vectors:
one-hot for discrete envs, values in [-1, 1] for continuous ones (`env_action` maps them to the env's).

Adding an agent: one file with a `make_x(config, spec) -> Agent`, its settings (a frozen dataclass of
`mbrl_jax.settings.setting` fields, the group `Config.x`) and a call

    register_agent("x", make_x, config=XConfig, help=..., reads=("wm",), check=..., memory=..., presets=...)

`reads` names the groups it reads besides run, env, replay and its own (a setting in any other group is
refused, as the agent would ignore it); `check(config, spec)` raises ConfigError for a setting or env it
cannot take; `memory(config, obs_shapes)` estimates the float32 values one update keeps per replayed step
(mbrl_jax/memory.py); `presets` are named settings (`--preset name`). The built-in agents are registered in
`mbrl_jax/agents/__init__.py`; a user's agent registers the same way from its own module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from mbrl_jax.envs.base import EnvSpec
from mbrl_jax.settings import register_group, register_presets

if TYPE_CHECKING:
    from mbrl_jax.config import Config


@dataclasses.dataclass(frozen=True)
class Agent:
    init: Callable
    initial_carry: Callable
    act: Callable
    learn: Callable
    replay_context: Callable


@dataclasses.dataclass(frozen=True)
class AgentDef:
    """A registry entry: how to build the agent and what else the rest of the code asks of it."""

    make: Callable[[Config, EnvSpec], Agent]
    config: type | None = None  # its settings, the group Config.<name>
    reads: tuple[str, ...] = ()  # other groups it reads besides run, env, replay and its own
    check: Callable[[Config, EnvSpec], None] | None = None
    memory: Callable[[Config, dict], int] | None = None  # float32 values kept per replayed step


AGENTS: dict[str, AgentDef] = {}


def register_agent(
    name: str,
    make: Callable[[Config, EnvSpec], Agent],
    *,
    config: type | None = None,
    help: str = "",
    reads: tuple[str, ...] = (),
    check: Callable[[Config, EnvSpec], None] | None = None,
    memory: Callable[[Config, dict], int] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Makes `agent=name` build `make(config, spec)`. `check(config, spec)` raises ConfigError for an env or
    setting the agent cannot take; it runs in config validation, before anything is compiled."""
    AGENTS[name] = AgentDef(make, config, tuple(reads), check, memory)
    if config is not None:
        register_group("", name, config, help, owner=f"agent {name!r}")
    if presets:
        register_presets(presets, owner=f"agent {name!r}")


def check_agent(config: Config, spec: EnvSpec) -> None:
    entry = AGENTS[config.agent]
    if entry.check is not None:
        entry.check(config, spec)


def make_agent(config: Config, spec: EnvSpec) -> Agent:
    """The agent that `config.agent` names, for envs of `spec`."""
    return AGENTS[config.agent].make(config, spec)


def random_action(spec: EnvSpec, n: int, key) -> jax.Array:
    """Uniform random actions in the agent's format: one-hot [n, A] or [-1, 1]^A."""
    if spec.discrete:
        return jax.nn.one_hot(jax.random.randint(key, (n,), 0, spec.action_dim), spec.action_dim)
    return jax.random.uniform(key, (n, spec.action_dim), minval=-1.0, maxval=1.0)


def env_action(spec: EnvSpec, action: jax.Array) -> jax.Array:
    """Agent action vector -> what the env adapter takes (index for discrete envs)."""
    return jnp.argmax(action, -1).astype(jnp.int32) if spec.discrete else action
