"""Devices: a learner update (DreamerV3's and TD-MPC2's), a run and a sweep laid out over several (virtual
CPU) devices compute what they compute on one. The checks run in a fresh process
(`tests/scripts/sharded_runs.py`), because the number of CPU devices is fixed when jax starts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.parallel import check_devices

SCRIPT = Path(__file__).resolve().parent / "scripts" / "sharded_runs.py"


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    env = {
        **os.environ,
        "MBRL_JAX_TEST_CACHE": os.environ.get("MBRL_JAX_TEST_CACHE", "/tmp/mbrl_jax_test_xla_cache"),
    }
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path_factory.mktemp("sharded"))],
        capture_output=True,
        text=True,
        env=env,
        timeout=1500,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # the fresh process compiles seven programs
def test_a_sharded_learner_update_equals_the_single_device_update(sharded):
    assert sharded["devices"] == 4
    assert sharded["update_batch_sharding"] == "P('data',)"
    assert sharded["update_all_reduces"] >= 1  # the gradient sum crosses devices: really data-parallel
    assert sharded["update_state_changed"]
    assert sharded["update_state_diff"] < 1e-5
    assert sharded["update_metric_diff"] < 1e-4


@pytest.mark.slow  # the fresh process compiles seven programs
def test_a_run_on_four_devices_computes_what_it_computes_on_one_and_resumes_exactly(sharded):
    assert sharded["run_replay_sharding"] == "P('data',)"
    assert sharded["run_param_diff"] < 1e-5
    single, four = sharded["run_eval"]
    assert single == four
    assert sharded["resume_exact"] and sharded["resume_metrics_equal"]


@pytest.mark.slow  # the fresh process compiles seven programs
def test_a_sweep_lays_its_seeds_across_devices(sharded):
    assert sharded["sweep_sharding"] == "P('seed',)"
    assert sharded["sweep_seed0_param_diff"] < 1e-4


@pytest.mark.slow  # the fresh process compiles seven programs
def test_a_sharded_tdmpc2_update_equals_the_single_device_update(sharded):
    assert sharded["tdmpc2_update_all_reduces"] >= 1  # the gradient sum crosses devices
    assert sharded["tdmpc2_update_params_changed"]
    assert sharded["tdmpc2_update_state_diff"] < 1e-5
    assert sharded["tdmpc2_update_metric_diff"] < 1e-4


def test_more_devices_than_there_are_is_refused():
    with pytest.raises(ConfigError, match=r"run.devices=2 but JAX sees 1 cpu device\(s\); allowed: 1 to 1"):
        check_devices(make_config("debug", **{"run.devices": 2}))
    with pytest.raises(ConfigError, match="run.devices=2 must divide env.num_envs=3 and replay.batch_size=4"):
        make_config("debug", **{"run.devices": 2, "env.num_envs": 3, "replay.batch_size": 4})
