"""Gradient time of one image layer in the library's layout and in two alternatives, as one JSON object.

    python benchmarks/conv_layouts.py               # the 64 x 64 layers of size1m/size12m, batch 1,024
    python benchmarks/conv_layouts.py --batch 64 --out conv_layouts.json

`mbrl_jax/nets/image.py` computes a convolution as a patch matrix (the k x k windows concatenated on the
channel axis, N·H·W x k·k·C) times the kernel. At the image workload that concatenate is the costliest op
(README, "image workload"). This script measures the two other layouts that avoid it, each checked
against the library's function before it is timed:

- `channels_outer` (stride-2 convolution): the windows stacked channels-outermost, P [C·k·k, N·H·W], so
  the copy moves whole planes instead of 3-wide pieces, and one GEMM P^T W gives the output;
- `col2im` (sub-pixel transposed convolution): the input times every tap's kernel first (k·k·4F columns
  instead of k·k·C), then the k x k shifted products summed.

Each layer's gradient (kernel and input) runs inside a `lax.scan`, as the learner update does in the
compiled chunk; the figure is seconds per step after a warm-up call.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.report import emit, machine_info  # noqa: E402
from mbrl_jax.nets.image import (  # noqa: E402
    KERNEL,
    _same_padding,
    _subpixel_taps,
    conv_same,
    conv_transpose_same,
)


def conv_channels_outer(x: jax.Array, kernel: jax.Array, bias: jax.Array, stride: int) -> jax.Array:
    """`conv_same` with the patches built channels-outermost: P [C·k·k, N·OH·OW], output P^T W."""
    size, channels, features = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    pad = _same_padding(x.shape[1], size, stride)
    planes = jnp.pad(x.transpose(3, 0, 1, 2), ((0, 0), (0, 0), pad, pad))
    out_h = (planes.shape[2] - size) // stride + 1
    out_w = (planes.shape[3] - size) // stride + 1
    span_h, span_w = (out_h - 1) * stride + 1, (out_w - 1) * stride + 1
    windows = [
        planes[:, :, i : i + span_h : stride, j : j + span_w : stride]
        for i in range(size)
        for j in range(size)
    ]
    patches = jnp.stack(windows, axis=1).reshape(channels * size * size, -1)
    weights = kernel.transpose(2, 0, 1, 3).reshape(channels * size * size, features)
    return jnp.einsum("km,kf->mf", patches, weights).reshape(x.shape[0], out_h, out_w, features) + bias


def conv_transpose_col2im(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    """`conv_transpose_same` multiplying first: every tap's [C, 4F] kernel applied to the input in one
    product, then the taps' outputs shifted and summed."""
    size, channels, features = kernel.shape[0], kernel.shape[2], kernel.shape[3]
    table, low = _subpixel_taps(size)
    taps = table.shape[1]
    padded = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))
    phase = padded[table][:, :, table]  # [2, taps, 2, taps, C, F]
    phase = phase.transpose(1, 3, 4, 0, 2, 5).reshape(taps * taps, channels, 4 * features)
    n, height, width, _ = x.shape
    products = jnp.einsum("nhwc,tcf->tnhwf", x, phase)
    products = jnp.pad(products, ((0, 0), (0, 0), (-low, taps - 1 + low), (-low, taps - 1 + low), (0, 0)))
    y = sum(
        products[i * taps + j, :, i : i + height, j : j + width] for i in range(taps) for j in range(taps)
    )
    y = y.reshape(n, height, width, 2, 2, features).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * height, 2 * width, features) + bias


# (name, kind, side, in channels, out channels): the layers whose patches cost most at the image workload.
LAYERS = [
    ("encoder conv0 (size1m/size12m)", "conv", 64, 3, 32),
    ("encoder conv1 (size12m)", "conv", 32, 32, 48),
    ("decoder out (size12m)", "transpose", 32, 32, 3),
    ("decoder out (size1m)", "transpose", 32, 8, 3),
]
LAYOUTS = {
    "conv": {"patches (library)": conv_same, "channels_outer": conv_channels_outer},
    "transpose": {"patches (library)": conv_transpose_same, "col2im": conv_transpose_col2im},
}


def _apply(kind: str, fn, x, kernel, bias):
    return fn(x, kernel, bias, 2) if kind == "conv" else fn(x, kernel, bias)


def grad_seconds(kind: str, fn, x: jax.Array, kernel: jax.Array, bias: jax.Array, steps: int) -> float:
    """Seconds per step of the layer's gradient (kernel and input) inside a `lax.scan` of `steps` steps."""
    grad = jax.grad(lambda k, x: jnp.sum(jnp.square(_apply(kind, fn, x, k, bias))), argnums=(0, 1))

    @jax.jit
    def run(kernel, x):
        def step(kernel, _):
            grad_kernel, grad_x = grad(kernel, x)
            return kernel - 1e-6 * grad_kernel + 1e-9 * jnp.sum(grad_x), None

        return jax.lax.scan(step, kernel, None, length=steps)[0]

    run(kernel, x).block_until_ready()
    start = time.perf_counter()
    run(kernel, x).block_until_ready()
    return (time.perf_counter() - start) / steps


def measure(batch: int, steps: int) -> list[dict[str, Any]]:
    rows = []
    for name, kind, side, channels, features in LAYERS:
        keys = jax.random.split(jax.random.PRNGKey(0), 2)
        x = jax.random.normal(keys[0], (batch, side, side, channels))
        kernel = 0.1 * jax.random.normal(keys[1], (KERNEL, KERNEL, channels, features))
        bias = jnp.zeros(features)
        library = next(iter(LAYOUTS[kind].values()))
        reference = _apply(kind, library, x[:2], kernel, bias)
        for layout, fn in LAYOUTS[kind].items():
            error = float(jnp.max(jnp.abs(_apply(kind, fn, x[:2], kernel, bias) - reference)))
            if error > 1e-3 * float(jnp.max(jnp.abs(reference))):
                raise AssertionError(f"{layout} differs from the library's {kind} on {name}: {error}")
            seconds = grad_seconds(kind, fn, x, kernel, bias, steps)
            rows.append({"layer": name, "layout": layout, "ms_per_grad": 1e3 * seconds, "max_abs_err": error})
            print(f"{name:32s} {layout:18s} {1e3 * seconds:9.1f} ms", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=1024, help="images per gradient (16 x 64 by default)")
    parser.add_argument("--steps", type=int, default=3, help="scan steps timed per layer and layout")
    parser.add_argument("--out", default=None, help="also write the JSON object here")
    args = parser.parse_args(argv)
    for flag in ("batch", "steps"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    rows = measure(args.batch, args.steps)
    emit({"machine": machine_info(), "batch": args.batch, "steps": args.steps, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
