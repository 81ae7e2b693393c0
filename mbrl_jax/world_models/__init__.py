"""World models and their sequence backbones, picked by `wm.backbone` from the `BACKBONES` registry.

The world model's settings are the group `wm`, each backbone's the group `wm.<name>`; both are registered
here, with their presets, so that `mbrl_jax.config` finds them.
"""

from mbrl_jax.settings import register_group, register_presets
from mbrl_jax.world_models.backbone import BACKBONES, BackboneDef, make_backbone, register_backbone
from mbrl_jax.world_models.gru import GRUConfig, check_gru, make_block_gru
from mbrl_jax.world_models.mamba import MAMBA_PRESETS, MambaConfig, check_mamba, make_mamba
from mbrl_jax.world_models.rssm import SIZE_PRESETS, WorldModelConfig
from mbrl_jax.world_models.transformer import (
    TRANSFORMER_PRESETS,
    TransformerConfig,
    check_transformer,
    make_transformer,
)

register_group(
    "", "wm", WorldModelConfig, "the world model and its sequence backbone", owner="the world model"
)
register_presets(SIZE_PRESETS, owner="the world model")
register_backbone("gru", make_block_gru, config=GRUConfig, help="block GRU backbone", check=check_gru)
register_backbone(
    "mamba",
    make_mamba,
    config=MambaConfig,
    help="Mamba-2 backbone (Drama)",
    check=check_mamba,
    presets=MAMBA_PRESETS,
)
register_backbone(
    "transformer",
    make_transformer,
    config=TransformerConfig,
    help="causal Transformer backbone",
    check=check_transformer,
    presets=TRANSFORMER_PRESETS,
)

__all__ = ["BACKBONES", "BackboneDef", "WorldModelConfig", "make_backbone", "register_backbone"]
