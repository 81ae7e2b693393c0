"""The registries refuse what they do not hold, and the grouped config reads, writes and explains itself."""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from mbrl_jax.config import (
    ADDED_FIELDS_BEFORE,
    FIELDS,
    LEGACY_KEYS,
    ConfigError,
    config_from_dict,
    describe_config,
    make_config,
)

# ---- the registries (an agent and a backbone from one file each: tests/test_plugins.py) -----------------


def test_an_unknown_agent_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=r"agent='linear' is not known.*allowed: 'dreamer'"):
        make_config("debug", agent="linear")


def test_an_unknown_backbone_is_refused_with_the_registered_ones():
    with pytest.raises(ConfigError, match=r"backbone='mamab' is not known.*'mamba'.*allowed: 'gru', 'mamba'"):
        make_config("debug", **{"wm.backbone": "mamab"})


# ---- the grouped config ---------------------------------------------------------------------------------


def test_config_yaml_is_grouped_and_reads_back_to_the_same_config():
    config = make_config("pendulum", **{"replay.batch_size": 12, "wm.gru.blocks": 4, "run.seed": 7})
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    loaded = yaml.safe_load(text)
    assert loaded["replay"]["batch_size"] == 12 and loaded["wm"]["gru"]["blocks"] == 4
    assert set(loaded) == {"agent", "run", "env", "replay", "wm", "dreamer", "optim", "drama", "tdmpc2"}
    assert set(loaded["wm"]) >= {"gru", "mamba", "transformer", "deter", "conv"}
    assert config_from_dict(loaded) == config


def test_a_flat_config_of_version_0_1_reads_to_the_same_config():
    # 0.1 evaluated with the policy's mode; a stored config without run.eval_policy reads as that
    config = make_config("cartpole", **{"run.seed": 3, "optim.lr": 1e-4, "run.eval_policy": "mode"})
    flat = {legacy: config.flat()[paths[0]] for legacy, paths in LEGACY_KEYS.items()}
    flat["agent"] = "dreamer"
    added = set(ADDED_FIELDS_BEFORE)
    after = ("tdmpc2.", "drama.", "wm.mamba.", "wm.transformer.")  # groups added after 0.1
    later = {p for p in FIELDS if p.startswith(after)}
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
    with pytest.raises(ConfigError, match=r"wm.deter=30 must be divisible by wm.gru.blocks=8"):
        make_config("debug", **{"wm.deter": 30})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        make_config("debug").replay.batch_size = 3  # type: ignore[misc]
