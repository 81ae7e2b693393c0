"""A fourth backbone in one file, outside the package: a plain tanh RNN with a flat state,
h_t = tanh(scale * W [h_{t-1}, z_{t-1}, a_{t-1}]). Its settings are the group `wm.tanh_rnn`, its preset
`tanh_rnn`. `register()` is all it takes to use it (`wm.backbone=tanh_rnn`); tests call it from a fixture."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax.numpy as jnp

from mbrl_jax.errors import ConfigError
from mbrl_jax.settings import POSITIVE, setting
from mbrl_jax.world_models import register_backbone


@dataclasses.dataclass(frozen=True)
class TanhRNNConfig:
    scale: float = setting(1.0, "pre-activation scale of the update", POSITIVE)


class TanhRNN(nn.Module):
    deter: int
    scale: float
    parallel = False
    grouped = False

    def to_state(self, deter):
        return deter

    def to_deter(self, state):
        return state

    @nn.compact
    def __call__(self, state, stoch, action):
        return jnp.tanh(self.scale * nn.Dense(self.deter)(jnp.concatenate([state, stoch, action], -1)))


def check_tanh_rnn(wm, path: str) -> None:
    if wm.tanh_rnn.scale > 10:
        raise ConfigError(f"{path}.tanh_rnn.scale={wm.tanh_rnn.scale} saturates the tanh; allowed: <= 10")


def register() -> str:
    register_backbone(
        "tanh_rnn",
        lambda wm: TanhRNN(wm.deter, wm.tanh_rnn.scale),
        config=TanhRNNConfig,
        help="plain tanh RNN (tests/toy_backbone.py)",
        check=check_tanh_rnn,
        presets={"tanh_rnn": {"wm.backbone": "tanh_rnn"}},
    )
    return "tanh_rnn"
