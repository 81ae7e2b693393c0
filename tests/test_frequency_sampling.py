"""Drama's dynamic frequency-based sampler: its probabilities are the paper's softmax of use counts (checked
with numpy on a hand-made count table), sampling follows them, and the counts grow on device with each use."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.replay import (
    frequency_logits,
    imagination_scores,
    replay_add,
    replay_init,
    replay_sample,
    replay_sample_imagination,
    world_model_scores,
)

NUM_ENVS, CAPACITY, LENGTH = 2, 6, 3
# Hand-made use counts [env, slot]; the buffer below has wrapped (cursor 2), so slots 0, 1 hold the newest
# steps and only starts whose window fits before the newest step are valid.
TRAIN = np.array([[0, 4, 9, 1, 2, 7], [3, 0, 5, 8, 1, 6]])
IMAGINE = np.array([[0, 16, 4, 0, 8, 2], [10, 0, 6, 40, 0, 12]])


def filled():
    replay = replay_init({"value": jnp.zeros(NUM_ENVS, jnp.int32)}, CAPACITY, counts=True)
    for t in range(CAPACITY + 2):
        replay = replay_add(replay, {"value": jnp.full(NUM_ENVS, t, jnp.int32)})
    counts = replay.counts.replace(
        train=jnp.asarray(TRAIN, jnp.int32), imagine=jnp.asarray(IMAGINE, jnp.int32)
    )
    return replay.replace(counts=counts)


def valid_mask() -> np.ndarray:
    # Logical position of slot s (0 = oldest) is (s - cursor) % capacity with cursor 2; a window of 3 fits
    # where that position is <= capacity - 3.
    logical = (np.arange(CAPACITY) - 2) % CAPACITY
    return np.broadcast_to(logical <= CAPACITY - LENGTH, (NUM_ENVS, CAPACITY))


def softmax_over_valid(score: np.ndarray) -> np.ndarray:
    e = np.where(valid_mask(), np.exp(score - score[valid_mask()].max()), 0.0)
    return e / e.sum()


def probs(logits) -> np.ndarray:
    return np.asarray(jax.nn.softmax(logits.reshape(-1))).reshape(NUM_ENVS, CAPACITY)


def test_world_model_probabilities_are_the_paper_formula():
    tau = 10.0
    want = softmax_over_valid(-TRAIN / tau)  # p_i ∝ exp(-v_wm_i / tau)
    replay = filled()
    got = probs(frequency_logits(replay, LENGTH, world_model_scores(replay.counts, tau)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert (got[~valid_mask()] == 0).all()


@pytest.mark.parametrize("tau, alpha, beta, scale", [(10.0, 1.0, 1.0, 4.0), (2.0, 0.5, 2.0, 1.0)])
def test_imagination_probabilities_are_the_paper_formula(tau, alpha, beta, scale):
    v_ac = IMAGINE / scale  # imagination counts per world-model batch's worth of starts
    score = (TRAIN - alpha * v_ac - beta * np.maximum(0.0, TRAIN - v_ac)) / tau
    want = softmax_over_valid(score)
    replay = filled()
    got = probs(frequency_logits(replay, LENGTH, imagination_scores(replay.counts, tau, alpha, beta, scale)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_sampling_follows_the_probabilities_and_counts_every_use():
    replay = filled()
    tau, n = 2.0, 20_000  # a low temperature, so the formula's favourites stand out
    want = softmax_over_valid(-TRAIN / tau)
    sample = jax.jit(lambda r, k: replay_sample(r, k, n, LENGTH, sampler="frequency", tau=tau))
    batch, index, after = sample(replay, jax.random.PRNGKey(0))
    drawn = np.zeros((NUM_ENVS, CAPACITY))
    np.add.at(drawn, (np.asarray(index.env), np.asarray(index.slot[:, 0])), 1)
    np.testing.assert_allclose(drawn / n, want, atol=0.015)
    assert drawn[~valid_mask()].sum() == 0
    # The least-trained valid start is the most drawn.
    assert np.unravel_index(drawn.argmax(), drawn.shape) == np.unravel_index(
        np.where(valid_mask(), -TRAIN, -np.inf).argmax(), TRAIN.shape
    )
    # Windows are consecutive steps of one env.
    assert (np.diff(np.asarray(batch["value"]), axis=1) == 1).all()
    # Every draw counted once at its start, on device; imagination counts untouched.
    np.testing.assert_array_equal(np.asarray(after.counts.train) - TRAIN, drawn)
    np.testing.assert_array_equal(np.asarray(after.counts.imagine), IMAGINE)


def test_imagination_draws_count_as_imagination_use():
    replay = filled()
    windows, after = jax.jit(lambda r, k: replay_sample_imagination(r, k, 512, LENGTH, 10.0, 1.0, 1.0, 4.0))(
        replay, jax.random.PRNGKey(1)
    )
    assert windows["value"].shape == (512, LENGTH)
    grown = np.asarray(after.counts.imagine) - IMAGINE
    assert grown.sum() == 512 and grown[~valid_mask()].sum() == 0
    np.testing.assert_array_equal(np.asarray(after.counts.train), TRAIN)


def test_overwritten_slots_start_uncounted_and_uniform_replays_have_no_counts():
    replay = replay_add(filled(), {"value": jnp.full(NUM_ENVS, 99, jnp.int32)})  # overwrites slot 2
    assert (np.asarray(replay.counts.train)[:, 2] == 0).all()
    assert (np.asarray(replay.counts.imagine)[:, 2] == 0).all()
    np.testing.assert_array_equal(np.delete(np.asarray(replay.counts.train), 2, 1), np.delete(TRAIN, 2, 1))
    assert replay_init({"value": jnp.zeros(2)}, 4).counts is None


def test_frequency_sampler_settings_are_validated():
    with pytest.raises(
        ConfigError, match=r"replay.sampler='prioritized' must be one of 'uniform', 'frequency'"
    ):
        make_config("debug", **{"replay.sampler": "prioritized"})
    with pytest.raises(ConfigError, match=r"set dreamer.loss_repval=0"):
        make_config("debug", **{"replay.sampler": "frequency"})
    with pytest.raises(ConfigError, match=r"replay.dfs_tau=0.0 must be > 0"):
        make_config("debug", **{"replay.dfs_tau": 0.0})
    with pytest.raises(ConfigError, match=r"replay.imag_context=300"):
        make_config(
            "debug", **{"replay.sampler": "frequency", "dreamer.loss_repval": 0, "replay.imag_context": 300}
        )
    ok = make_config("debug", **{"replay.sampler": "frequency", "dreamer.loss_repval": 0})
    assert ok.replay.sampler == "frequency" and make_config("debug").replay.sampler == "uniform"
