"""The sequence-backbone interface of the world model, and the registry that `wm.backbone` picks from.

A backbone is the recurrent core of the RSSM: a flax module with

    __call__(state, stoch, action) -> state   one step: h_t = f(h_{t-1}, z_{t-1}, a_{t-1})
    to_state(deter [B, D])         -> state   the state in the backbone's own layout (no parameters)
    to_deter(state)                -> [B, D]  and back: the deterministic features the heads read
    grouped: bool                             True when the state is group-major [g, B, D/g]

`stoch` is the flattened previous latent [B, S*K], `action` the previous action [B, A]; the state of
an episode start is `to_state(zeros)`. The world model converts the latent to the backbone's layout once
before its loops over time (`observe` over a window, `imagine` over the horizon) and back once after, so a
backbone keeps whatever layout is fastest across the scan; the prior and posterior layers read the state in
place (per group when `grouped`, through `GroupedDense`, whose parameters equal a flat Dense's). The
state's last two axes are [B, d] in either layout.

Adding a backbone: one file with the module and a line `register_backbone("x", make_x)` where
`make_x(wm_config) -> module` (its settings a config group `wm.x`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class BackboneDef:
    make: Callable[[Any], nn.Module]  # WorldModelConfig -> module


BACKBONES: dict[str, BackboneDef] = {}


def register_backbone(name: str, make: Callable[[Any], nn.Module]) -> None:
    """Makes `wm.backbone=name` build the world model's core with `make(config.wm)`."""
    BACKBONES[name] = BackboneDef(make)


def make_backbone(wm_config: Any) -> nn.Module:
    return BACKBONES[wm_config.backbone].make(wm_config)


def _make_block_gru(wm_config: Any) -> nn.Module:
    from mbrl_jax.world_models.gru import BlockGRU

    return BlockGRU(wm_config.deter, wm_config.hidden, wm_config.gru.blocks)


register_backbone("gru", _make_block_gru)


def _make_mamba(wm_config: Any) -> nn.Module:
    from mbrl_jax.world_models.mamba import Mamba2

    m = wm_config.mamba
    return Mamba2(wm_config.deter, m.layers, m.expand, m.head_dim, m.state, m.conv, m.chunk)


register_backbone("mamba", _make_mamba)


def _make_transformer(wm_config: Any) -> nn.Module:
    from mbrl_jax.world_models.transformer import Transformer

    m = wm_config.transformer
    return Transformer(wm_config.deter, m.layers, m.heads, m.context, m.mlp_ratio)


register_backbone("transformer", _make_transformer)
