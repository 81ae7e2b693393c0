"""DreamerV3's image encoder and decoder: stride-2 convolutions with RMSNorm and SiLU down to a small
spatial map, and the mirrored transposed convolutions back up.

Stages: an image is halved (kernel 5, stride 2, 'SAME' padding) while both sides are even and larger than
`MIN_RES` (the reference's `minres`): 64 x 64 takes 4 stages down to 4 x 4, MinAtar's 10 x 10 one stage to
5 x 5. Stage i has `depth * MULTS[i]` channels (the reference's `depth` and `mults`, depth from the size
preset). The decoder maps the latent features linearly to the smallest map, then runs the stages in reverse
with transposed convolutions; its last one outputs the image's channels through a sigmoid, so predictions lie
in [0, 1] like the target pixels / 255. The reference halves with convolution then 2 x 2 max-pooling by
default ("strided: False"); the strided form used here is its `strided: True` option and the paper's.

Each convolution takes one of two forms (`wm.conv`, resolved by `conv_form`), which compute the same
function as `flax.linen.Conv` / `ConvTranspose` with 'SAME' padding from the same parameters (flax's
'kernel' HWIO and 'bias'), so a checkpoint moves between them (tests/test_pixels.py checks both against
flax's and against each other, values and gradients):

- `patches`: matrix products of image patches (`conv_same`, `conv_transpose_same`). On CPU, XLA runs a
  convolution inside a loop body (the compiled chunk's `lax.scan` over learner updates) 10-100x slower than
  the same convolution outside one (jax-ml/jax#12868); a patch matrix times the kernel is a plain dot, which
  loops do not slow down. The transposed convolution is written in its sub-pixel form: one stride-1
  convolution giving each of the 2 x 2 output phases, then depth-to-space, so no multiply is spent on the
  zeros a stride-2 transposed convolution inserts. The price is memory: a k x k patch matrix holds k * k
  times its input, and XLA keeps it for the kernel's gradient (a `jax.checkpoint` does not stop that: XLA
  CPU drops the barrier and merges the recomputation with the forward's). So a layer whose patch matrix
  would pass `PATCH_BYTES` (the learner's batch at 64 x 64: 300 MiB for the first layer at size1m) runs
  over the batch in chunks of at most that much (`patch_product`), and its backward pass rebuilds each
  chunk's patches from the layer's input instead of keeping them: an rgb64,size1m update's temporaries
  fall from 2.5 to 1.5 GiB at about the same speed. Smaller layers (acting, MinAtar's 10 x 10 grids) are
  one product, as before.
- `xla`: XLA's convolution ops (`conv_same_xla`, `conv_transpose_same_xla`), which GPUs (cuDNN) and TPUs (the
  MXU) run natively, without the memory-bound patch copies.

`auto`, the default, is `patches` on CPU and `xla` on GPU and TPU, decided by `jax.default_backend()` when
the networks are built.

At 64 x 64 x 3 the learner's batch (16 x 65 frames) has 32 MiB of feature map in the first stage's output
alone at size1m (130 MiB at size12m), and the backward pass keeps each convolution's, norm's and activation's
outputs on both sides: most of an update's memory. So where a batch's maps (`stack_map_floats`) would pass
`STACK_BYTES`, each network as a whole (`ImageEncoder.stack`, `ImageDecoder.stack`) runs over chunks of images
in a loop, and its backward pass runs each chunk's forward again inside a second loop and takes its gradient
there (`rebuilt_map`, a `jax.custom_vjp` like `patch_product`'s: a `jax.checkpoint` would be merged back into
the forward, as above), keeping only the networks' input: an rgb64,size1m update's temporaries fall from 1.5
GiB to 0.4 GiB for about 5% more time per update (the chunks' forward runs twice). Batches within it (acting,
MinAtar's 10 x 10 grids) are one program, as before. The parameters are the same either way (declared by
`stack`, which init runs on the whole batch).

The chunks are strided (`to_chunks`: chunk j takes frames j, j + m, j + 2m, ... of m chunks), and their
count has as few factors of two as fits (`patch_chunk`: 1,040 frames go 80 at a time at size1m, 13 chunks):
under a data-parallel mesh (`run.devices` > 1, the batch split by rows along 'data') every chunk then
takes its share of every device's rows, and XLA's partitioner keeps each device looping over its own frames.
Contiguous chunks made it gather the whole batch onto every device and run every chunk everywhere (4
virtual CPU devices: 12 all-gathers in the two networks' gradient; tests/test_pixels.py counts them).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mbrl_jax.nets.layers import dense_init

MIN_RES = 4
MULTS = (2, 3, 4, 4)
KERNEL = 5
CONV_FORMS = ("patches", "xla")  # what `wm.conv` resolves to; "auto" picks one per backend
_NHWC = ("NHWC", "HWIO", "NHWC")  # flax's layouts: images NHWC, kernels HWIO
PATCH_BYTES = 16 * 2**20  # the largest patch matrix built at once (module docstring)
STACK_BYTES = 16 * 2**20  # the most feature-map bytes of the image networks run at once (module docstring)


def conv_form(setting: str, backend: str | None = None) -> str:
    """`wm.conv` -> the form the convolutions are computed in: "auto" is "patches" on the CPU backend and
    "xla" on any other ("gpu", "tpu"); `backend` is `jax.default_backend()` unless given."""
    if setting == "auto":
        return "patches" if (backend or jax.default_backend()) == "cpu" else "xla"
    if setting not in CONV_FORMS:
        raise ValueError(f"conv form {setting!r}: allowed 'auto', " + ", ".join(map(repr, CONV_FORMS)))
    return setting


def image_stages(height: int, width: int) -> int:
    """How many stride-2 stages an image of this size takes (see the module docstring)."""
    stages = 0
    while stages < len(MULTS) and all(s % 2 == 0 and s > MIN_RES for s in (height, width)):
        height, width, stages = height // 2, width // 2, stages + 1
    return stages


def image_depths(height: int, width: int, depth: int) -> tuple[int, ...]:
    """Channels of each stage, shallowest first."""
    return tuple(depth * m for m in MULTS[: image_stages(height, width)])


def stack_map_floats(shape: tuple[int, int, int], depth: int) -> int:
    """float32 values of one image's feature maps in the image encoder or decoder (each stage's output, the
    image itself): what decides whether a batch runs through them in chunks (`STACK_BYTES`)."""
    height, width, channels = shape
    depths = image_depths(height, width, depth)
    sides = [(height >> (i + 1)) * (width >> (i + 1)) for i in range(len(depths))]
    return sum(s * d for s, d in zip(sides, depths, strict=True)) + height * width * channels


def scale_image(image: jax.Array) -> jax.Array:
    """uint8 pixels in 0..255 -> float32 in [-0.5, 0.5], what the encoder reads (reference)."""
    return image.astype(jnp.float32) / 255.0 - 0.5


def image_target(image: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1], what the decoder's sigmoid output regresses."""
    return image.astype(jnp.float32) / 255.0


