"""The device-memory estimate: exact for the state, close to XLA's own figure for the update, and a check that
refuses what cannot fit with the figures while staying quiet on what can."""

import jax
import numpy as np
import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.memory import GIB, check_memory, device_memory, estimate_memory
from mbrl_jax.trainer import make_train


def test_estimate_is_close_to_xla_for_a_compiled_chunk():
    """XLA's memory analysis of the compiled chunk (arguments + temporaries) against the estimate: the
    estimate may err high, not low, and not by more than 2x."""
    config = make_config("debug", **{"replay.batch_size": 16})
    trainer = make_train(config)
    state = jax.eval_shape(trainer.init, jax.random.PRNGKey(0))
    stats = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state).compile().memory_analysis()
    xla = stats.argument_size_in_bytes + stats.temp_size_in_bytes
    ratio = estimate_memory(config).total / xla
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
        match=r"replay.batch_size=4 x replay.batch_length=16 needs about [\d.]+ MiB .*activations",
    ):
        check_memory(config, available=2**20)
    big_replay = make_config("debug", **{"replay.capacity": 50_000_000, "replay.max_gib": 1000.0})
    with pytest.raises(
        ConfigError, match=r"replay.capacity=50000000 needs about [\d.]+ GiB .*replay [\d.]+ GiB"
    ):
        check_memory(big_replay, available=GIB)


def test_check_is_quiet_when_it_fits():
    estimate = check_memory(make_config("debug"), available=GIB)
    assert 0 < estimate.total < GIB
    available = device_memory()
    assert available is not None and available > 0
    assert np.isfinite(available)
