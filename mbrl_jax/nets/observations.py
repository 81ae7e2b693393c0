"""A dict observation through a world model's encoders and decoders, as DreamerV3 takes it: the vector keys,
concatenated, go through a symlog and an MLP, the image keys, concatenated along channels, through an image
encoder; the embedding is both side by side. The decoders mirror it: an MLP head predicts the symlogged
vectors and an image decoder the pixels / 255.

`ObservationCoding` is mixed into a world model (a flax Module with the fields `obs_shapes`, `depth` and
`conv`): DreamerV3's (mbrl_jax/world_models/rssm.py) and Drama's (mbrl_jax/agents/drama.py), which differ in
the image networks and in what the decoder reads. Its networks are the model's own attributes ("encoder",
"decoder", "image_encoder", "image_decoder"), so their parameters sit where they always have.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbrl_jax.nets.distributions import symlog
from mbrl_jax.nets.layers import MLP, Head


def split_last(x: jax.Array, sizes: list[int]) -> list[jax.Array]:
    """x [..., sum(sizes)] -> pieces [..., size] along the last axis, in order."""
    return jnp.split(x, list(itertools.accumulate(sizes))[:-1], -1)


class ObservationCoding:
    """Encoders and decoders of a dict observation (module docstring), for a flax Module with `obs_shapes`
    ((key, shape) pairs, sorted by key), `depth` and `conv` (mbrl_jax/nets/image.py) among its fields."""

    @property
    def vector_keys(self) -> tuple[str, ...]:
        return tuple(k for k, shape in self.obs_shapes if len(shape) == 1)

    @property
    def image_keys(self) -> tuple[str, ...]:
        return tuple(k for k, shape in self.obs_shapes if len(shape) == 3)

    def setup_observation_nets(
        self,
        units: int,
        enc_layers: int,
        dec_layers: int,
        image_encoder: Callable[[int, str], nn.Module],
        image_decoder: Callable[[tuple[int, int, int], int, str], nn.Module],
    ) -> None:
        """From `setup`: the MLP encoder and decoder head of the vector keys, and `image_encoder(depth, conv)`
        and `image_decoder((H, W, C), depth, conv)` for the image keys, where the observation has them."""
        shapes = dict(self.obs_shapes)
        if self.vector_keys:
            self.encoder = MLP(units, enc_layers)
            self.decoder = Head(sum(shapes[k][0] for k in self.vector_keys), units, dec_layers)
        if self.image_keys:
            height, width = shapes[self.image_keys[0]][:2]
            channels = sum(shapes[k][2] for k in self.image_keys)
            self.image_encoder = image_encoder(self.depth, self.conv)
            self.image_decoder = image_decoder((height, width, channels), self.depth, self.conv)

    def encode_observation(self, obs: dict[str, jax.Array], *image_args) -> jax.Array:
        """{key: [..., *shape]} -> [..., embed]; `image_args` go to the image encoder after the image."""
        parts = []
        if self.vector_keys:
            parts.append(self.encoder(symlog(jnp.concatenate([obs[k] for k in self.vector_keys], -1))))
        if self.image_keys:
            image = jnp.concatenate([obs[k] for k in self.image_keys], -1)
            parts.append(self.image_encoder(image, *image_args))
        return jnp.concatenate(parts, -1)

    def decode_observation(self, feat: jax.Array, *image_args) -> dict[str, jax.Array]:
        """feat [..., F] -> {key: prediction}: symlog vectors, images as pixels / 255 in [0, 1]."""
        shapes, out = dict(self.obs_shapes), {}
        if self.vector_keys:
            sizes = [shapes[k][0] for k in self.vector_keys]
            out.update(zip(self.vector_keys, split_last(self.decoder(feat), sizes), strict=True))
        if self.image_keys:
            sizes = [shapes[k][2] for k in self.image_keys]
            image = self.image_decoder(feat, *image_args)
            out.update(zip(self.image_keys, split_last(image, sizes), strict=True))
        return out
