"""Craftax on device: the adapter against craftax's own step_env, runs that resume exactly, a sweep against
its single runs, and Crafter's achievement rates and score against a plain numpy computation."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.envs import CraftaxVecEnv, crafter_score, env_spec, resolve_loop
from mbrl_jax.envs.craftax_env import to_image
from mbrl_jax.logging import read_metrics
from mbrl_jax.runner import train, train_sweep
from mbrl_jax.trainer import episode_outcomes, evaluation_metrics

SYMBOLIC = "craftax:Craftax-Classic-Symbolic-v1"
PIXELS = "craftax:Craftax-Classic-Pixels-v1"
# Each program that steps craftax takes 15 to 30 s to compile on a 2-core CPU per copy of craftax's step
# (a training chunk holds two, its init one), so the default suite checks the adapter, the pixels, the
# metrics and one symbolic run that resumes exactly; the rest (a two-seed sweep against its single runs, a
# pixel run that resumes exactly, envs vmapped over seeds) are opt-in, MBRL_JAX_TEST_CRAFTAX_RUNS=1: about
# 10 minutes more on a 2-core CPU, most of it compiling the pixel run and the sweep, which would take CI's
# suite past its 20 minutes. The same code paths (sweeps, pixel runs, resume) are tested on gymnax envs.
full_runs = pytest.mark.skipif(
    os.environ.get("MBRL_JAX_TEST_CRAFTAX_RUNS") != "1",
    reason="trains more craftax programs (minutes to compile); set MBRL_JAX_TEST_CRAFTAX_RUNS=1",
)
# debug-sized agent, three chunks of 100 env steps (a checkpoint after each); evaluations run 10 steps only
TINY = {
    "env.name": SYMBOLIC,
    "run.steps": 364,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 100,
    "run.eval_steps": 10,
    "replay.prefill": 64,
    "replay.batch_length": 16,
    "replay.capacity": 512,  # holds the 364 steps; debug's 4,000 would make each checkpoint 22 MB
}


def _leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_names_specs_and_loops():
    spec = env_spec(SYMBOLIC)
    assert spec.obs_shapes == {"vector": (1345,)} and spec.action_dim == 17 and spec.discrete
    assert spec.max_episode_steps == 10_000
    assert env_spec(PIXELS).obs_shapes == {"image": (64, 64, 3)}
    assert resolve_loop(SYMBOLIC) == "compiled"
    with pytest.raises(ConfigError, match="craftax env runs on device"):
        resolve_loop(SYMBOLIC, "host")
    with pytest.raises(ConfigError, match="did you mean 'craftax:Craftax-Classic-Symbolic-v1'"):
        make_config(**{"env.name": "craftax:Craftax-Classic-Symbolik-v1"})
    assert make_config("craftax").env.name == SYMBOLIC  # a known name passes the same check
    both = make_config("craftax-pixels", "size1m")
    assert both.env.name == PIXELS and both.run.steps == 1_000_000 and both.replay.train_ratio == 512


def test_pixels_become_64x64_uint8():
    pixels = jax.random.uniform(jax.random.key(0), (2, 63, 63, 3))
    image = np.asarray(to_image(pixels))
    assert image.shape == (2, 64, 64, 3) and image.dtype == np.uint8
    np.testing.assert_allclose(image.mean(), np.asarray(pixels).mean() * 255, atol=2.0)
    exact = jnp.linspace(0.0, 1.0, 64 * 64 * 3).reshape(1, 64, 64, 3)  # already 64 x 64: scaled only
    np.testing.assert_array_equal(to_image(exact), np.round(np.asarray(exact) * 255).astype(np.uint8))
    # the pixel env's first frames: craftax's own rendering through to_image (one reset compiled, no step)
    from craftax.craftax_env import make_craftax_env_from_name

    package = make_craftax_env_from_name("Craftax-Classic-Pixels-v1", auto_reset=False)
    env, key = CraftaxVecEnv(PIXELS, 1), jax.random.key(4)
    frame = jax.jit(env.reset)(key)[1].obs["image"]
    own = jax.jit(package.reset_env)(jax.random.split(key, 1)[0], package.default_params)[0]
    assert frame.shape == (1, 64, 64, 3) and frame.dtype == jnp.uint8 and own.shape == (63, 63, 3)
    np.testing.assert_allclose(frame[0], to_image(own[None])[0], atol=1)


def test_adapter_steps_as_craftax_does_across_episode_ends():
    """Six-step episodes (params.max_timesteps=6): each env is truncated at its sixth action and restarts
    on the next call (the reset convention); env 0 dies on step 9 (health set to 0), a termination. Every
    step's observations, rewards and ends equal craftax's own reset_env / step_env with the same keys."""
    from craftax.craftax_env import make_craftax_env_from_name

    package = make_craftax_env_from_name("Craftax-Classic-Symbolic-v1", auto_reset=False)
    params = package.default_params.replace(max_timesteps=6)
    n, steps, death = 2, 12, 8
    env = CraftaxVecEnv(SYMBOLIC, n, params)
    assert env.spec.max_episode_steps == 6 and len(env.achievement_names) == 22
    actions = jax.random.randint(jax.random.key(1), (steps, n), 0, 17)
    keys = jax.random.split(jax.random.key(2), steps)
    step, reset = jax.jit(env.step), jax.jit(env.reset)
    pkg_step, pkg_reset = jax.jit(package.step_env), jax.jit(package.reset_env)

    state, ts = reset(jax.random.key(0))
    ref = [pkg_reset(k, params) for k in jax.random.split(jax.random.key(0), n)]
    # vmapped, the float features (the light level) may differ from the unbatched ones in the last bit
    np.testing.assert_allclose(ts.obs["vector"], np.stack([o for o, _ in ref]), rtol=1e-6, atol=1e-7)
    ref_states, ref_last, ends = [s for _, s in ref], [False] * n, set()
    for t in range(steps):
        if t == death:  # env 0 at zero health: its next step ends the episode by death
            dead = state.env.player_health.at[0].set(0)
            state = state.replace(env=state.env.replace(player_health=dead))
            ref_states[0] = ref_states[0].replace(player_health=0)
        state, ts = step(state, actions[t], keys[t])
        k_step, k_reset = jax.random.split(keys[t])
        for i, (ks, kr) in enumerate(
            zip(jax.random.split(k_step, n), jax.random.split(k_reset, n), strict=True)
        ):
            if ref_last[i]:
                obs, ref_states[i] = pkg_reset(kr, params)
                reward, done, terminated = 0.0, False, False
            else:
                obs, ref_states[i], reward, done, _ = pkg_step(ks, ref_states[i], actions[t, i], params)
                terminated = bool(ref_states[i].player_health <= 0)
            ref_last[i] = bool(done)
            if done:
                ends.add((i, "terminated" if terminated else "truncated"))
            np.testing.assert_allclose(ts.obs["vector"][i], obs, 1e-6, 1e-7, err_msg=f"step {t} env {i}")
            assert float(ts.reward[i]) == float(reward), (t, i)
            assert bool(ts.is_last[i]) == bool(done) and bool(ts.is_terminal[i]) == terminated, (t, i)
            np.testing.assert_array_equal(env.achievements(state)[i], ref_states[i].achievements)
    assert ends == {(0, "truncated"), (1, "truncated"), (0, "terminated")}


def test_crafter_score_and_rates_against_numpy():
    rng = np.random.default_rng(0)
    unlocked = rng.random((7, 22)) < np.linspace(0.0, 0.9, 22)  # [episodes, achievements]
    names = tuple(f"a{i}" for i in range(22))
    got = evaluation_metrics(names, jnp.arange(7.0), jnp.asarray(unlocked))
    assert float(got["eval_return"]) == pytest.approx(3.0)
    rates = [100.0 * sum(unlocked[e, i] for e in range(7)) / 7 for i in range(22)]
    for i, name in enumerate(names):
        assert float(got["eval_achievement/" + name]) == pytest.approx(rates[i], rel=1e-6)
    # Hafner (2021): S = exp(mean ln(1 + s_i)) - 1, written here as a product's root
    reference = np.prod([1.0 + r for r in rates]) ** (1.0 / len(rates)) - 1.0
    assert crafter_score(rates) == pytest.approx(reference, rel=1e-9)
    assert crafter_score([0.0] * 22) == 0.0 and crafter_score([100.0] * 22) == pytest.approx(100.0)
    assert evaluation_metrics((), jnp.arange(3.0), jnp.zeros((3, 0), bool)).keys() == {"eval_return"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("craftax")
    state, records = train(make_config("debug", **TINY), logdir, progress=False)
    return logdir, state, records


@pytest.mark.slow  # compiles a training run's programs
def test_symbolic_run_logs_achievements_and_resumes_exactly(tmp_path, straight):
    straight_dir, straight_state, records = straight
    assert len(records) == 3
    for r in records:
        rates = {k: v for k, v in r.items() if k.startswith("eval_achievement/")}
        assert len(rates) == 22 and all(0.0 <= v <= 100.0 for v in rates.values())
        assert r["eval_crafter_score"] == pytest.approx(crafter_score(list(rates.values())))
    config = make_config("debug", **TINY)
    train(config, tmp_path, progress=False, stop_after_chunks=2)
    state, _ = train(config, tmp_path, progress=False)
    for a, b in zip(_leaves(state), _leaves(straight_state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert read_metrics(tmp_path) == read_metrics(straight_dir)


@full_runs
@pytest.mark.slow  # two programs of craftax's step
def test_envs_vmapped_over_seeds_match_separate_runs():
    """What a sweep asks of the envs, without training: `episode_outcomes` of a random policy vmapped over
    two keys equals each key's own run (returns, achievements, observations)."""
    env = CraftaxVecEnv(SYMBOLIC, 2)

    def act(carry, obs, prev_action, is_first, key):
        return jax.nn.one_hot(jax.random.randint(key, (2,), 0, 17), 17), carry

    def run(key):
        returns, achievements = episode_outcomes(env, act, None, key, max_steps=6)
        return returns, achievements, env.reset(key)[1].obs["vector"]

    keys = jax.random.split(jax.random.key(3), 2)
    swept = jax.jit(jax.vmap(run))(keys)
    one = jax.jit(run)
    for i in range(2):
        for a, b in zip(jax.tree.leaves(swept), jax.tree.leaves(one(keys[i])), strict=True):
            # batched float features may differ in the last bit
            np.testing.assert_allclose(np.asarray(a[i], float), np.asarray(b, float), rtol=1e-6, atol=1e-7)
    assert swept[1].shape == (2, 2, 22) and not np.array_equal(swept[2][0], swept[2][1])


