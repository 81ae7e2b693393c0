"""The agent interface that the training loop sees, and the registry that `agent=` picks from.

An agent is a record of pure functions over pytrees it defines itself (the training loop never looks inside):

    init(key)                                              -> agent state
    initial_carry(n)                                       -> policy carry for n envs
    act(state, carry, obs, prev_action, is_first, key, mode) -> (action [n, A], carry)
    learn(state, batch, key)                               -> (state, metrics, writes)
    replay_context(carry)                                  -> {name: [n, ...]} stored with each replay step

`prev_action` is the action that led to `obs` (the loop owns it, so that random prefill steps and policy
steps look alike to the agent); `writes` are per-step fields for the last `batch_length` steps of the sampled
windows that the loop writes back to the replay ({} when the agent stores nothing). Actions are vectors:
one-hot for discrete envs, values in [-1, 1] for continuous ones (`env_action` maps them to the env's).

Adding an agent: one file with a `make_x(config, spec) -> Agent` and a line
`register_agent("x", make_x, check=..., config_group="x")` (its settings are `Config.x`, a frozen dataclass
group of the config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mbrl_jax.config import Config
from mbrl_jax.envs import EnvSpec


@dataclasses.dataclass(frozen=True)
class Agent:
    init: Callable
    initial_carry: Callable
    act: Callable
    learn: Callable
    replay_context: Callable


@dataclasses.dataclass(frozen=True)
class AgentDef:
    """A registry entry: how to build the agent, which (config, env) it accepts, the config group it reads."""

    make: Callable[[Config, EnvSpec], Agent]
    check: Callable[[Config, EnvSpec], None] | None = None
    config_group: str | None = None


AGENTS: dict[str, AgentDef] = {}


def register_agent(
    name: str,
    make: Callable[[Config, EnvSpec], Agent],
    check: Callable[[Config, EnvSpec], None] | None = None,
    config_group: str | None = None,
) -> None:
    """Makes `agent=name` build `make(config, spec)`. `check(config, spec)` raises ConfigError for an env or
    setting the agent cannot take; it runs in config validation, before anything is compiled."""
    AGENTS[name] = AgentDef(make, check, config_group)


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