def _conv_init():
    return nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def _patches(x: jax.Array, size: int, stride: int, pad: tuple[int, int]) -> jax.Array:
    """[N, H, W, C] -> [N, OH, OW, size * size * C]: each output position's size x size window of `x` (padded
    by `pad` = (before, after) on both spatial axes), flattened in (row, column, channel) order."""
    x = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
    out_h = (x.shape[1] - size) // stride + 1
    out_w = (x.shape[2] - size) // stride + 1
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    windows = [
        x[:, i : i + span_h : stride, j : j + span_w : stride, :] for i in range(size) for j in range(size)
    ]
    return jnp.concatenate(windows, axis=-1)


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """XLA's 'SAME' padding of a strided convolution: output ceil(size / stride), the odd pixel after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def patch_chunk(images: int, bytes_per_image: int, budget: int) -> int:
    """How many images of a batch of `images` one chunk takes (a patch product, the image networks): all of
    them where they fit in `budget` bytes, else `images / m` for the chunk count m whose chunks fit that has
    the fewest factors of two, the fewest chunks among those (`to_chunks`: a chunk then keeps as many of
    the batch's factors of two as it can, so that a batch split over a power-of-two count of devices is
    split evenly in every chunk); 1 where even one image does not fit."""
    if images * bytes_per_image <= budget:
        return images
    counts = [m for m in range(2, images + 1) if images % m == 0 and images // m * bytes_per_image <= budget]
    if not counts:
        return 1
    return images // min(counts, key=lambda m: ((m & -m), m))  # m & -m: the largest power of two dividing m


def to_chunks(a: jax.Array, chunk: int) -> jax.Array:
    """[N, ...] -> [N / chunk, chunk, ...], chunk j holding images j, j + N / chunk, j + 2 N / chunk, ...:
    strided, not contiguous, so that where the batch is split over devices along N (a data-parallel mesh)
    each chunk takes its share from every device (where `chunk` is a multiple of their count) and XLA's
    partitioner keeps the loop over chunks on each device's own images instead of gathering the batch."""
    return a.reshape(chunk, a.shape[0] // chunk, *a.shape[1:]).swapaxes(0, 1)


def from_chunks(y: jax.Array) -> jax.Array:
    """The inverse of `to_chunks`: [N / chunk, chunk, ...] -> [N, ...] in the batch's order."""
    return y.swapaxes(0, 1).reshape(-1, *y.shape[2:])


def patch_product(
    x: jax.Array, weights: jax.Array, patches: Callable[[jax.Array], jax.Array], budget: int | None = None
) -> jax.Array:
    """`patches(x) @ weights` for a batch `x` [N, ...] (`patches` maps images to their patch matrices, each
    image's on its own). Where the batch's patches would pass `budget` bytes (`PATCH_BYTES`), the product runs
    over chunks of images (`patch_chunk`) and the backward pass rebuilds each chunk's patches from `x` (module
    docstring)."""
    budget = PATCH_BYTES if budget is None else budget
    n = x.shape[0]
    shape = jax.eval_shape(patches, jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype))
    chunk = patch_chunk(n, math.prod(shape.shape) * shape.dtype.itemsize, budget)
    if chunk == n:
        return patches(x) @ weights

    @jax.custom_vjp
    def product(x, weights):
        return from_chunks(lax.map(lambda xs: patches(xs) @ weights, to_chunks(x, chunk)))

    def forward(x, weights):
        return product(x, weights), (x, weights)

    def backward(residuals, grad):
        x, weights = residuals

        def chunk_grads(grad_weights, xs_and_grads):
            xs, grads = xs_and_grads
            p, patches_vjp = jax.vjp(patches, xs)
            grad_weights = grad_weights + p.reshape(-1, p.shape[-1]).T @ grads.reshape(-1, grads.shape[-1])
            return grad_weights, patches_vjp(grads @ weights.T)[0]

        chunks = (to_chunks(x, chunk), to_chunks(grad, chunk))
        grad_weights, grad_x = lax.scan(chunk_grads, jnp.zeros_like(weights), chunks)
        return from_chunks(grad_x), grad_weights

    product.defvjp(forward, backward)
    return product(x, weights)


