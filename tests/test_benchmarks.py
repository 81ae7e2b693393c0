"""benchmarks/throughput.py: every figure there, finite and positive, for each agent (DreamerV3 with its
imagination figures, TD-MPC2 without); scans counted in FLOPs; the CLI JSON; the results page's tables."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mbrl_jax.config import make_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "throughput.py"
spec = importlib.util.spec_from_file_location("throughput_bench", SCRIPT)
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)

# Tiny and fast: one short chunk, two updates, a small matmul for the peak. The CLI test passes the same
# settings so its compiles hit the persistent cache that tests/conftest.py sets up.
OVERRIDES = {"run.chunk_steps": 50, "run.eval_episodes": 1}
SETTINGS = {"updates": 2, "chunks": 1}
PEAK_SIZE = 256
DREAMER_FIELDS = throughput.RESULT_FIELDS + throughput.IMAGINATION_FIELDS
# TD-MPC2's 1M model planning with few samples, batch 8 of its 4-step windows, one update per env step (the
# preset's ratio), chunks of 10 env steps after 64 random ones; its act calls on 2 envs (one compile: the
# list over several batch sizes is the DreamerV3 test's).
TDMPC2_PRESETS = ("tdmpc2", "tdmpc2-1m")
TDMPC2_OVERRIDES = {
    "tdmpc2.iterations": 2,
    "tdmpc2.num_samples": 32,
    "tdmpc2.num_elites": 8,
    "tdmpc2.num_pi_trajs": 4,
    "replay.batch_size": 8,
    "replay.train_ratio": 32.0,
    "replay.prefill": 64,
    "run.chunk_steps": 10,
    "run.eval_episodes": 1,
}


def assert_finite_and_positive(result: dict, fields) -> None:
    for field in fields:
        value = result[field]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (field, value)


def assert_act_calls(result: dict, num_envs) -> None:
    """One record per batch size, in order, with its time and rate finite and positive."""
    assert [call["num_envs"] for call in result["act_calls"]] == list(num_envs)
    for call in result["act_calls"]:
        assert set(call) == set(throughput.ACT_CALL_FIELDS)
        assert_finite_and_positive(call, ("act_ms", "steps_per_s"))
        assert call["steps_per_s"] == pytest.approx(call["num_envs"] / (call["act_ms"] / 1e3))
        assert call["compile_s"] >= 0


@pytest.fixture(scope="module")
def result():
    config = make_config("debug", **OVERRIDES)
    return throughput.measure(config, **SETTINGS, peak_size=PEAK_SIZE)


@pytest.fixture(scope="module")
def tdmpc2_result():
    config = make_config(*TDMPC2_PRESETS, **TDMPC2_OVERRIDES)
    return throughput.measure(config, **SETTINGS, act_steps=10, peak_size=PEAK_SIZE, act_num_envs=(2,))


def test_measure_has_every_field_finite_and_positive(result):
    assert list(result) == list(DREAMER_FIELDS)  # the imagination figures too: DreamerV3 imagines
    assert_finite_and_positive(result, throughput.NUMERIC_FIELDS + ("imagination_steps_per_s",))
    assert_act_calls(result, throughput.DEFAULT_ACT_NUM_ENVS)
    assert result["agent"] == "dreamer" and result["imag_horizon"] == 5
    assert result["peak_fraction"] == pytest.approx(result["update_gflops_per_s"] / result["peak_gflops"])
    assert result["update_gflops_per_s"] == pytest.approx(
        result["update_gflop"] / (result["learner_update_ms"] / 1e3)
    )
    # The loops over time (observe, imagine, their gradients) add FLOPs that XLA's rolled count misses.
    assert result["update_gflop"] > result["update_gflop_xla_rolled"]
    assert result["env_steps_per_chunk"] == make_config("debug", **OVERRIDES).env_steps_per_chunk
    assert isinstance(result["imagination_note"], str) and result["imagination_note"]


def test_measure_tdmpc2_has_every_common_field_and_no_imagination(tdmpc2_result):
    """The same `measure` on TD-MPC2: its training chunk, learner, acting and MPPI act calls, every figure
    finite and positive; the imagination figures, a part TD-MPC2 does not have, are absent (not null)."""
    r = tdmpc2_result
    assert list(r) == list(throughput.RESULT_FIELDS)
    assert not set(throughput.IMAGINATION_FIELDS) & set(r)
    assert_finite_and_positive(r, throughput.NUMERIC_FIELDS)
    assert_act_calls(r, (2,))
    described = {k: r[k] for k in ("agent", "env", "num_envs", "batch_size", "batch_length")}
    assert described == dict(agent="tdmpc2", env="Pendulum-v1", num_envs=1, batch_size=8, batch_length=4)
    assert r["env_steps_per_chunk"] == 10 and r["updates_per_chunk"] == 10  # one update per env step
    # the 1M model: encoder, dynamics, reward, 2 Q functions and the policy prior, the target Qs not counted
    assert 1_000_000 < r["num_params"] < 1_300_000
    assert r["update_gflops_per_s"] == pytest.approx(r["update_gflop"] / (r["learner_update_ms"] / 1e3))


def test_results_page_renders_agents_with_and_without_a_part(tmp_path, result, tdmpc2_result):
    """A report of both agents on the results page (learning.py's throughput section) and in the table:
    a part one agent lacks shows as '–' in its column; the act calls as one cell per agent."""
    from benchmarks.learning import throughput_section

    machine = {"device_kind": "cpu", "platform": "cpu", "cpu_count": 2, "jax_version": "0"}
    results = [{"preset": "debug", **result}, {"preset": "tdmpc2", **tdmpc2_result}]
    report = {"machine": machine, "settings": {}, "results": results}
    (tmp_path / "throughput-both.json").write_text(json.dumps(report))
    rows = {line.split(" | ")[0]: line for line in throughput_section(tmp_path) if line.startswith("| ")}
    assert rows["| agent"] == "| agent | dreamer | tdmpc2 |"
    assert rows["| imagined steps/s"].endswith(" | – |") and "–" not in rows["| learner update (ms)"]
    act_ms = rows["| agent.act alone, ms per call (n envs)"].split(" | ")[1:]
    assert [cell.count("n=") for cell in act_ms] == [2, 1]  # DreamerV3 at 1 and 8 envs, TD-MPC2 at 2
    assert "n=2: " in rows["| agent.act alone, env steps/s (n envs)"].split(" | ")[2]
    throughput.print_table(report)  # the same rows on stderr, without raising on the absent fields


def test_program_flops_counts_every_scan_iteration():
    """A nested scan of matmuls against the count by hand: XLA alone counts each loop body once."""
    n, inner, outer = 32, 3, 5

    def f(x):
        def inner_step(c, _):
            return c @ x, None

        def outer_step(c, _):
            return jax.lax.scan(inner_step, c, None, length=inner)[0] * 2.0, None

        return jax.lax.scan(outer_step, x, None, length=outer)[0]

    flops, rolled = throughput.program_flops(f, jnp.ones((n, n)))
    expected = outer * (inner * 2 * n**3 + n * n)  # matmuls + the elementwise doubling
    assert flops == pytest.approx(expected, rel=1e-3)
    assert rolled < expected / (inner * outer) * 1.5


B, N, M = 4, 64, 48  # a dense layer [B, N] x [N, M]: 2*B*N*M FLOPs
DENSE = 2 * B * N * M


def dense_scan(length: int, unroll):
    """carry [B, M] + x_t @ w over xs [length, B, N]: one dense layer per step (and B*M adds)."""

    def f(w, xs):
        step = lambda carry, x: (carry + x @ w, None)
        return jax.lax.scan(step, jnp.zeros((B, M)), xs, unroll=unroll)[0]

    return f, (jnp.ones((N, M)), jnp.ones((length, B, N)))


def test_program_flops_of_a_plain_matmul():
    flops, rolled = throughput.program_flops(jnp.matmul, jnp.ones((B, N)), jnp.ones((N, M)))
    assert flops == rolled == pytest.approx(DENSE, rel=0.02)


# unroll=k lowers to a while loop over blocks of k steps plus the remaining steps in line; k >= length (or
# True) to no loop at all. Each case below counted by XLA alone is wrong by a factor, so 5% catches it.
@pytest.mark.parametrize(
    "length, unroll", [(8, 1), (8, 2), (8, 8), (8, True), (6, 3), (7, 3), (7, 5), (1, 1), (5, 9)]
)
def test_program_flops_counts_unrolled_scans(length, unroll):
    f, args = dense_scan(length, unroll)
    flops, _ = throughput.program_flops(f, *args)
    assert flops == pytest.approx(length * DENSE, rel=0.05)


def test_program_flops_counts_nested_unrolled_scans():
    """An inner scan of 7 steps unrolled by 3, inside an outer scan of 3 steps unrolled in full."""
    inner, outer = 7, 3
    f, (w, xs) = dense_scan(inner, 3)

    def g(w, xs):
        # xs * k: the outer steps differ, so XLA cannot merge the unrolled copies into one.
        step = lambda total, k: (total + f(w, xs * k), None)
        return jax.lax.scan(step, jnp.zeros((B, M)), jnp.arange(1.0, outer + 1), unroll=True)[0]

    flops, _ = throughput.program_flops(g, w, xs)
    assert flops == pytest.approx(outer * inner * DENSE, rel=0.05)


def test_bad_preset_exits_2_before_compiling(capsys):
    assert throughput.main(["--preset", "cartpol"]) == 2
    assert "cartpole" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "1,x", "", "2,-1"])
def test_bad_act_num_envs_exits_2_before_compiling(value, capsys, monkeypatch):
    monkeypatch.setattr(throughput, "measure_peak_gflops", lambda *a: pytest.fail("measured on bad input"))
    assert throughput.main(["--preset", "debug", "--act-num-envs", value]) == 2
    assert "--act-num-envs" in capsys.readouterr().err


def test_parse_num_envs_takes_good_batch_sizes():
    assert throughput.parse_num_envs("1,8") == [1, 8] and throughput.parse_num_envs("3") == [3]


def test_cli_prints_json_and_writes_out(tmp_path, result):
    out = tmp_path / "bench.json"
    env = dict(
        os.environ,
        JAX_COMPILATION_CACHE_DIR=str(jax.config.jax_compilation_cache_dir),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    args = [
        "--preset",
        "debug",
        "--updates",
        str(SETTINGS["updates"]),
        "--chunks",
        str(SETTINGS["chunks"]),
        "--peak-size",
        str(PEAK_SIZE),
        "--out",
        str(out),
        *(f"{k}={v}" for k, v in OVERRIDES.items()),
    ]
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed == json.loads(out.read_text())
    assert set(printed["machine"]) == set(throughput.MACHINE_FIELDS)
    (only,) = printed["results"]
    assert only["preset"] == "debug"
    assert list(only) == ["preset", *DREAMER_FIELDS]
    assert printed["settings"]["act_num_envs"] == list(throughput.DEFAULT_ACT_NUM_ENVS)
    assert printed["settings"]["overrides"] == OVERRIDES
    # Same program as the fixture's (compiled here or loaded from the cache): the same FLOPs.
    assert only["update_gflop"] == pytest.approx(result["update_gflop"])


_scaling_spec = importlib.util.spec_from_file_location("scaling_bench", ROOT / "benchmarks" / "scaling.py")
scaling = importlib.util.module_from_spec(_scaling_spec)
_scaling_spec.loader.exec_module(scaling)


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--seeds", "1,x"], ["--seeds", "'1,x'"]),
        (["--devices", "0"], ["--devices", "'0'"]),
        (["--preset", "debug", "--devices", "3"], ["run.devices=3", "env.num_envs=2"]),
        (["--chunks", "0"], ["--chunks", "0"]),
    ],
)
def test_scaling_bad_input_exits_2_before_compiling(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(scaling, "measure", lambda *a, **k: pytest.fail("measured on bad input"))
    assert scaling.main(argv) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_scaling_ratios_are_relative_to_the_first_row():
    rows = scaling.with_ratios([{"chunk_s": 2.0}, {"chunk_s": 5.0}, {"chunk_s": 1.0}])
    assert [r["wall_ratio"] for r in rows] == [1.0, 2.5, 0.5]


backbones_spec = importlib.util.spec_from_file_location(
    "backbones_bench", ROOT / "benchmarks" / "backbones.py"
)
backbones_bench = importlib.util.module_from_spec(backbones_spec)
backbones_spec.loader.exec_module(backbones_bench)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--backbones", "gru,lstm"], ["lstm", "allowed"]),
        (["--lengths", "64,x"], ["--lengths"]),
        (["--batch", "0"], ["positive"]),
        (["wm.mamba.head_dim=48", "--backbones", "mamba"], ["head_dim=48"]),
    ],
)
def test_backbones_bad_input_exits_2_before_compiling(argv, words, capsys, monkeypatch):
    monkeypatch.setattr(backbones_bench, "measure_update", lambda *a: pytest.fail("compiled on bad input"))
    assert backbones_bench.main(argv) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err


def test_backbones_mamba_memory_grows_with_the_window():
    """A Mamba update keeps every step's activations for the backward pass: 4x the window, more memory."""
    rows = [
        backbones_bench.measure_update("debug", "mamba", t, 2, 1, {"wm.mamba.head_dim": 16}) for t in (8, 32)
    ]
    assert rows[0]["update_s"] > 0 and rows[1]["steps_per_s"] > 0
    assert rows[1]["temp_mib"] > 2 * rows[0]["temp_mib"], rows


def test_measure_on_a_host_env_has_every_field_finite_and_positive():
    """A host env (here Gymnasium's CartPole) is measured on the host loop, with its envs' own speed too."""
    config = make_config("debug", **{**OVERRIDES, "env.name": "gymnasium:CartPole-v1"})
    result = throughput.measure(config, **SETTINGS, act_steps=20, peak_size=PEAK_SIZE)
    assert list(result) == list(DREAMER_FIELDS + throughput.HOST_FIELDS)
    assert_finite_and_positive(result, throughput.NUMERIC_FIELDS + ("env_only_steps_per_s",))
    assert result["env"] == "gymnasium:CartPole-v1" and result["loop"] == "host"
    # the envs alone step faster than the policy and the envs together
    assert result["env_only_steps_per_s"] > result["act_steps_per_s"]


def test_a_preset_value_carries_its_own_overrides():
    assert throughput.split_preset("atari100k,size1m,env.loop=host,replay.batch_size=8") == (
        ["atari100k", "size1m"],
        {"env.loop": "host", "replay.batch_size": 8},
    )
    assert throughput.split_preset("cartpole") == (["cartpole"], {})


def test_measure_envpool_on_its_xla_interface_and_on_the_host_loop():
    """envpool's two loops in one run: each measured in its own loop, every figure finite and positive, and
    the compiled loop's acting (policy and env step in one scan) beats the host loop's per-step round trip."""
    results = {}
    for loop in ("compiled", "host"):
        config = make_config("debug", **{**OVERRIDES, "env.name": "envpool:CartPole-v1", "env.loop": loop})
        results[loop] = throughput.measure(config, **SETTINGS, act_steps=50, peak_size=PEAK_SIZE)
        assert results[loop]["loop"] == loop
        assert_finite_and_positive(results[loop], throughput.NUMERIC_FIELDS + ("env_only_steps_per_s",))
    assert results["compiled"]["act_steps_per_s"] > 2 * results["host"]["act_steps_per_s"]


layouts_spec = importlib.util.spec_from_file_location("conv_layouts", ROOT / "benchmarks" / "conv_layouts.py")
conv_layouts = importlib.util.module_from_spec(layouts_spec)
layouts_spec.loader.exec_module(conv_layouts)


@pytest.mark.parametrize("side", [10, 12])
def test_conv_layouts_compare_the_same_function_as_xla_convolutions(side):
    """The layouts `benchmarks/conv_layouts.py` times against the library's compute flax's Conv (stride 2)
    and ConvTranspose (stride 2), both 'SAME' (XLA's convolution op)."""
    import flax.linen as nn

    x = jax.random.normal(jax.random.PRNGKey(0), (2, side, side, 3))
    conv = nn.Conv(4, (5, 5), strides=2, padding="SAME")
    params = jax.tree.map(lambda p: p + 0.1, conv.init(jax.random.PRNGKey(1), x))["params"]
    np.testing.assert_allclose(
        conv_layouts.conv_channels_outer(x, params["kernel"], params["bias"], 2),
        conv.apply({"params": params}, x),
        atol=1e-5,
    )
    transpose = nn.ConvTranspose(4, (5, 5), strides=(2, 2), padding="SAME")
    params = jax.tree.map(lambda p: p + 0.1, transpose.init(jax.random.PRNGKey(2), x))["params"]
    np.testing.assert_allclose(
        conv_layouts.conv_transpose_col2im(x, params["kernel"], params["bias"]),
        transpose.apply({"params": params}, x),
        atol=1e-5,
    )


@pytest.mark.parametrize("argv, word", [(["--batch", "0"], "--batch"), (["--steps", "0"], "--steps")])
def test_conv_layouts_refuses_bad_input_before_measuring(argv, word, capsys, monkeypatch):
    monkeypatch.setattr(conv_layouts, "measure", lambda *a: pytest.fail("measured on bad input"))
    with pytest.raises(SystemExit) as exit_info:
        conv_layouts.main(argv)
    assert exit_info.value.code == 2 and word in capsys.readouterr().err


def test_conv_layouts_prints_its_rows_as_json(capsys, monkeypatch):
    row = {"layer": "a", "layout": "patches (library)", "ms_per_grad": 1.0, "max_abs_err": 0.0}
    monkeypatch.setattr(conv_layouts, "measure", lambda batch, steps: [row] * steps)
    conv_layouts.main(["--batch", "4", "--steps", "2"])
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["batch"] == 4 and printed["rows"] == [row, row]


def test_a_report_goes_into_a_folder_that_does_not_exist_yet(tmp_path, capsys):
    """A measurement of minutes is not lost at the end because --out names a folder not made yet."""
    from benchmarks.report import emit

    out = tmp_path / "new" / "folder" / "bench.json"
    emit({"updates_per_s": 1.5}, str(out))
    assert json.loads(out.read_text()) == {"updates_per_s": 1.5}
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"updates_per_s": 1.5}
