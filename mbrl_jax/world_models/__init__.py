"""World models and their sequence backbones, picked by `wm.backbone` from the `BACKBONES` registry."""

from mbrl_jax.world_models.backbone import BACKBONES, BackboneDef, make_backbone, register_backbone

__all__ = ["BACKBONES", "BackboneDef", "make_backbone", "register_backbone"]