def rebuilt_map(fn: Callable, params, x: jax.Array, chunk: int) -> jax.Array:
    """`fn(params, x)` for a batch `x` [N, ...] whose images `fn` maps each on its own, run over chunks of
    `chunk` images (which divides N; strided, `to_chunks`); the backward pass runs `fn` again on each chunk
    inside a loop and takes its gradient there, so only `x` is kept for it, never the whole batch's
    intermediates (module docstring). An integer `x` (pixels) gets no gradient."""

    @jax.custom_vjp
    def mapped(params, x):
        return from_chunks(lax.map(lambda xs: fn(params, xs), to_chunks(x, chunk)))

    def forward(params, x):
        return mapped(params, x), (params, x)

    def backward(residuals, grad):
        params, x = residuals
        differentiable = jnp.issubdtype(x.dtype, jnp.inexact)

        def chunk_grads(grad_params, xs_and_grads):
            xs, grads = xs_and_grads
            if differentiable:
                grads_params, grad_xs = jax.vjp(fn, params, xs)[1](grads)
            else:
                (grads_params,), grad_xs = jax.vjp(lambda p: fn(p, xs), params)[1](grads), None
            return jax.tree.map(jnp.add, grad_params, grads_params), grad_xs

        zeros = jax.tree.map(jnp.zeros_like, params)
        grad_params, grad_x = lax.scan(chunk_grads, zeros, (to_chunks(x, chunk), to_chunks(grad, chunk)))
        if differentiable:
            return grad_params, from_chunks(grad_x)
        return grad_params, np.zeros(x.shape, jax.dtypes.float0)

    mapped.defvjp(forward, backward)
    return mapped(params, x)


