"""The sequence-backbone interface of the world model, and the registry that `wm.backbone` picks from.

A backbone is the recurrent core of the RSSM: a flax module with

    initial_state(batch_shape)      -> state   (any pytree; zeros at an episode start)
    __call__(state, stoch, action)  -> state   one step: h_t = f(h_{t-1}, z_{t-1}, a_{t-1})
    output(state)                   -> [..., wm.deter]  the deterministic features the heads read

`stoch` is the flattened previous latent [..., S*K], `action` the previous action [..., A]. The world model
masks the state to `initial_state` at episode starts, scans `__call__` over a window in `observe` and over the
horizon in `imagine`, and never looks inside the state, so a backbone may keep whatever layout is fastest
across the scan.

Adding a backbone: one file with a flax module and a line `register_backbone("x", make_x)` where
`make_x(wm_config) -> module`.
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
