"""An agent and a backbone are each one file: `tests/toy_agent.py` (random-shooting MPC on a learned model)
and `tests/toy_backbone.py` (a tanh RNN) register from outside the package, with their own settings and
presets, and then train, checkpoint, resume exactly, show in `--show-config` and refuse settings they would
ignore, as the built-in ones do. No file under mbrl_jax/ names them."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import toy_agent
import toy_backbone

from mbrl_jax.config import FIELDS, ConfigError, config_from_dict, make_config
from mbrl_jax.logging import read_metrics
from mbrl_jax.memory import estimate_memory
from mbrl_jax.runner import train
from mbrl_jax.trainer import make_train

ROOT = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name.replace("/", "_"), ROOT / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shooting(restore_registries):
    return toy_agent.register()


@pytest.fixture
def tanh_rnn(restore_registries):
    return toy_backbone.register()


def leaves(state):
    return jax.tree.leaves(jax.device_get(state))


def assert_resumes_exactly(config, tmp_path):
    """A run stopped after its first chunk and resumed ends where an uninterrupted run does, leaf for leaf."""
    straight, _ = train(config, tmp_path / "straight", progress=False)
    train(config, tmp_path / "resumed", progress=False, stop_after_chunks=1)
    assert (tmp_path / "resumed" / "checkpoints").exists()
    assert len(read_metrics(tmp_path / "resumed")) == 1
    resumed, _ = train(config, tmp_path / "resumed", progress=False)
    for a, b in zip(leaves(straight), leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")
    return read_metrics(tmp_path / "straight")


def show_config(capsys, *argv: str) -> str:
    run = load_script("experiments/run.py")
    assert run.main(["--show-config", *argv]) == 0
    return capsys.readouterr().out


def test_agent_from_one_file_trains_learns_and_resumes_exactly(shooting, tmp_path):
    config = make_config("shooting", **{"run.checkpoint_every": 100})
    assert config.shooting.candidates == 64 and "shooting.horizon" in FIELDS
    records = assert_resumes_exactly(config, tmp_path)
    assert len(records) == config.num_chunks
    losses = [r["loss_model"] for r in records]
    assert all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0]  # the model fits the transitions
    stored = (tmp_path / "straight" / "config.yaml").read_text()
    assert "shooting:" in stored and "candidates: 64" in stored
    assert estimate_memory(config).activations > 0  # its own estimate, not DreamerV3's


def test_agent_from_one_file_shows_its_settings_and_refuses_others(shooting, capsys):
    text = show_config(capsys, "--preset", "shooting", "shooting.candidates=16")
    assert "[shooting]  random-shooting MPC" in text and "shooting.candidates = 16" in text
    with pytest.raises(ConfigError, match=r"optim.lr=0.1 is a setting of the 'optim' group, read by "):
        make_config("shooting", **{"optim.lr": 0.1})
    with pytest.raises(
        ConfigError, match=r"wm.deter=64 .* agent='shooting' reads env, replay, run, shooting"
    ):
        make_config("shooting", **{"wm.deter": 64})
    with pytest.raises(
        ConfigError, match=r"shooting.candidates=8 .* read by agent='shooting'; agent='dreamer'"
    ):
        make_config("debug", **{"shooting.candidates": 8})
    with pytest.raises(ConfigError, match=r"agent='shooting' takes one vector observation"):
        make_config("shooting", **{"env.name": "Breakout-MinAtar"})


def test_a_run_of_another_agent_reads_back_after_the_toy_agent_is_gone(tmp_path, restore_registries):
    stored = make_config("debug").to_dict()  # written while only the built-in agents exist
    toy_agent.register()
    assert config_from_dict(stored).shooting == toy_agent.ShootingConfig()  # the new group reads as defaults


def test_backbone_from_one_file_trains_and_resumes_exactly(tanh_rnn, tmp_path):
    config = make_config("debug", "tanh_rnn", **{"run.steps": 600, "run.chunk_steps": 100})
    state = jax.eval_shape(make_train(config).init, jax.random.PRNGKey(0))
    core = state.agent.params.wm["params"]["core"]
    assert set(core) == {"Dense_0"}  # the world model's core is the toy module, not the block GRU
    records = assert_resumes_exactly(config.replace(**{"run.checkpoint_every": 100}), tmp_path)
    assert all(np.isfinite(r["loss_model"]) for r in records)


def test_backbone_from_one_file_shows_its_settings_and_refuses_others(tanh_rnn, capsys):
    text = show_config(capsys, "--preset", "debug,tanh_rnn", "wm.tanh_rnn.scale=2")
    assert "[wm.tanh_rnn]  plain tanh RNN" in text and "wm.tanh_rnn.scale = 2.0" in text
    with pytest.raises(ConfigError, match=r"wm.tanh_rnn.scale=20.0 saturates the tanh"):
        make_config("debug", "tanh_rnn", **{"wm.tanh_rnn.scale": 20.0})
    with pytest.raises(ConfigError, match=r"wm.tanh_rnn.scale=2.0 is a setting of backbone 'tanh_rnn'"):
        make_config("debug", **{"wm.tanh_rnn.scale": 2.0})
    with pytest.raises(ConfigError, match=r"wm.gru.blocks=2 is a setting of backbone 'gru'"):
        make_config("debug", "tanh_rnn", **{"wm.gru.blocks": 2})


def test_throughput_measures_the_agent_and_the_backbone_from_one_file(restore_registries):
    throughput = load_script("benchmarks/throughput.py")
    toy_agent.register(), toy_backbone.register()
    settings = dict(updates=2, chunks=1, act_steps=4, peak_size=64, act_num_envs=(2,))
    agent = throughput.measure(make_config("shooting", **{"run.chunk_steps": 50}), **settings)
    assert agent["agent"] == "shooting" and not set(throughput.IMAGINATION_FIELDS) & set(agent)
    backbone = throughput.measure(make_config("debug", "tanh_rnn", **{"run.chunk_steps": 50}), **settings)
    assert backbone["agent"] == "dreamer" and backbone["imagination_steps_per_s"] > 0
    for result in (agent, backbone):
        for field in throughput.NUMERIC_FIELDS:
            assert np.isfinite(result[field]) and result[field] > 0, (field, result[field])


def test_registrations_do_not_outlive_their_test():
    assert "shooting" not in sys.modules["mbrl_jax.agents"].AGENTS
    assert not any(path.startswith(("shooting.", "wm.tanh_rnn.")) for path in FIELDS)