def conv_same(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """`lax.conv_general_dilated(x, kernel, (stride, stride), "SAME")` + bias for NHWC `x` and a square HWIO
    `kernel`, as a matrix product of patches (module docstring). Height and width must be equal."""
    size = kernel.shape[0]
    pad = _same_padding(x.shape[1], size, stride)
    weights = kernel.reshape(-1, kernel.shape[-1])
    return patch_product(x, weights, lambda x: _patches(x, size, stride, pad)) + bias


def _subpixel_taps(size: int) -> tuple[np.ndarray, int]:
    """For a stride-2 'SAME' transposed convolution with a `size`-tap kernel: which tap of the kernel feeds
    output phase r (0: even outputs, 1: odd) from input offset d, as an index table [2, D] (index `size`
    means no tap: a zero), and the smallest offset.

    `lax.conv_transpose` with 'SAME' pads the stride-dilated input by ceil(size / 2) before it, so output
    n = 2p + r reads input p + (r + k - ceil(size / 2)) / 2 through tap k, for the k of matching parity
    (for size >= 3; flax's kernels here are 5 x 5)."""
    before = -(-size // 2)
    offsets = {
        (r, k): (r + k - before) // 2 for r in (0, 1) for k in range(size) if (r + k - before) % 2 == 0
    }
    low, high = min(offsets.values()), max(offsets.values())
    table = np.full((2, high - low + 1), size)
    for (r, k), d in offsets.items():
        table[r, d - low] = k
    return table, low


def conv_transpose_same(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`flax.linen.ConvTranspose(strides=(2, 2), padding="SAME")` on NHWC `x` with its HWIO `kernel` and bias:
    [N, H, W, C] -> [N, 2H, 2W, F], in sub-pixel form (module docstring)."""
    size, features = kernel.shape[0], kernel.shape[-1]
    table, low = _subpixel_taps(size)
    taps = table.shape[1]
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index `size`: the zero tap
    phase = padded[table][:, :, table]  # [2 (row phase), taps, 2 (column phase), taps, C, F]
    phase = phase.transpose(1, 3, 4, 0, 2, 5).reshape(taps, taps, kernel.shape[2], 4 * features)
    pad = (-low, taps - 1 + low)
    # [N, H, W, (row phase, column phase, F)]
    y = patch_product(x, phase.reshape(-1, 4 * features), lambda x: _patches(x, taps, 1, pad))
    n, height, width, _ = y.shape
    y = y.reshape(n, height, width, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * height, 2 * width, features) + bias


def conv_same_xla(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """`conv_same` with XLA's convolution op: NHWC `x` [N, H, W, C], HWIO `kernel` -> [N, ceil(H / s),
    ceil(W / s), F]."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), "SAME", dimension_numbers=_NHWC) + bias


def conv_transpose_same_xla(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`conv_transpose_same` with XLA's transposed convolution, as flax.linen.ConvTranspose computes it:
    [N, H, W, C] -> [N, 2H, 2W, F]."""
    return lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=_NHWC) + bias


_CONV = {"patches": conv_same, "xla": conv_same_xla}
_CONV_TRANSPOSE = {"patches": conv_transpose_same, "xla": conv_transpose_same_xla}


def image_activation_floats(
    obs_shapes: dict[str, tuple[int, ...]], depth: int, conv: str, images: int = 1
) -> int:
    """float32 values the image encoder and decoder hold per replayed step for one update of `images` frames
    (for memory estimates): each stage's feature map about 18 times (convolution, norm and activation,
    forward and backward, on both sides), the image about 4 times (input, prediction, error), and in the
    patch form (`conv`) the patch matrices: those of a layer that is one product (`patch_product`) are kept
    for the kernel's gradient, with 20% for the largest layer's patch gradient and window copies; a layer
    run in chunks holds about 3 chunks' patches at a time (patches, their gradient, a copy), counted once
    per update. A batch whose feature maps pass `STACK_BYTES` runs through the networks in chunks
    (`rebuilt_map`): about half of that (one network's loop at a time) for one chunk's images, spread over
    the batch, and the image twice for the batch (the decoder's prediction, and the strided chunks' copy of
    it, `to_chunks`). Fitted to XLA's
    temporaries of the two networks' gradient at 64 x 64 x 3, depths 4 and 16, and of the learner update
    at rgb64,size1m, whole and in chunks (benchmarks/memory_breakdown.py, tests/test_memory.py)."""
    images_shapes = [shape for shape in obs_shapes.values() if len(shape) == 3]
    if not images_shapes:
        return 0
    height, width = images_shapes[0][:2]
    pixels = sum(h * w * c for h, w, c in images_shapes)
    channels = sum(c for *_, c in images_shapes)
    chunk = patch_chunk(images, 4 * stack_map_floats((height, width, channels), depth), STACK_BYTES)
    if chunk < images:
        return 2 * pixels + image_activation_floats(obs_shapes, depth, conv, chunk) * chunk // (2 * images)
    depths = image_depths(height, width, depth)
    sides = [(height >> (i + 1)) * (width >> (i + 1)) for i in range(len(depths))]  # positions per stage
    maps = sum(s * d for s, d in zip(sides, depths, strict=True))
    floats = 18 * maps + 4 * pixels
    if conv_form(conv) == "patches":
        taps = _subpixel_taps(KERNEL)[0].shape[1]  # the decoder's sub-pixel kernel side
        inputs = [channels, *depths[:-1]]  # channels into each encoder stage
        encoder = [s * KERNEL * KERNEL * c for s, c in zip(sides, inputs, strict=True)]
        # the decoder's transposed convolutions read every stage's map, the smallest from its `space` layer
        decoder = [s * taps * taps * d for s, d in zip(sides, depths, strict=True)]
        kept, chunk_floats = 0, 0
        for per_image in encoder + decoder:  # patch floats of one image, per layer
            chunk = patch_chunk(images, 4 * per_image, PATCH_BYTES)
            if chunk == images:
                kept += per_image
            else:
                chunk_floats = max(chunk_floats, chunk * per_image)
        floats += (12 * kept) // 10 + (3 * chunk_floats) // images
    return floats


def _kernel_and_bias(module: nn.Module, x: jax.Array, size: int, features: int) -> tuple:
    """A convolution's parameters as flax.linen.Conv and ConvTranspose declare them: 'kernel' (HWIO) and
    'bias' (zeros)."""
    kernel = module.param("kernel", _conv_init(), (size, size, x.shape[-1], features))
    return kernel, module.param("bias", nn.initializers.zeros_init(), (features,))


class Conv(nn.Module):
    """A square stride-s 'SAME' convolution with flax.linen.Conv's parameters ('kernel' HWIO, 'bias'),
    computed by `conv_same` (form "patches") or `conv_same_xla` ("xla")."""

    features: int
    size: int
    stride: int
    form: str = "patches"  # one of CONV_FORMS (module docstring)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = _kernel_and_bias(self, x, self.size, self.features)
        return _CONV[conv_form(self.form)](x, kernel, bias, self.stride)


class ConvTranspose(nn.Module):
    """A square stride-2 'SAME' transposed convolution with flax.linen.ConvTranspose's parameters,
    computed by `conv_transpose_same` (form "patches") or `conv_transpose_same_xla` ("xla")."""

    features: int
    size: int
    form: str = "patches"  # one of CONV_FORMS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel, bias = _kernel_and_bias(self, x, self.size, self.features)
        return _CONV_TRANSPOSE[conv_form(self.form)](x, kernel, bias)


class ImageEncoder(nn.Module):
    """[..., H, W, C] uint8 -> [..., h * w * depths[-1]] features."""

    depth: int
    conv: str = "patches"  # the convolutions' form: one of CONV_FORMS, or "auto" (`conv_form`)

    def __call__(self, image: jax.Array) -> jax.Array:
        lead, (height, width, channels) = image.shape[:-3], image.shape[-3:]
        if not image_depths(height, width, self.depth):
            raise ValueError(
                f"an image of {height} x {width} cannot be halved: sides must be even and > {MIN_RES}"
            )
        per_image = 4 * stack_map_floats((height, width, channels), self.depth)
        x = _stack_in_chunks(self, image, image.reshape(-1, height, width, channels), per_image)
        return x.reshape(*lead, -1)

    @nn.compact
    def stack(self, image: jax.Array) -> jax.Array:
        """The network on images: [..., H, W, C] uint8 -> [N, h, w, depths[-1]], N the images."""
        height, width, channels = image.shape[-3:]
        depths = image_depths(height, width, self.depth)
        x = scale_image(image).reshape(-1, height, width, channels)
        for i, d in enumerate(depths):
            x = Conv(d, KERNEL, 2, self.conv, name=f"conv{i}")(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name=f"norm{i}")(x))
        return x


class ImageDecoder(nn.Module):
    """[..., F] features -> [..., H, W, C] predicted pixels in [0, 1]."""

    shape: tuple[int, int, int]  # H, W, C of the image
    depth: int
    conv: str = "patches"  # as ImageEncoder's

    def __call__(self, feat: jax.Array) -> jax.Array:
        lead = feat.shape[:-1]
        per_image = 4 * stack_map_floats(self.shape, self.depth)
        x = _stack_in_chunks(self, feat, feat.reshape(-1, feat.shape[-1]), per_image)
        return x.reshape(*lead, *self.shape)

    @nn.compact
    def stack(self, feat: jax.Array) -> jax.Array:
        """The network on features: [..., F] -> [N, H, W, C] pixels in [0, 1], N the feature vectors."""
        height, width, channels = self.shape
        depths = image_depths(height, width, self.depth)
        factor = 2 ** len(depths)
        small = (height // factor, width // factor, depths[-1])
        x = nn.Dense(small[0] * small[1] * small[2], kernel_init=dense_init, name="space")(feat)
        x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name="space_norm")(x))
        x = x.reshape(-1, *small)
        for i, d in reversed(list(enumerate(depths[:-1]))):
            x = ConvTranspose(d, KERNEL, self.conv, name=f"conv{i}")(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name=f"norm{i}")(x))
        x = ConvTranspose(channels, KERNEL, self.conv, name="out")(x)
        return jax.nn.sigmoid(x)


def _stack_in_chunks(
    module: ImageEncoder | ImageDecoder, inputs: jax.Array, x: jax.Array, per_image: int
) -> jax.Array:
    """`module.stack` of the network's `inputs` [..., *shape], as a batch `x` [N, *shape] whose feature maps
    take `per_image` bytes an image: at once, on `inputs` as given (the program as before), where the
    batch's do not pass `STACK_BYTES` (and at init, which declares the parameters), else in chunks of
    images (`patch_chunk`) whose backward pass rebuilds each chunk's maps (`rebuilt_map`), from the module's
    parameters as they stand."""
    chunk = patch_chunk(x.shape[0], per_image, STACK_BYTES)
    if chunk == x.shape[0] or module.is_initializing():
        return module.stack(inputs)
    unbound = module.clone(parent=None)

    def stack(params, xs):
        return unbound.apply({"params": params}, xs, method="stack")

    return rebuilt_map(stack, module.variables["params"], x, chunk)
