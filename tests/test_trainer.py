"""The compiled training loop: one compile per run, vmappable over seeds, deterministic."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.config import make_config
from mbrl_jax.trainer import make_train


@pytest.fixture(scope="module")
def debug_config():
    return make_config("debug", **{"run.chunk_steps": 100, "run.steps": 1_000})


@pytest.fixture(scope="module")
def compiled(debug_config):
    """One trainer's init and chunk, jitted once for the module; `traces` grows each time the chunk is
    traced, i.e. once per compilation."""
    trainer = make_train(debug_config)
    traces = []

    def run_chunk(state):
        traces.append(1)
        return trainer.run_chunk(state)

    return trainer, jax.jit(trainer.init), jax.jit(run_chunk), traces


def test_chunk_compiles_once(debug_config, compiled):
    _, init, run_chunk, traces = compiled
    state = init(jax.random.PRNGKey(0))
    steps = []
    for _ in range(3):
        state, metrics = run_chunk(state)
        steps.append(int(metrics["env_steps"]))
    assert len(traces) == 1
    assert run_chunk._cache_size() == 1
    assert np.diff(steps).tolist() == [debug_config.env_steps_per_chunk] * 2


def test_vmapped_seeds_equal_single_runs(compiled):
    trainer, init_1, chunk_1, _ = compiled
    keys = jax.vmap(jax.random.PRNGKey)(jnp.arange(2))
    init_v, chunk_v = jax.jit(jax.vmap(trainer.init)), jax.jit(jax.vmap(trainer.run_chunk))
    states = init_v(keys)
    states, metrics_v = chunk_v(states)
    for seed in range(2):
        single, metrics_1 = chunk_1(init_1(keys[seed]))
        # Same data collected: replay contents are exactly equal up to the end of the first chunk's acting
        # only while the policies agree; batched matmuls may round differently, so compare closely.
        for name in ("loss_model", "loss_rec", "loss_rew", "kl", "eval_return", "episode_return_sum"):
            np.testing.assert_allclose(
                metrics_v[name][seed], metrics_1[name], rtol=2e-3, atol=2e-3, err_msg=name
            )
        leaves_v = jax.tree.leaves(jax.tree.map(lambda x, i=seed: x[i], states.agent.params))
        for a, b in zip(leaves_v, jax.tree.leaves(single.agent.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)
    # and the two seeds really differ
    assert not np.allclose(metrics_v["loss_model"][0], metrics_v["loss_model"][1])


def test_same_seed_same_metrics(compiled):
    _, init, run_chunk, _ = compiled
    a = run_chunk(init(jax.random.PRNGKey(7)))[1]
    b = run_chunk(init(jax.random.PRNGKey(7)))[1]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_train_ratio_is_respected():
    config = make_config(
        "debug",
        **{"env.num_envs": 4, "replay.batch_size": 8, "replay.batch_length": 16, "replay.train_ratio": 32.0},
    )
    # 8*16 replayed steps per update at ratio 32 -> one update per 4 env steps = one step of each of 4 envs
    assert config.env_steps_per_iteration == 4 and config.updates_per_iteration == 1
    assert config.effective_train_ratio == 32.0
    config = make_config(
        "debug",
        **{"env.num_envs": 1, "replay.batch_size": 8, "replay.batch_length": 16, "replay.train_ratio": 512.0},
    )
    assert config.env_steps_per_iteration == 1 and config.updates_per_iteration == 4


def test_public_names_say_what_they_are():
    import pkgutil

    import mbrl_jax
    from mbrl_jax import runner, trainer

    assert mbrl_jax.train is runner.train and mbrl_jax.make_train is trainer.make_train
    modules = {m.name for m in pkgutil.iter_modules(mbrl_jax.__path__)}
    assert "trainer" in modules and "train" not in modules  # no module for the function to hide


def test_evaluation_samples_actions_or_takes_the_mode():
    """An untrained policy is near-uniform (output scale 0.01): sampling it balances CartPole about as long as
    random actions do (about 22 steps), while its mode mostly pushes the same way from similar states, and a
    constant push drops the pole within about 10 steps."""
    returns = {}
    for policy in ("mode", "sample"):
        config = make_config("debug", **{"run.eval_policy": policy, "run.eval_episodes": 64})
        trainer = make_train(config)
        state = jax.jit(trainer.init)(jax.random.PRNGKey(0))
        returns[policy] = float(jax.jit(trainer.evaluate)(state.agent, jax.random.PRNGKey(1)))
    assert 18.0 < returns["sample"] < 30.0, returns
    assert returns["mode"] < 16.0, returns
