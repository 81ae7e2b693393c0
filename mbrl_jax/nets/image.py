"""DreamerV3's image encoder and decoder: stride-2 convolutions with RMSNorm and SiLU down to a small
spatial map, and the mirrored transposed convolutions back up.

Stages: an image is halved (kernel 5, stride 2, 'SAME' padding) while both sides are even and larger than
`MIN_RES` (the reference's `minres`): 64 x 64 takes 4 stages down to 4 x 4, MinAtar's 10 x 10 one stage to
5 x 5. Stage i has `depth * MULTS[i]` channels (the reference's `depth` and `mults`, depth from the size
preset). The decoder maps the latent features linearly to the smallest map, then runs the stages in reverse
with transposed convolutions; its last one outputs the image's channels through a sigmoid, so predictions lie
in [0, 1] like the target pixels / 255. The reference halves with convolution then 2 x 2 max-pooling by
default ("strided: False"); the strided form used here is its `strided: True` option and the paper's.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from mbrl_jax.nets.layers import dense_init

MIN_RES = 4
MULTS = (2, 3, 4, 4)
KERNEL = 5


def image_stages(height: int, width: int) -> int:
    """How many stride-2 stages an image of this size takes (see the module docstring)."""
    stages = 0
    while stages < len(MULTS) and all(s % 2 == 0 and s > MIN_RES for s in (height, width)):
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


def image_depths(height: int, width: int, depth: int) -> tuple[int, ...]:
    """Channels of each stage, shallowest first."""
    return tuple(depth * m for m in MULTS[: image_stages(height, width)])


def scale_image(image: jax.Array) -> jax.Array:
    """uint8 pixels in 0..255 -> float32 in [-0.5, 0.5], what the encoder reads (reference)."""
    return image.astype(jnp.float32) / 255.0 - 0.5


def image_target(image: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1], what the decoder's sigmoid output regresses."""
    return image.astype(jnp.float32) / 255.0


def _conv_init():
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


class ImageEncoder(nn.Module):
    """[..., H, W, C] uint8 -> [..., h * w * depths[-1]] features."""

    depth: int

    @nn.compact
    def __call__(self, image: jax.Array) -> jax.Array:
        lead, (height, width, channels) = image.shape[:-3], image.shape[-3:]
        depths = image_depths(height, width, self.depth)
        if not depths:
            raise ValueError(
                f"an image of {height} x {width} cannot be halved: sides must be even and > {MIN_RES}"
            )
        x = scale_image(image).reshape(-1, height, width, channels)
        for i, d in enumerate(depths):
            x = nn.Conv(
                d, (KERNEL, KERNEL), strides=(2, 2), padding="SAME", kernel_init=_conv_init(), name=f"conv{i}"
            )(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name=f"norm{i}")(x))
        return x.reshape(*lead, -1)


class ImageDecoder(nn.Module):
    """[..., F] features -> [..., H, W, C] predicted pixels in [0, 1]."""

    shape: tuple[int, int, int]  # H, W, C of the image
    depth: int

    @nn.compact
    def __call__(self, feat: jax.Array) -> jax.Array:
        height, width, channels = self.shape
        depths = image_depths(height, width, self.depth)
        factor = 2 ** len(depths)
        small = (height // factor, width // factor, depths[-1])
        lead = feat.shape[:-1]
        x = nn.Dense(small[0] * small[1] * small[2], kernel_init=dense_init, name="space")(feat)
        x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name="space_norm")(x))
        x = x.reshape(-1, *small)
        for i, d in reversed(list(enumerate(depths[:-1]))):
            x = nn.ConvTranspose(
                d, (KERNEL, KERNEL), strides=(2, 2), padding="SAME", kernel_init=_conv_init(), name=f"conv{i}"
            )(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name=f"norm{i}")(x))
        x = nn.ConvTranspose(
            channels, (KERNEL, KERNEL), strides=(2, 2), padding="SAME", kernel_init=_conv_init(), name="out"
        )(x)
        return jax.nn.sigmoid(x).reshape(*lead, height, width, channels)
