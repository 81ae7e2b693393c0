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
from mbrl_jax.agents.tdmpc2 import check_tdmpc2, make_tdmpc2

register_agent("dreamer", make_dreamer, check=check_dreamer, config_group="dreamer")
register_agent("tdmpc2", make_tdmpc2, check=check_tdmpc2, config_group="tdmpc2")

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
