"""The agent and backbone interfaces: a second agent and a second backbone plug in from this file alone, and
the grouped config reads, writes and explains itself."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import yaml

from mbrl_jax.agents import AGENTS, Agent, register_agent
from mbrl_jax.config import (
    ADDED_FIELDS_BEFORE,
    FIELDS,
    LEGACY_KEYS,
    Config,
    ConfigError,
    config_from_dict,
    describe_config,
    make_config,
)
from mbrl_jax.trainer import make_train
from mbrl_jax.world_models import BACKBONES, register_backbone

# ---- a toy agent: a linear policy on the observation, trained to predict the reward ----------------------


def make_linear_agent(config: Config, spec) -> Agent:
    (obs_dim,), A = spec.obs_shapes["vector"], spec.action_dim

    def init(key):
        return {
            "policy": jax.random.normal(key, (obs_dim, A)) * 0.1,
            "reward": jnp.zeros(obs_dim),
            "calls": 0,
        }

    def initial_carry(n):
        return jnp.zeros((n,))  # steps since the episode started

    def act(state, carry, obs, prev_action, is_first, key, mode=False):
        logits = obs["vector"] @ state["policy"]
        index = jnp.argmax(logits, -1) if mode else jax.random.categorical(key, logits)
        carry = jnp.where(is_first, 0.0, carry + 1.0)
        return jax.nn.one_hot(index, A), carry

    def learn(state, batch, key):
        def loss(w):
            return jnp.mean((batch["obs"]["vector"] @ w - batch["reward"]) ** 2)

        value, grad = jax.value_and_grad(loss)(state["reward"])
        state = {**state, "reward": state["reward"] - 0.05 * grad, "calls": state["calls"] + 1}
        return state, {"loss_reward": value}, {}

    return Agent(init, initial_carry, act, learn, replay_context=lambda carry: {})


@pytest.fixture
def linear_agent():
    register_agent("linear", make_linear_agent)
    yield "linear"
    AGENTS.pop("linear")


def test_a_second_agent_registers_from_a_test_file_and_trains_a_chunk(linear_agent):
    config = make_config("debug", agent=linear_agent, **{"run.steps": 600, "run.chunk_steps": 100})
    assert config.env.name == "CartPole-v1"  # reward 1 every step: the reward model starts at loss 1
    trainer = make_train(config)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    state, metrics = jax.jit(trainer.run_chunk)(state)
    updates = config.iterations_per_chunk * config.updates_per_iteration
    assert int(state.agent["calls"]) == updates == int(metrics["updates"])
    assert float(metrics["loss_reward"]) < 0.9  # the loop ran the toy learner on replayed batches
    assert np.isfinite(float(metrics["eval_return"]))
    assert int(metrics["env_steps"]) == config.prefill_steps_per_env * 2 + config.env_steps_per_chunk


def test_an_unknown_agent_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=r"agent='linear' is not known.*allowed: 'dreamer'"):
        make_config("debug", agent="linear")


# ---- a toy backbone: a plain tanh RNN with a flat state -------------------------------------------------


class TanhRNN(nn.Module):
    deter: int
    grouped = False

    def to_state(self, deter):
        return deter

    def to_deter(self, state):
        return state

    @nn.compact
    def __call__(self, state, stoch, action):
        return jnp.tanh(nn.Dense(self.deter)(jnp.concatenate([state, stoch, action], -1)))


@pytest.fixture
def tanh_backbone():
    register_backbone("tanh_rnn", lambda wm: TanhRNN(wm.deter))
    yield "tanh_rnn"
    BACKBONES.pop("tanh_rnn")


def test_a_second_backbone_registers_from_a_test_file_and_trains_a_chunk(tanh_backbone):
    config = make_config("debug", **{"wm.backbone": tanh_backbone, "run.steps": 600, "run.chunk_steps": 100})
    trainer = make_train(config)
    state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
    core = state.agent.params.wm["params"]["core"]
    assert set(core) == {"Dense_0"}  # the world model's core is the toy module, not the block GRU
    before = jax.device_get(core)
    state, metrics = jax.jit(trainer.run_chunk)(state)
    after = jax.device_get(state.agent.params.wm["params"]["core"])
    assert not np.allclose(before["Dense_0"]["kernel"], after["Dense_0"]["kernel"])  # trained through it
    assert all(np.isfinite(float(v)) for v in metrics.values())


def test_an_unknown_backbone_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=r"backbone='mamab' is not known.*'mamba'.*allowed: 'gru', 'mamba'"):
        make_config("debug", **{"wm.backbone": "mamab"})


# ---- the grouped config ---------------------------------------------------------------------------------


def test_config_yaml_is_grouped_and_reads_back_to_the_same_config():
    config = make_config("pendulum", **{"replay.batch_size": 12, "wm.gru.blocks": 4, "run.seed": 7})
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    loaded = yaml.safe_load(text)
    assert loaded["replay"]["batch_size"] == 12 and loaded["wm"]["gru"]["blocks"] == 4
    assert set(loaded) == {"agent", "run", "env", "replay", "wm", "dreamer", "optim", "tdmpc2"}
    assert config_from_dict(loaded) == config


def test_a_flat_config_of_version_0_1_reads_to_the_same_config():
    # 0.1 evaluated with the policy's mode; a stored config without run.eval_policy reads as that
    config = make_config("cartpole", **{"run.seed": 3, "optim.lr": 1e-4, "run.eval_policy": "mode"})
    flat = {legacy: config.flat()[paths[0]] for legacy, paths in LEGACY_KEYS.items()}
    flat["agent"] = "dreamer"
    added = set(ADDED_FIELDS_BEFORE)
    later = {p for p in FIELDS if p.startswith(("tdmpc2.", "wm.mamba.", "wm.transformer."))}  # after 0.1
    assert {p for paths in LEGACY_KEYS.values() for p in paths} | {"agent"} | added | later == set(FIELDS)
    assert config_from_dict(flat) == config


def test_a_stored_config_without_a_later_field_reads_as_what_it_ran_with():
    stored = make_config("pendulum").to_dict()
    assert stored["run"]["eval_policy"] == "sample"  # today's default: as the reference
    del stored["run"]["eval_policy"]
    assert config_from_dict(stored).run.eval_policy == "mode"


def test_group_kwargs_and_dotted_kwargs_are_the_same_override():
    a = make_config("debug", replay={"batch_size": 8}, wm={"gru": {"blocks": 2}})
    b = make_config("debug", **{"replay.batch_size": 8, "wm.gru.blocks": 2})
    assert a == b and a.replay.batch_size == 8 and a.wm.gru.blocks == 2


def test_every_field_has_a_meaning_and_show_config_prints_each_once():
    text = describe_config(make_config("debug"))
    for path, info in FIELDS.items():
        assert info.help, f"{path} has no help text"
        assert sum(line.startswith(f"{path} = ") for line in text.splitlines()) == 1, path
    assert "replay.batch_size = 4" in text and "# replayed windows per update" in text


def test_a_rule_reports_the_dotted_name_and_what_is_allowed():
    with pytest.raises(ConfigError, match=r"dreamer.return_lambda=1.5 must be in \[0, 1\]"):
        make_config("debug", **{"dreamer.return_lambda": 1.5})
    with pytest.raises(ConfigError, match=r"wm.deter=30 must be divisible by wm.gru.blocks=4"):
        make_config("debug", **{"wm.deter": 30})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_config("debug").replay.batch_size = 3  # type: ignore[misc]
