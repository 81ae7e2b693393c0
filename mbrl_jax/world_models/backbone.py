"""The sequence-backbone interface of the world model, and the registry that `wm.backbone` picks from.

A backbone is the recurrent core of the RSSM: a flax module with

    __call__(state, stoch, action) -> state   one step: h_t = f(h_{t-1}, z_{t-1}, a_{t-1})
    to_state(deter [B, D])         -> state   the state in the backbone's own layout (no parameters)
    to_deter(state)                -> [B, D]  and back: the deterministic features the heads read
    grouped: bool                             True when the state is group-major [g, B, D/g]
    parallel: bool                            False for a step-by-step core (above), True for a parallel one

`stoch` is the flattened previous latent [B, S*K], `action` the previous action [B, A]; the state of
an episode start is `to_state(zeros)`. The world model converts the latent to the backbone's layout once
before its loops over time (`observe` over a window, `imagine` over the horizon) and back once after, so a
backbone keeps whatever layout is fastest across the scan; the prior and posterior layers read the state in
place (per group when `grouped`, through `GroupedDense`, whose parameters equal a flat Dense's). The
state's last two axes are [B, d] in either layout.

A parallel core (`parallel = True`: Mamba-2, the Transformer) trains on a whole window at once and keeps a
recurrent state of its own, larger than h (a conv window and SSM state, a key/value cache). The world model
then feeds it the previous latent and action embedded to [B, D] and calls

    initial_state(batch_shape)                      -> state   an episode start (zeros)
    sequence(inputs [B, T, D], reset [B, T], state) -> (h [B, T, D], per-step states)   training
    step(input [B, D], state)                       -> (h [B, D], state)                acting, imagining

where `reset` marks episode starts (nothing before one is seen), and the per-step states are the states
after each step (imagination starts from them). Its replay windows start from zeros
(`replay.context=false`), since the replay stores h only.

Adding a backbone: one file with the module, its settings (a frozen dataclass, the group `wm.<name>`) and a
line `register_backbone("x", make_x, config=XConfig, help=..., check=...)`, `make_x(wm_config) -> module`
(its settings are `wm_config.x`), `check(wm_config, path)` raising ConfigError for settings that do not fit
(optional). The built-in backbones are registered in `mbrl_jax/world_models/__init__.py`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn

from mbrl_jax.settings import register_group, register_presets


@dataclasses.dataclass(frozen=True)
class BackboneDef:
    make: Callable[[Any], nn.Module]  # WorldModelConfig -> module
    config: type | None = None  # its settings, the group wm.<name>
    check: Callable[[Any, str], None] | None = None  # (WorldModelConfig, its path) -> raises ConfigError


BACKBONES: dict[str, BackboneDef] = {}


def register_backbone(
    name: str,
    make: Callable[[Any], nn.Module],
    *,
    config: type | None = None,
    help: str = "",
    check: Callable[[Any, str], None] | None = None,
    presets: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Makes `wm.backbone=name` build the world model's core with `make(config.wm)`; `config`, if given, is
    the backbone's settings group (`wm.<name>`), `presets` named settings (`--preset <name>`)."""
    BACKBONES[name] = BackboneDef(make, config, check)
    if config is not None:
        register_group("wm", name, config, help, owner=f"backbone {name!r}")
    if presets:
        register_presets(presets, owner=f"backbone {name!r}")


def make_backbone(wm_config: Any) -> nn.Module:
    return BACKBONES[wm_config.backbone].make(wm_config)
