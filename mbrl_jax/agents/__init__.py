"""Agents behind one interface (`Agent`), picked by `agent=` from the `AGENTS` registry."""

from mbrl_jax.agents.base import (
    AGENTS,
    Agent,
    AgentDef,
    check_agent,
    env_action,
    make_agent,
    random_action,
    register_agent,
)
from mbrl_jax.agents.dreamer import check_dreamer, make_dreamer

register_agent("dreamer", make_dreamer, check=check_dreamer, config_group="dreamer")

__all__ = [
    "AGENTS",
    "Agent",
    "AgentDef",
    "check_agent",
    "env_action",
    "make_agent",
    "random_action",
    "register_agent",
]
