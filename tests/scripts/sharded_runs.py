"""Run by tests/test_devices.py in a fresh process with 4 virtual CPU devices (XLA_FLAGS must be set before
jax starts). Prints one JSON object with the measured differences; the test asserts on them."""

import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from mbrl_jax.agents import make_agent  # noqa: E402
from mbrl_jax.config import make_config  # noqa: E402
from mbrl_jax.envs import make_env  # noqa: E402
from mbrl_jax.parallel import make_mesh  # noqa: E402
from mbrl_jax.replay import replay_sample  # noqa: E402
from mbrl_jax.runner import train, train_sweep  # noqa: E402
from mbrl_jax.trainer import make_train  # noqa: E402
from tests.test_tdmpc2 import TINY as TDMPC2_TINY  # noqa: E402

cache = os.environ.get("MBRL_JAX_TEST_CACHE")
if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

SMALL = {
    "env.num_envs": 4,
    "replay.batch_size": 8,
    "run.steps": 328,  # two chunks after the prefill: the resume starts the second
    "run.chunk_steps": 100,
    "run.checkpoint_every": 100,
    "replay.prefill": 128,
    "replay.batch_length": 16,
}
out_dir = Path(sys.argv[1])


def max_diff(a, b) -> float:
    pairs = zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True)
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))) for x, y in pairs)


def equal(a, b) -> bool:
    pairs = zip(jax.tree.leaves(jax.device_get(a)), jax.tree.leaves(jax.device_get(b)), strict=True)
    return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in pairs)


result = {"devices": len(jax.devices())}
one = make_config("debug", **SMALL)
four = one.replace(**{"run.devices": 4})

mesh = make_mesh(four)
split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
learn_key = jax.random.PRNGKey(2)


def sharded_update(config, stride=None) -> tuple[dict, object, object]:
    """One learner update of `config`'s agent on the same batch, on one device and with the batch split over
    the 4 devices (parameters replicated). Returns the measured differences, the state before and after."""
    state = jax.jit(make_train(config).init)(jax.random.PRNGKey(0))
    batch, _, _ = replay_sample(
        state.replay, jax.random.PRNGKey(1), 8, config.sample_length, False, stride=stride
    )
    agent = make_agent(config, make_env(config.env.name, 4).spec)
    single, single_metrics, _ = jax.jit(agent.learn)(state.agent, batch, learn_key)
    in_shardings = (jax.tree.map(lambda _: whole, state.agent), jax.tree.map(lambda _: split, batch), whole)
    compiled = jax.jit(agent.learn, in_shardings=in_shardings).lower(state.agent, batch, learn_key).compile()
    sharded, sharded_metrics, _ = compiled(state.agent, batch, learn_key)
    measured = {
        "all_reduces": compiled.as_text().count("all-reduce("),
        "state_diff": max_diff(single, sharded),
        "metric_diff": max_diff(single_metrics, sharded_metrics),
        "batch_sharding": str(jax.tree.leaves(jax.device_put(batch, split))[0].sharding.spec),
    }
    return measured, state.agent, single


# 1. One DreamerV3 learner update on the same batch: the batch split over 4 devices, parameters replicated.
measured, before, after = sharded_update(one, stride=16)
result.update({f"update_{name}": value for name, value in measured.items()})
# (warm-up holds the first step's learning rate at zero: the optimiser's moments carry the gradients)
result["update_state_changed"] = not equal(after.opt_state, before.opt_state)

# 2. A whole run on 4 devices against the same run on one; 3. a killed sharded run resumes bit for bit.
single_state, single_records = train(one, out_dir / "one", progress=False)
state4, records4 = train(four, out_dir / "four", progress=False)
result["run_param_diff"] = max_diff(single_state.agent.params, state4.agent.params)
result["run_eval"] = [[r["eval_return"] for r in single_records], [r["eval_return"] for r in records4]]
result["run_replay_sharding"] = str(state4.replay.data["obs"]["vector"].sharding.spec)
train(four, out_dir / "resumed", progress=False, stop_after_chunks=1)
resumed, _ = train(four, out_dir / "resumed", progress=False)
result["resume_exact"] = equal(resumed, state4)
result["resume_metrics_equal"] = (out_dir / "resumed" / "metrics.jsonl").read_text() == (
    out_dir / "four" / "metrics.jsonl"
).read_text()

# 4. A sweep's seed axis over 2 devices: seed 0 against its single run on one device.
sweep, _ = train_sweep(one.replace(**{"run.devices": 2}), [0, 1], out_dir / "sweep", progress=False)
result["sweep_seed0_param_diff"] = max_diff(
    jax.tree.map(lambda x: x[0], sweep.agent.params), single_state.agent.params
)
result["sweep_sharding"] = str(jax.tree.leaves(sweep.agent.params)[0].sharding.spec)

# 5. The same for TD-MPC2's learner update (test_tdmpc2's tiny model).
td = make_config("tdmpc2", **{**TDMPC2_TINY, "env.num_envs": 4, "replay.batch_size": 8, "replay.prefill": 64})
measured, before, after = sharded_update(td)
result.update({f"tdmpc2_update_{name}": value for name, value in measured.items()})
result["tdmpc2_update_params_changed"] = not equal(after.params, before.params)
print(json.dumps(result))