@full_runs
@pytest.mark.slow  # trains a sweep and a second seed
def test_a_two_seed_sweep_matches_its_single_runs(tmp_path, straight):
    """As tests/test_sweep.py: the same counts and evaluations, losses and parameters to a tolerance (a
    batched dot sums in another order on CPU)."""
    _, straight_state, straight_records = straight
    config = make_config("debug", **TINY)
    sweep_state, swept = train_sweep(config, [0, 1], tmp_path, progress=False)
    other_state, other = train(config.replace(**{"run.seed": 1}), None, progress=False)
    for i, (state, single) in enumerate([(straight_state, straight_records), (other_state, other)]):
        for a, b in zip(swept[i], single, strict=True):
            assert a.keys() == b.keys()
            for key in ("env_steps", "updates", "episodes", "eval_return", "eval_crafter_score"):
                assert a.get(key) == b.get(key), (i, key)
            for key in (k for k in a if k.startswith(("loss", "eval_achievement/"))):
                np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=1e-6, err_msg=f"{i} {key}")
        for x, y in zip(_leaves(sweep_state.agent), _leaves(state.agent), strict=True):
            np.testing.assert_allclose(x[i], y, rtol=1e-4, atol=1e-5)


@full_runs
@pytest.mark.slow  # compiles the pixel programs
def test_pixel_run_resumes_exactly(tmp_path):
    config = make_config("debug", **{**TINY, "env.name": PIXELS, "run.steps": 264})
    state, records = train(config, tmp_path / "straight", progress=False)
    assert records[-1]["eval_crafter_score"] >= 0.0
    train(config, tmp_path / "resumed", progress=False, stop_after_chunks=1)
    resumed, _ = train(config, tmp_path / "resumed", progress=False)
    for a, b in zip(_leaves(resumed), _leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")


def test_the_report_section_means_the_seeds_last_evaluations(tmp_path):
    import json

    from benchmarks.craftax_baseline import craftax_section

    def record(steps, wood, score):
        rates = {"eval_achievement/collect_wood": wood, "eval_achievement/place_table": 0.0}
        return {"env_steps": steps, "eval_return": wood / 10, **rates, "eval_crafter_score": score}

    runs = {"craftax": []}
    for seed, wood in [(0, 50.0), (1, 70.0)]:
        logdir = tmp_path / "runs" / f"craftax-s{seed}"
        logdir.mkdir(parents=True)
        lines = [record(100, 0.0, 0.0), {"env_steps": 150}, record(200, wood, wood / 4)]
        (logdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        runs["craftax"].append(logdir)
    baseline = {"env": SYMBOLIC, "episodes": 100, "return_mean": 0.5, "crafter_score": 1.25}
    baseline["achievements"] = {"collect_wood": 10.0, "place_table": 1.0}
    speed = {"num_envs": 16, "env_steps_per_s": 1234.0}
    (tmp_path / "craftax-cpu.json").write_text(
        json.dumps({"note": "shared", "random": [baseline], "env_speed": [speed]})
    )
    text = "\n".join(craftax_section(tmp_path, runs))
    assert "| collect_wood | 10.0 | 60.0 |" in text and "| place_table | 1.0 | 0.0 |" in text
    assert "| **score** | **1.25** | **15.00** |" in text and "| return | 0.50 | 6.00 |" in text
    assert "16 envs: 1,234 steps/s" in text and "at 200, 200 env steps" in text
    assert craftax_section(tmp_path / "none", {}) == []
