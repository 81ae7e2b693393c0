"""The pixel path: image encoder and decoder, uint8 observations through env and replay, dict observations in
the world-model loss, the rendered 64 x 64 task, and the evaluation interval and step budget."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.agents.dreamer import make_dreamer, world_model_loss
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import EnvSpec, env_spec, make_env
from mbrl_jax.nets.image import (
    Conv,
    ConvTranspose,
    ImageDecoder,
    ImageEncoder,
    conv_form,
    conv_same,
    conv_transpose_same,
    image_depths,
    image_stages,
    patch_chunk,
    scale_image,
    stack_map_floats,
)
from mbrl_jax.nets.layers import dense_init
from mbrl_jax.replay import replay_sample
from mbrl_jax.trainer import episode_returns, make_train
from mbrl_jax.world_models.rssm import reconstruction_loss

# The computations here run under `jax.jit`, each a single compiled program: run eagerly, every primitive at
# every shape compiles a program of its own (thousands in this file, most of its time). A jitted function
# shared between tests must not trace code that reads `PATCH_BYTES` or `STACK_BYTES` (the image networks): a
# test that lowers them jits closures of its own, traced while they are lowered, so that no program traced
# under one budget is reused under another.


@functools.partial(jax.jit, static_argnums=0)
def _image_inputs(shape):
    """2 x 3 uint8 images of `shape` (key 0), 2 x 3 feature vectors of 40 (key 1) and 2 x 3 weights per pixel
    (key 2), in one compiled program."""
    image = jax.random.randint(jax.random.PRNGKey(0), (2, 3, *shape), 0, 256).astype(jnp.uint8)
    feat = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 40))
    weights = jax.random.uniform(jax.random.PRNGKey(2), (2, 3, *shape))
    return image, feat, weights


def _perturbed(params):
    """Nonzero biases and norm scales away from 1, so that every parameter matters (to trace under jit)."""
    return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.PRNGKey(5), p.shape), params)


@pytest.mark.parametrize(
    ("shape", "depth", "stages", "embed"),
    [
        ((64, 64, 3), 4, 4, 4 * 4 * 16),  # DreamerV3's Atari / DMC input: 64 -> 32 -> 16 -> 8 -> 4
        ((10, 10, 4), 16, 1, 5 * 5 * 32),  # MinAtar: one stage, 10 -> 5
        ((10, 10, 7), 4, 1, 5 * 5 * 8),
    ],
)
def test_encoder_and_decoder_shapes(shape, depth, stages, embed):
    assert image_stages(*shape[:2]) == stages
    encoder, decoder = ImageEncoder(depth), ImageDecoder(shape, depth)

    def encode():
        image = jax.random.randint(jax.random.PRNGKey(0), (2, 3, *shape), 0, 256).astype(jnp.uint8)
        params = encoder.init(jax.random.PRNGKey(1), image)
        return params, encoder.apply(params, image)

    params, features = jax.eval_shape(encode)  # shapes only: traced, nothing compiled
    assert features.shape == (2, 3, embed) and features.dtype == jnp.float32
    kernels = [v["kernel"].shape for k, v in sorted(params["params"].items()) if k.startswith("conv")]
    assert [k[-1] for k in kernels] == [depth * m for m in (2, 3, 4, 4)[:stages]]

    @jax.jit
    def decode():
        feat = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 40))
        return decoder.apply(decoder.init(jax.random.PRNGKey(3), feat), feat)

    out = np.asarray(decode())
    assert out.shape == (2, 3, *shape)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0  # sigmoid: the range of pixels / 255


@pytest.mark.parametrize("form", ["patches", "xla"])
@pytest.mark.parametrize(("side", "size"), [(64, 5), (10, 5), (5, 5), (8, 3), (6, 4)])
def test_both_convolution_forms_equal_flax_convolutions(side, size, form):
    """`Conv` (stride 2 and 1) and `ConvTranspose` in either form (the patch form's transposed convolution is
    sub-pixel) against flax.linen.Conv and ConvTranspose with 'SAME' padding (XLA's convolution op), values
    and gradients, and with the same parameter tree, so that either module loads the other's parameters."""
    convs = {
        stride: (Conv(5, size, stride, form), nn.Conv(5, (size, size), strides=stride, padding="SAME"))
        for stride in (2, 1)
    }
    ours, flax_t = ConvTranspose(5, size, form), nn.ConvTranspose(5, (size, size), (2, 2), padding="SAME")
    loss = lambda module: lambda p, x: (module.apply(p, x) ** 2 * jnp.arange(5.0)).sum()

    @jax.jit
    def run():  # one compiled program; its results are compared below
        x = jax.random.normal(jax.random.PRNGKey(0), (2, side, side, 3))
        strided = {}
        for stride, (ours_conv, flax_conv) in convs.items():
            params = flax_conv.init(jax.random.PRNGKey(1), x)
            params = jax.tree.map(lambda p: p + 0.1, params)  # a nonzero bias too
            strided[stride] = params, ours_conv.apply(params, x), flax_conv.apply(params, x)
        params = jax.tree.map(lambda p: p + 0.1, flax_t.init(jax.random.PRNGKey(2), x))
        grads = [jax.grad(loss(module), argnums=(0, 1))(params, x) for module in (ours, flax_t)]
        return x, strided, params, ours.apply(params, x), flax_t.apply(params, x), grads

    x, strided, params, got, want, (grads, want_grads) = run()
    for stride, (ours_conv, _) in convs.items():
        flax_params, ours_out, flax_out = strided[stride]
        ours_params = jax.eval_shape(lambda x, m=ours_conv: m.init(jax.random.PRNGKey(1), x), x)
        assert jax.tree.structure(ours_params) == jax.tree.structure(flax_params)
        np.testing.assert_allclose(ours_out, flax_out, atol=1e-5)
    assert want.shape == (2, 2 * side, 2 * side, 5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    for got, ref in zip(grads, want_grads, strict=True):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(ref), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]
    assert jax.eval_shape(conv_transpose_same, x, kernel, bias).shape == want.shape
    half = jax.eval_shape(lambda x, kernel, bias: conv_same(x, kernel[..., :3, :], bias, 2), x, kernel, bias)
    assert half.shape == (2, -(-side // 2), -(-side // 2), 5)


def test_patch_chunk_takes_the_largest_divisor_that_fits():
    assert patch_chunk(1024, 300, budget=10**6) == 1024  # 0.3 MB: all at once
    assert patch_chunk(1024, 300_000, budget=16 * 2**20) == 32  # 55 would fit; 32 divides 1024
    assert patch_chunk(1040, 300_000, budget=16 * 2**20) == 16  # 65 chunks: the fewest odd count that fits
    assert patch_chunk(7, 300_000, budget=2 * 300_000) == 1  # a prime batch: one image at a time
    assert patch_chunk(6, 10**9, budget=1) == 1


@pytest.mark.parametrize("side", [16, 10])
def test_chunked_patch_products_equal_flax_convolutions(side, monkeypatch):
    """Layers whose patch matrices pass `PATCH_BYTES` run over the batch in chunks and rebuild the patches in
    their backward pass: against flax.linen.Conv and ConvTranspose (XLA's convolution ops), values and
    gradients of the input and the parameters, with a budget that splits a batch of 6 into chunks of 2."""
    import mbrl_jax.nets.image as image

    x = jax.jit(lambda: jax.random.normal(jax.random.PRNGKey(0), (6, side, side, 3)))()
    per_image = {  # bytes of one image's patch matrix: stride-2 5 x 5 layer; sub-pixel 3 x 3 layer
        "conv": ((side + 1) // 2) ** 2 * 25 * 3 * 4,
        "transpose": side * side * 9 * 3 * 4,
    }
    cases = {
        "conv": (Conv(5, 5, 2, "patches"), nn.Conv(5, (5, 5), strides=2, padding="SAME")),
        "transpose": (ConvTranspose(5, 5, "patches"), nn.ConvTranspose(5, (5, 5), (2, 2), padding="SAME")),
    }
    loss = lambda module: lambda p, x: (module.apply(p, x) ** 2 * jnp.arange(5.0)).sum()
    for name, (ours, reference) in cases.items():
        monkeypatch.setattr(image, "PATCH_BYTES", 2 * per_image[name] + 1)  # chunks of 2 images
        assert patch_chunk(6, per_image[name], image.PATCH_BYTES) == 2

        def run(x, modules=(ours, reference)):  # one program, traced here: with the budget lowered
            params = jax.tree.map(lambda p: p + 0.1, modules[1].init(jax.random.PRNGKey(1), x))
            values = [module.apply(params, x) for module in modules]
            return params, values, [jax.grad(loss(module), argnums=(0, 1))(params, x) for module in modules]

        params, (got, want), (got_grads, want_grads) = jax.jit(run)(x)
        np.testing.assert_allclose(got, want, atol=1e-5)
        _close(got_grads, want_grads, rel=1e-5)
        lowered = jax.jit(jax.grad(loss(ours))).lower(params, x).as_text()
        assert "while" in lowered  # the chunks' loop: the budget did split the batch


class _OneProgramEncoder(nn.Module):
    """ImageEncoder as it was before its batch could run in chunks: one compact method, the whole batch."""

    depth: int
    conv: str

    @nn.compact
    def __call__(self, image):
        lead, (height, width, channels) = image.shape[:-3], image.shape[-3:]
        x = scale_image(image).reshape(-1, height, width, channels)
        for i, d in enumerate(image_depths(height, width, self.depth)):
            x = Conv(d, 5, 2, self.conv, name=f"conv{i}")(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name=f"norm{i}")(x))
        return x.reshape(*lead, -1)


class _OneProgramDecoder(nn.Module):
    """ImageDecoder as it was before its batch could run in chunks."""

    shape: tuple[int, int, int]
    depth: int
    conv: str

    @nn.compact
    def __call__(self, feat):
        height, width, channels = self.shape
        depths = image_depths(height, width, self.depth)
        small = (height >> len(depths), width >> len(depths), depths[-1])
        x = nn.Dense(small[0] * small[1] * small[2], kernel_init=dense_init, name="space")(feat)
        x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name="space_norm")(x)).reshape(-1, *small)
        for i, d in reversed(list(enumerate(depths[:-1]))):
            x = ConvTranspose(d, 5, self.conv, name=f"conv{i}")(x)
            x = jax.nn.silu(nn.RMSNorm(epsilon=1e-4, name=f"norm{i}")(x))
        x = ConvTranspose(channels, 5, self.conv, name="out")(x)
        return jax.nn.sigmoid(x).reshape(*feat.shape[:-1], *self.shape)


_MESH_SCRIPT = """
import os, sys
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
import jax, jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import mbrl_jax.nets.image as image
form, shape = sys.argv[1], (16, 16, 3)
per_image = 4 * image.stack_map_floats(shape, 4)
image.STACK_BYTES, image.PATCH_BYTES = 24 * per_image, 4 * 16 * 16 * 75  # chunks of 24 frames, patches of 4
enc, dec = image.ImageEncoder(4, form), image.ImageDecoder(shape, 4, form)
frames, feat = jnp.zeros((8, 9, *shape), jnp.uint8), jnp.zeros((8, 9, 32))
params = enc.init(jax.random.PRNGKey(0), frames[:1, :1]), dec.init(jax.random.PRNGKey(0), feat[:1, :1])
rows = NamedSharding(Mesh(jax.devices(), ("data",)), P("data"))
def loss(params, frames, feat):
    return (enc.apply(params[0], frames) ** 2).sum() + (dec.apply(params[1], feat) ** 2).sum()
text = jax.jit(jax.grad(loss)).lower(params, jax.device_put(frames, rows), jax.device_put(feat, rows))
text = text.compile().as_text()
print("while" in text, text.count("all-gather"))
"""


@pytest.mark.parametrize("form", ["patches", "xla"])
def test_chunks_stay_on_their_devices_under_a_data_parallel_mesh(form):
    """The learner's batch split over 4 devices by rows (as `run.devices` splits it): the image networks
    and their patch products run in chunks (budgets lowered: 72 frames in chunks of 24, patch products of 4
    frames), and each device loops over its own rows' frames: XLA's partitioned program gathers nothing
    (contiguous chunks made it all-gather the batch, 12 times for the two networks' gradient)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's mbrl_jax
    command = [sys.executable, "-c", _MESH_SCRIPT, form]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["True", "0"], done.stdout


@pytest.mark.parametrize("form", ["patches", "xla"])
@pytest.mark.parametrize(("shape", "depth"), [((16, 16, 3), 4), ((10, 10, 4), 4)])
def test_image_nets_in_chunks_equal_one_program_with_the_same_parameters(shape, depth, form, monkeypatch):
    """The encoder and decoder whose batch passes `STACK_BYTES` (lowered so that a batch of 6 runs in chunks
    of 2, as the learner's 1,040 frames do at the default) against the networks as they were before
    (one program over the batch): the same parameter tree, drawn the same from one key (a checkpoint from
    before loads), and the same features, pixels and gradients (parameters and decoder input) up to float32
    summation order; and a batch within the budget (acting) is the one program, bit for bit."""
    import mbrl_jax.nets.image as image_nets

    image, feat, weights = _image_inputs(shape)
    cases = {  # name: (chunked, one program, input, loss of the output)
        "encoder": (
            ImageEncoder(depth, form),
            _OneProgramEncoder(depth, form),
            image,
            lambda y: (jnp.sin(y) * jnp.arange(1.0, 3.0)[:, None, None]).sum(),
        ),
        "decoder": (
            ImageDecoder(shape, depth, form),
            _OneProgramDecoder(shape, depth, form),
            feat,
            lambda y: ((y - 0.3) ** 2 * weights).sum(),
        ),
    }
    per_image = 4 * stack_map_floats(shape, depth)
    for name, (ours, before, x, loss) in cases.items():
        monkeypatch.setattr(image_nets, "STACK_BYTES", 2 * per_image + 1)  # chunks of 2 images

        def init(x, ours=ours, before=before):  # one program: both inits, and ours perturbed
            params = ours.init(jax.random.PRNGKey(3), x)
            return params, before.init(jax.random.PRNGKey(3), x), _perturbed(params)

        params, want_params, perturbed = jax.jit(init)(x)
        assert jax.tree.structure(params) == jax.tree.structure(want_params), name
        _close(params, want_params, 0.0)
        params = perturbed
        argnums = (0,) if name == "encoder" else (0, 1)  # pixels have no gradient

        def grad(module, loss=loss, argnums=argnums):
            return jax.grad(lambda p, inputs: loss(module.apply(p, inputs)), argnums)

        def chunked(params, x, ours=ours, grad=grad):  # traced here: with the budget lowered
            return ours.apply(params, x), grad(ours)(params, x)

        # the one program (`before` reads no budget), compiled on its own: also what the whole batch's
        # programs are compared with bit for bit below
        want_out, want = jax.jit(before.apply)(params, x), jax.jit(grad(before))(params, x)
        got_out, got = jax.jit(chunked)(params, x)
        _close(got_out, want_out, 1e-5)
        _close(got, want, 1e-4)
        assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(want))
        assert "while" in jax.jit(grad(ours)).lower(params, x).as_text()  # the budget did split the batch
        monkeypatch.setattr(image_nets, "STACK_BYTES", 6 * per_image)  # the whole batch fits: as before
        np.testing.assert_array_equal(jax.jit(ours.apply)(params, x), want_out)
        got = jax.jit(grad(ours))(params, x)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("form", ["patches", "xla"])
def test_encoder_matches_a_hand_written_stage_on_pixels_scaled_to_plus_minus_half(form):
    """One stage (MinAtar) computed by hand: pixels / 255 - 0.5, stride-2 'SAME' convolution, RMSNorm over
    channels (eps 1e-4, learned scale), SiLU, flattened."""
    encoder = ImageEncoder(4, form)

    @jax.jit
    def run():
        image = jax.random.randint(jax.random.PRNGKey(0), (3, 10, 10, 4), 0, 256).astype(jnp.uint8)
        params = encoder.init(jax.random.PRNGKey(1), image)
        return image, params, encoder.apply(params, image)

    image, params, features = run()
    p = jax.tree.map(np.asarray, params["params"])
    x = np.asarray(image, np.float64) / 255.0 - 0.5
    k = p["conv0"]["kernel"].astype(np.float64)  # [5, 5, 4, 8]
    padded = np.pad(
        x, [(0, 0), (1, 2), (1, 2), (0, 0)]
    )  # SAME for stride 2, kernel 5 on 10: 1 before, 2 after
    y = np.zeros((3, 5, 5, 8))
    for i in range(5):
        for j in range(5):
            window = padded[:, 2 * i : 2 * i + 5, 2 * j : 2 * j + 5, :]
            y[:, i, j] = np.einsum("bhwc,hwco->bo", window, k)
    y += p["conv0"]["bias"]
    y = y / np.sqrt((y**2).mean(-1, keepdims=True) + 1e-4) * p["norm0"]["scale"]
    y = y / (1 + np.exp(-y))
    np.testing.assert_allclose(features, y.reshape(3, -1), rtol=2e-4, atol=2e-5)


def _close(got, want, rel: float):
    """float32 agreement of two computations that sum in different orders: within `rel` of the largest
    magnitude of `want`, element by element."""
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=rel * max(float(np.abs(b).max()), 1e-30))


@pytest.mark.parametrize(("shape", "depth"), [((64, 64, 3), 4), ((10, 10, 4), 16), ((10, 10, 7), 4)])
def test_xla_form_equals_patch_form_for_encoder_and_decoder(shape, depth):
    """The two forms of `wm.conv` on the whole encoder and decoder, with one set of parameters: the same
    parameter tree from either form's init, and the same features, pixels and gradients (parameters and
    decoder input) up to float32 rounding."""
    image, feat, weights = _image_inputs(shape)  # weights: so that no gradient is trivially 0
    encoders = {form: ImageEncoder(depth, form) for form in ("patches", "xla")}
    decoders = {form: ImageDecoder(shape, depth, form) for form in ("patches", "xla")}

    @jax.jit
    def init(image, feat):  # one program: both forms' parameters, and the patch form's perturbed
        enc = {form: encoder.init(jax.random.PRNGKey(3), image) for form, encoder in encoders.items()}
        dec = {form: decoder.init(jax.random.PRNGKey(4), feat) for form, decoder in decoders.items()}
        return enc, dec, _perturbed(enc["patches"]), _perturbed(dec["patches"])

    enc_inits, dec_inits, enc_params, dec_params = init(image, feat)
    for inits in (enc_inits, dec_inits):
        other, params = inits["xla"], inits["patches"]
        assert jax.tree.structure(other) == jax.tree.structure(params)
        _close(other, params, 0.0)  # the forms declare the same parameters, drawn the same way

    def enc_loss(form):
        return lambda p, image: (
            jnp.sin(encoders[form].apply(p, image)) * jnp.arange(1.0, 3.0)[:, None, None]
        ).sum()

    def dec_loss(form):
        return lambda p, f, weights: ((decoders[form].apply(p, f) - 0.3) ** 2 * weights).sum()

    @jax.jit
    def run(enc_params, dec_params, image, feat, weights):  # one program: each form's results
        return {
            form: (
                encoders[form].apply(enc_params, image),
                decoders[form].apply(dec_params, feat),
                jax.grad(enc_loss(form))(enc_params, image),
                jax.grad(dec_loss(form), argnums=(0, 1))(dec_params, feat, weights),
            )
            for form in ("xla", "patches")
        }

    results = run(enc_params, dec_params, image, feat, weights)
    got, want = results["xla"], results["patches"]
    for a, b, rel in zip(got, want, (1e-5, 1e-5, 1e-4, 1e-4), strict=True):
        _close(a, b, rel)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in jax.tree.leaves(want[3]))


def test_auto_conv_form_is_patches_on_cpu_and_xla_on_gpu_and_tpu():
    assert conv_form("auto", "cpu") == "patches"
    assert conv_form("auto", "gpu") == conv_form("auto", "tpu") == "xla"
    for form in ("patches", "xla"):  # an explicit form is kept on every backend
        assert conv_form(form, "cpu") == conv_form(form, "gpu") == form
    assert conv_form("auto") == ("patches" if jax.default_backend() == "cpu" else "xla")
    with pytest.raises(ValueError, match="'cudnn'"):
        conv_form("cudnn", "gpu")
    with pytest.raises(ConfigError, match=r"wm.conv='cudnn' must be one of 'auto', 'patches', 'xla'"):
        make_config("debug", **{"wm.conv": "cudnn"})
    spec = EnvSpec("synthetic", {"image": (10, 10, 2)}, True, 3, 100)
    for setting in ("auto", "patches", "xla"):  # the agent is built with the resolved form
        nets = make_dreamer(make_config("debug", **{"wm.conv": setting}), spec).networks
        assert nets.world_model.conv == conv_form(setting)


def test_a_checkpoint_moves_between_conv_forms():
    """The world-model loss of the dict-observation agent from one set of parameters, built with either
    form: the same loss and gradients up to float32 rounding."""
    spec, _, _, state = _dict_obs_agent()
    batch = _dict_batch()
    results = {}
    for form in ("patches", "xla"):
        nets = make_dreamer(make_config("debug", **{"wm.conv": form}), spec).networks
        (loss, _), grads = _world_model_loss_and_grad(nets)(state.params.wm, batch)
        results[form] = loss, grads
    np.testing.assert_allclose(results["xla"][0], results["patches"][0], rtol=1e-5)
    _close(results["xla"][1], results["patches"][1], 1e-4)


def test_minatar_observations_are_uint8_images_and_round_trip_through_the_replay():
    config = make_config("debug", **{"env.name": "Breakout-MinAtar"})
    trainer = make_train(config)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    stored = state.replay.data["obs"]["image"]
    assert stored.dtype == jnp.uint8 and stored.shape[2:] == (10, 10, 4)
    stored = np.asarray(stored)  # the same bytes, indexed on the host below
    assert set(np.unique(stored)) <= {0, 255} and stored.max() == 255
    # what the env returned is what the replay holds: replay the prefill's env steps from the same keys
    env = make_env("Breakout-MinAtar", config.env.num_envs)
    # make_train's init splits its key in (agent, env, loop)
    _, ts = jax.jit(lambda key: env.reset(jax.random.split(key, 3)[1]))(jax.random.PRNGKey(0))
    np.testing.assert_array_equal(stored[:, 0], np.asarray(ts.obs["image"]))
    sample = jax.jit(replay_sample, static_argnums=(2, 3))
    batch, index, _ = sample(state.replay, jax.random.PRNGKey(5), 4, 8)
    assert batch["obs"]["image"].dtype == jnp.uint8
    env_index, slot = np.asarray(index.env), np.asarray(index.slot)
    np.testing.assert_array_equal(batch["obs"]["image"], stored[env_index[:, None], slot])
    # 4x less than float32: one stored step's image takes H * W * C bytes
    assert stored[0, 0].nbytes == 10 * 10 * 4


def test_rgb64_renders_the_grid_in_colour():
    spec = env_spec("Breakout-MinAtar-rgb64")
    assert spec.obs_shapes == {"image": (64, 64, 3)}
    env, grid_env = make_env("Breakout-MinAtar-rgb64", 2), make_env("Breakout-MinAtar", 2)
    key = jax.random.PRNGKey(3)
    (_, ts), (_, grid) = jax.jit(env.reset)(key), jax.jit(grid_env.reset)(key)
    image, cells = np.asarray(ts.obs["image"]), np.asarray(grid.obs["image"]) > 0
    assert image.dtype == np.uint8 and image.shape == (2, 64, 64, 3)
    assert (image[:, :2] == 0).all() and (image[:, 62:] == 0).all()  # the 2-pixel border
    lit = image[:, 2:62, 2:62].reshape(2, 10, 6, 10, 6, 3).max(axis=(2, 4, 5)) > 0
    np.testing.assert_array_equal(lit, cells.any(-1))  # a 6x6 block is coloured exactly where a cell is set


@functools.cache
def _dict_obs_agent():
    """Built once for the tests that use it (its state is arrays, which no test changes)."""
    spec = EnvSpec("synthetic", {"image": (10, 10, 2), "vector": (3,)}, True, 3, 100)
    config = make_config("debug")
    agent = make_dreamer(config, spec)
    return spec, config, agent, jax.jit(agent.init)(jax.random.PRNGKey(0))


def _world_model_loss_and_grad(nets):
    """`(params, batch) -> ((loss, aux), grads)`: `world_model_loss` of `nets` with the keys of key 2 and its
    gradient, as one compiled program, built alike for every test: networks that trace alike give the same
    program, which the persistent compilation cache then compiles once."""
    keys = jax.random.split(jax.random.PRNGKey(2), 5)

    def loss(params, batch):
        return world_model_loss(nets, params, batch, keys)

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@functools.partial(jax.jit, static_argnames=("B", "T"))
def _dict_batch(B=2, T=5):
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    return {
        "obs": {
            "image": jax.random.randint(k1, (B, T, 10, 10, 2), 0, 256).astype(jnp.uint8),
            "vector": jax.random.normal(k2, (B, T, 3)),
        },
        "action": jax.nn.one_hot(jax.random.randint(k3, (B, T), 0, 3), 3),
        "reward": jnp.zeros((B, T)),
        "is_first": jnp.zeros((B, T), bool).at[:, 0].set(True),
        "is_last": jnp.zeros((B, T), bool),
        "is_terminal": jnp.zeros((B, T), bool),
    }


def test_every_key_of_a_dict_observation_reaches_the_loss():
    _, _, agent, state = _dict_obs_agent()
    nets, batch = agent.networks, _dict_batch()
    # on CPU (`auto` is `patches`) the program of test_a_checkpoint_moves_between_conv_forms's patch form
    loss_and_grad = _world_model_loss_and_grad(nets)

    (base, (_, metrics)), grads = loss_and_grad(state.params.wm, batch)
    assert {"loss_rec_image", "loss_rec_vector"} <= set(metrics)
    for name in ("encoder", "decoder", "image_encoder", "image_decoder"):
        norm = sum(float(np.abs(np.asarray(g)).sum()) for g in jax.tree.leaves(grads["params"][name]))
        assert norm > 0, name
    for key in ("image", "vector"):  # changing one key alone changes the loss
        changed = dict(batch["obs"])
        changed[key] = (np.asarray(batch["obs"][key]) + 7).astype(batch["obs"][key].dtype)
        (other, _), _ = loss_and_grad(state.params.wm, {**batch, "obs": changed})
        assert abs(float(other) - float(base)) > 1e-4, key


def test_image_loss_is_plain_mse_of_pixels_and_vectors_are_symlogged():
    _, _, agent, _ = _dict_obs_agent()
    wm = agent.world_model
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 10, 10, 2)).astype(np.uint8)
    vector = rng.normal(size=(4, 3)) * 50
    pred = {"image": rng.uniform(size=(4, 10, 10, 2)), "vector": rng.normal(size=(4, 3))}
    losses = jax.jit(functools.partial(reconstruction_loss, wm))(
        jax.tree.map(jnp.asarray, pred), {"image": jnp.asarray(image), "vector": jnp.asarray(vector)}
    )
    expected_image = ((pred["image"] - image / 255.0) ** 2).sum((1, 2, 3))
    expected_vector = ((pred["vector"] - np.sign(vector) * np.log1p(np.abs(vector))) ** 2).sum(-1)
    np.testing.assert_allclose(losses["image"], expected_image, rtol=1e-5)
    np.testing.assert_allclose(losses["vector"], expected_vector, rtol=1e-5)


def test_evaluation_step_budget_counts_partial_returns():
    """Pendulum never terminates: with a budget of 10 steps each env's return is its first 10 rewards, here
    summed by stepping the env by hand."""
    env = make_env("Pendulum-v1", 3)
    key = jax.random.PRNGKey(4)

    def act(carry, obs, prev_action, is_first, key_t):
        return jnp.zeros((3, 1)), carry

    got = jax.jit(lambda key: episode_returns(env, act, None, key, max_steps=10))(key)
    k_reset, k_loop = jax.random.split(key)
    env_state, ts = jax.jit(env.reset)(k_reset)
    step = jax.jit(env.step)
    total = np.zeros(3)
    for key_t in jax.random.split(k_loop, 10):
        _, k_env = jax.random.split(key_t)
        env_state, ts = step(env_state, np.zeros((3, 1), np.float32), k_env)
        total += np.asarray(ts.reward)
    np.testing.assert_allclose(got, total, rtol=1e-5)
    full = jax.jit(lambda key: episode_returns(env, act, None, key))(key)
    assert float(full.mean()) < float(got.mean())  # 200 steps of negative reward


def test_eval_every_skips_evaluations_between(tmp_path):
    from mbrl_jax.runner import train

    config = make_config(
        "debug", **{"run.steps": 756, "run.chunk_steps": 100, "run.eval_every": 200, "run.eval_steps": 20}
    )
    _, records = train(config, None, progress=False)
    rows = records
    assert len(rows) == 5
    # every second chunk, and the last one (a run ends with an evaluation)
    assert ["eval_return" in r for r in rows] == [False, True, False, True, True]


def test_a_pixel_run_resumes_bit_for_bit(tmp_path):
    from mbrl_jax.logging import read_metrics
    from mbrl_jax.runner import train

    config = make_config(
        "debug",
        **{
            "env.name": "Breakout-MinAtar",
            "run.steps": 364,
            "run.chunk_steps": 100,
            "run.checkpoint_every": 100,
            "replay.prefill": 64,
            "replay.batch_length": 16,
        },
    )
    straight, _ = train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "cut", progress=False, stop_after_chunks=2)
    resumed, _ = train(config, tmp_path / "cut", progress=False)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "straight")
    assert straight.replay.data["obs"]["image"].dtype == jnp.uint8
