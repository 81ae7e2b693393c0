"""The non-finite guard: quiet on a healthy run whose episodes outlast a chunk, loud when the agent's state
really turns non-finite, naming what did."""

import csv
import math

import jax.numpy as jnp
import pytest

import mbrl_jax.runner as runner
from mbrl_jax.config import make_config
from mbrl_jax.logging import read_metrics
from mbrl_jax.runner import describe_non_finite, train

SMALL = {
    "run.steps": 1_064,
    "run.chunk_steps": 100,
    "replay.prefill": 64,
    "replay.batch_length": 16,
    "run.checkpoint_every": 400,
}


def test_run_whose_episodes_outlast_a_chunk_finishes(tmp_path):
    # Pendulum episodes last 200 steps per env; a chunk is 50 steps per env, so most chunks end no episode.
    config = make_config("debug", **{"env.name": "Pendulum-v1"}, **SMALL)
    state, records = train(config, tmp_path, progress=False)
    assert int(state.env_steps) >= config.run.steps and records[-1]["env_steps"] >= config.run.steps
    quiet = [r for r in records if r["episodes"] == 0]
    ended = [r for r in records if r["episodes"] > 0]
    assert len(quiet) >= 5 and ended
    assert all("episode_return" not in r and "episode_length" not in r for r in quiet)
    assert all(math.isfinite(r["episode_return"]) and r["episode_length"] == 200 for r in ended)
    assert "NaN" not in (tmp_path / "metrics.jsonl").read_text()
    assert read_metrics(tmp_path) == records
    with open(tmp_path / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["episode_return"] == "" for r in rows] == [r["episodes"] == 0 for r in records]


@pytest.mark.parametrize("poison_losses", [False, True])
def test_guard_stops_a_run_whose_parameters_turn_non_finite(tmp_path, poison_run, poison_losses):
    config = make_config("debug", **{**SMALL, "run.steps": 700})
    first_bad = config.prefill_steps_per_env * config.env.num_envs + 3 * config.env_steps_per_chunk
    poison_run(first_bad, jnp.inf, params="wm", loss="loss_rew" if poison_losses else None)
    with pytest.raises(runner.NonFiniteError) as err:
        train(config, tmp_path, progress=False)
    message = str(err.value)
    assert f"env step {first_bad}" in message
    assert "agent state params/wm/" in message and "actor" not in message
    assert ("losses loss_rew" in message) == poison_losses
    assert read_metrics(tmp_path)[-1]["env_steps"] == first_bad - config.env_steps_per_chunk


def test_describe_non_finite_names_losses_then_state():
    names = [
        "agent/params/wm/a",
        "agent/params/wm/b",
        "agent/opt_state/c",
        "agent/slow_critic/d",
        "losses/loss_x",
    ]
    text = describe_non_finite(names, limit=2)
    assert text == "losses loss_x; agent state params/wm/a, params/wm/b and 2 more tensors"
