"""Agents behind one interface (`Agent`), picked by `agent=` from the `AGENTS` registry.

The built-in agents are registered here; each line names what the rest of the code asks of an agent (see
`register_agent`). Everything else about an agent lives in its own module.
"""

from mbrl_jax.agents import drama, dreamer, tdmpc2
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

register_agent(
    "dreamer",
    dreamer.make_dreamer,
    config=dreamer.DreamerConfig,
    help="DreamerV3's actor-critic in imagination",
    reads=("wm", "optim"),
    check=dreamer.check_dreamer,
    memory=dreamer.activation_floats,
    presets={**dreamer.DREAMER_PRESETS},
)
register_agent(
    "drama",
    drama.make_drama,
    config=drama.DramaConfig,
    help="Drama's Mamba-2 world model and actor-critic in imagination (the authors' code)",
    reads=(),
    check=drama.check_drama,
    memory=drama.activation_floats,
    presets={**drama.DRAMA_PRESETS},
)
register_agent(
    "tdmpc2",
    tdmpc2.make_tdmpc2,
    config=tdmpc2.TDMPC2Config,
    help="TD-MPC2's latent model, Q ensemble, policy prior and MPPI",
    check=tdmpc2.check_tdmpc2,
    memory=tdmpc2.activation_floats,
    presets={**tdmpc2.TDMPC2_TASK_PRESETS, **tdmpc2.TDMPC2_SIZE_PRESETS},
)

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
