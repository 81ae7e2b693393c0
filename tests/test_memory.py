"""The device-memory estimate: exact for the state, close to XLA's own figure for the update, and a check that
refuses what cannot fit with the figures while staying quiet on what can.

XLA's figures here come from programs compiled as the suite compiles them, at -O0 (tests/conftest.py): XLA
assigns buffers in its HLO passes, which -O0 leaves on, so they are the figures of the program users run
(measured: the image update's temporaries, 17,711,200 and 35,612,704 bytes in the two conv forms, and the
chunk's arguments and temporaries are the same optimized, to the byte)."""

import jax
import numpy as np
import pytest

from mbrl_jax.agents.dreamer import make_dreamer
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import env_spec
from mbrl_jax.memory import (
    CPU_RUNTIME_BYTES,
    GIB,
    abstract_state,
    check_memory,
    device_memory,
    estimate_memory,
)
from mbrl_jax.replay import replay_sample
from mbrl_jax.trainer import make_train


def test_estimate_is_close_to_xla_for_a_compiled_chunk():
    """XLA's memory analysis of the compiled chunk (arguments + temporaries) against the estimate: the
    estimate of what XLA allocates (`device`: the process's runtime aside) may err high, not low, and not by
    more than 2x."""
    config = make_config("debug", **{"replay.batch_size": 16})
    trainer = make_train(config)
    state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
    stats = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state).compile().memory_analysis()
    xla = stats.argument_size_in_bytes + stats.temp_size_in_bytes
    ratio = estimate_memory(config).device / xla
    assert 1.0 <= ratio <= 2.0, (ratio, xla)


def test_state_part_is_exact_and_activations_grow_with_the_batch():
    config = make_config("debug")
    state = jax.jit(make_train(config).init)(jax.random.PRNGKey(0))
    real = sum(x.nbytes for x in jax.tree.leaves(state))
    small, large = estimate_memory(config), estimate_memory(config.replace(**{"replay.batch_size": 8}))
    assert small.replay + small.params + small.optimiser + small.other_state == real
    assert small.replay == sum(x.nbytes for x in jax.tree.leaves(state.replay))
    per_window = (large.activations - small.activations) / (4 * config.replay.batch_length)
    assert per_window > 0
    assert large.activations - small.activations == pytest.approx(small.activations - small.params, rel=1e-9)


def test_check_refuses_with_the_figures_naming_the_largest_part():
    config = make_config("debug")
    with pytest.raises(
        ConfigError,
        match=r"replay.batch_size=4 x replay.batch_length=16 needs about [\d.]+ [MG]iB .*activations",
    ):
        check_memory(config, available=2**20)
    big_replay = make_config("debug", **{"replay.capacity": 50_000_000, "replay.max_gib": 1000.0})
    with pytest.raises(
        ConfigError, match=r"replay.capacity=50000000 needs about [\d.]+ GiB .*replay [\d.]+ GiB"
    ):
        check_memory(big_replay, available=GIB)


def test_check_is_quiet_when_it_fits():
    estimate = check_memory(make_config("debug"), available=4 * GIB)
    assert 0 < estimate.device < GIB and estimate.total < 4 * GIB
    available = device_memory()
    assert available is not None and available > 0
    assert np.isfinite(available)


def _update_temporaries(config) -> int:
    """XLA's temporaries of one compiled learner update of `config` (state donated, as in the chunk)."""
    state, key = abstract_state(config), jax.random.PRNGKey(0)
    agent = make_dreamer(config, env_spec(config.env.name))
    batch = jax.eval_shape(
        lambda replay, k: replay_sample(replay, k, config.replay.batch_size, config.sample_length)[0],
        state.replay,
        key,
    )
    compiled = jax.jit(agent.learn, donate_argnums=0).lower(state.agent, batch, key).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def test_image_activations_follow_xla_in_both_conv_forms(monkeypatch):
    """A learner update on 64 x 64 x 3 frames, its convolutions as patch products or as XLA's: the
    estimated activations against XLA's temporaries, within 30% and never below; what the patch matrices
    add, against what XLA says they add; and with patch products run in chunks (`PATCH_BYTES` lowered so
    that this small batch is chunked, as the learner's batch of 1,040 frames is at the default), the
    patches' memory mostly gone, in XLA's figure and in the estimate; and with the whole networks run in
    chunks (`STACK_BYTES` lowered so that 18 frames go 2 at a time, as 1,040 go 80 at a time at the default),
    most of the rest gone too, in both forms, and the estimate as close."""
    import mbrl_jax.nets.image as image

    settings = {"env.name": "Breakout-MinAtar-rgb64", "replay.batch_size": 2, "replay.batch_length": 8}
    configs = {form: make_config("debug", **settings, **{"wm.conv": form}) for form in ("patches", "xla")}
    xla = {form: _update_temporaries(config) for form, config in configs.items()}
    estimate = {form: estimate_memory(config).activations for form, config in configs.items()}
    monkeypatch.setattr(image, "PATCH_BYTES", 2**20)
    xla["chunked"] = _update_temporaries(configs["patches"])
    estimate["chunked"] = estimate_memory(configs["patches"]).activations
    per_image = 4 * image.stack_map_floats((64, 64, 3), configs["xla"].wm.depth)  # bytes of an image's maps
    monkeypatch.undo()  # PATCH_BYTES as it is: a 3-frame chunk's patches are one product
    monkeypatch.setattr(image, "STACK_BYTES", 3 * per_image)
    assert image.patch_chunk(18, per_image, image.STACK_BYTES) == 2  # 2 x 9 frames (batch_length + 1)
    for form, config in configs.items():
        xla[f"{form} in chunks"] = _update_temporaries(config)
        estimate[f"{form} in chunks"] = estimate_memory(config).activations
    for form in xla:
        assert 1.0 <= estimate[form] / xla[form] <= 1.3, (form, estimate[form], xla[form])
    assert xla["patches"] > 1.5 * xla["xla"]  # the patch matrices are most of an image update's memory
    added = (estimate["patches"] - estimate["xla"]) / (xla["patches"] - xla["xla"])
    assert 1.0 <= added <= 1.4, added
    assert xla["chunked"] < xla["xla"] + 0.25 * (xla["patches"] - xla["xla"])
    for form in ("patches", "xla"):  # the networks' maps, forward and backward, one chunk at a time
        assert xla[f"{form} in chunks"] < 0.4 * xla[form], (form, xla[f"{form} in chunks"], xla[form])


def test_the_process_runtime_counts_on_cpu_once_per_sweep():
    config = make_config("debug")
    one, three = check_memory(config, available=64 * GIB), check_memory(config, 64 * GIB, seeds=3)
    assert one.runtime == (CPU_RUNTIME_BYTES if jax.default_backend() == "cpu" else 0)
    assert one.total == one.device + one.runtime
    assert three.runtime == one.runtime and three.device == 3 * one.device
