"""Runs users can trust: exact resume, continuing with a larger budget, determinism, crash safety."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

import mbrl_jax.runner as runner
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.logging import read_metrics
from mbrl_jax.runner import train

# runs its compiled programs more than it compiles them (resumes, reruns): optimized (tests/conftest.py)
pytestmark = pytest.mark.optimized

ROOT = Path(__file__).resolve().parents[1]
SMALL = {
    "run.steps": 1_000,
    "run.chunk_steps": 100,
    "run.checkpoint_every": 200,
    "replay.prefill": 64,
    "replay.batch_length": 16,
}
# SMALL: 9 chunks of 100 and a last one cut to 36; SHORT: 3 chunks. The budget is an argument of the one
# compiled chunk, so both lengths share a program.
SHORT = {**SMALL, "run.steps": 364}


def _params(state):
    return jax.tree.leaves(jax.device_get(state.agent.params))


def _assert_same(a, b):
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    logdir = tmp_path_factory.mktemp("straight")
    state, _ = train(make_config("debug", **SMALL), logdir, progress=False)
    return logdir, _params(state)


def test_resume_equals_uninterrupted_run(tmp_path, straight_run):
    straight_dir, straight_params = straight_run
    config = make_config("debug", **SMALL)
    train(config, tmp_path, progress=False, stop_after_chunks=3)  # checkpoint after chunk 2, chunk 3 lost
    assert (tmp_path / "checkpoints").exists()
    partial = read_metrics(tmp_path)
    assert len(partial) == 3
    state, _ = train(config, tmp_path, progress=False)
    _assert_same(_params(state), straight_params)
    assert read_metrics(tmp_path) == read_metrics(straight_dir)


def test_raising_steps_continues_exactly(tmp_path, straight_run):
    straight_dir, straight_params = straight_run
    train(make_config("debug", **SHORT), tmp_path, progress=False)
    state, _ = train(make_config("debug", **SMALL), tmp_path, progress=False)
    _assert_same(_params(state), straight_params)
    assert read_metrics(tmp_path) == read_metrics(straight_dir)


def test_same_seed_same_metrics_and_other_seed_differs(tmp_path, straight_run):
    straight_dir, _ = straight_run
    config = make_config("debug", **SHORT)
    train(config, tmp_path / "a", progress=False)
    a = read_metrics(tmp_path / "a")
    b = [r for r in read_metrics(straight_dir) if r["env_steps"] <= a[-1]["env_steps"]]
    assert a == b
    train(config.replace(**{"run.seed": 1}), tmp_path / "c", progress=False)
    assert read_metrics(tmp_path / "c") != a


def test_other_config_is_refused_naming_fields(tmp_path):
    config = make_config("debug", **SHORT)
    train(config, tmp_path, progress=False)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"lr .*batch_size|batch_size.*lr"):
        train(config.replace(**{"optim.lr": 1e-3, "replay.batch_size": 8}), tmp_path, progress=False)
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after


def test_sigkill_resumes_from_last_complete_checkpoint(tmp_path, straight_run):
    """A real process killed right after a checkpoint keeps every metrics line and resumes exactly."""
    straight_dir, _ = straight_run
    args = [
        sys.executable,
        str(ROOT / "experiments/run.py"),
        "--preset",
        "debug",
        "--logdir",
        str(tmp_path),
        "--no-progress",
    ] + [f"{k}={v}" for k, v in SMALL.items()]
    env = {
        **os.environ,
        "MBRL_JAX_CACHE_DIR": os.environ.get("MBRL_JAX_TEST_CACHE", "/tmp/mbrl_jax_test_xla_cache"),
    }
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in ckpts.glob("*") if p.name.isdigit()] if ckpts.exists() else []
        if len(done) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    written = read_metrics(tmp_path)
    assert written == read_metrics(straight_dir)[: len(written)]  # every line kept, none corrupted
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_metrics(tmp_path) == read_metrics(straight_dir)


def test_non_finite_state_stops_the_run_and_is_never_saved(tmp_path, poison_run):
    import jax.numpy as jnp

    import mbrl_jax.runner as runner
    from mbrl_jax.checkpoint import Checkpointer

    config = make_config("debug", **SMALL)
    first_bad = config.prefill_steps_per_env * config.env.num_envs + 5 * config.env_steps_per_chunk
    poison_run(first_bad, jnp.nan, loss="loss_model")
    with pytest.raises(runner.NonFiniteError) as err:
        train(config, tmp_path, progress=False)
    message = str(err.value)
    last_good = first_bad - config.env_steps_per_chunk  # chunk 4 ends on a checkpoint (every 2 chunks)
    assert f"env step {first_bad}" in message and "loss_model" in message
    assert f"env step {last_good}" in message
    ckpt = Checkpointer(tmp_path / "checkpoints")
    assert ckpt.latest_step() == last_good
    assert [r["env_steps"] for r in read_metrics(tmp_path)][-1] == last_good  # the bad chunk is not logged


def _run_cli_args(logdir, *extra):
    return [sys.executable, str(ROOT / "experiments/run.py"), "--logdir", str(logdir), *extra]


def _cli_env():
    cache = os.environ.get("MBRL_JAX_TEST_CACHE", "/tmp/mbrl_jax_test_xla_cache")
    return {**os.environ, "MBRL_JAX_CACHE_DIR": cache, "JAX_PLATFORMS": "cpu"}


def _final_params(logdir, config):
    from mbrl_jax.checkpoint import Checkpointer
    from mbrl_jax.trainer import make_train

    target = jax.eval_shape(make_train(config).init, jax.random.PRNGKey(config.run.seed))
    with Checkpointer(Path(logdir) / "checkpoints") as ckpt:
        return _params(ckpt.restore(ckpt.latest_step(), target))


def _signal_after_metrics(args, logdir, signum, lines=2):
    """Start `args`, send `signum` once metrics.jsonl has `lines` lines; returns the finished process."""
    proc = subprocess.Popen(args, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(read_metrics(logdir)) < lines:
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_sigint_saves_the_last_chunk_and_the_rerun_equals_an_uninterrupted_run(tmp_path, straight_run):
    """Ctrl-C mid-run: exit 130 with one line saying how to resume; the checkpoint holds the last complete
    chunk (checkpoint_every is larger than the run, so only the interrupt saves); `--logdir` alone resumes
    with the stored config and ends bit-identical, with no metric row duplicated or lost."""
    straight_dir, straight_params = straight_run
    settings = {**SMALL, "run.checkpoint_every": 100_000}
    first = _run_cli_args(
        tmp_path, "--preset", "debug", "--no-progress", *[f"{k}={v}" for k, v in settings.items()]
    )
    returncode, _, err = _signal_after_metrics(first, tmp_path, signal.SIGINT)
    assert returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert [line for line in err.splitlines() if "resume with: " in line][-1].endswith(f"--logdir {tmp_path}")
    written = read_metrics(tmp_path)
    assert 2 <= len(written) < len(read_metrics(straight_dir))
    assert written == read_metrics(straight_dir)[: len(written)]
    from mbrl_jax.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [written[-1]["env_steps"]]  # the last complete chunk, nothing else
    result = subprocess.run(
        _run_cli_args(tmp_path, "--no-progress"), env=_cli_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from env step {written[-1]['env_steps']} (checkpoint of " in result.stdout
    assert read_metrics(tmp_path) == read_metrics(straight_dir)
    _assert_same(_final_params(tmp_path, make_config("debug", **SMALL)), straight_params)
    from test_logging import tb_scalars

    assert tb_scalars(tmp_path / "tb") == tb_scalars(straight_dir / "tb")
    again = subprocess.run(_run_cli_args(tmp_path), env=_cli_env(), capture_output=True, text=True)
    end = read_metrics(straight_dir)[-1]["env_steps"]
    assert again.returncode == 0
    assert f"finished at {end} env steps; pass --steps M > {end} to continue" in again.stdout


def test_sigterm_exits_143_and_says_how_to_resume(tmp_path):
    args = _run_cli_args(tmp_path, "--preset", "debug", *[f"{k}={v}" for k, v in SMALL.items()])
    proc = subprocess.Popen(args, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(read_metrics(tmp_path)) < 1:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("stopped by SIGTERM at env step ") and f"--logdir {tmp_path}" in last, last
    assert "Traceback" not in err
    steps = read_metrics(tmp_path)[-1]["env_steps"]
    from mbrl_jax.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.latest_step() == steps
    assert "compiling the training step (first time: about " in out and "cached afterwards in " in out
    assert out.index("compiled in ") < out.index("env_steps ")  # progress lines come after compiling


def test_resume_without_a_checkpoint_leaves_no_duplicates(tmp_path, straight_run, capsys):
    straight_dir, straight_params = straight_run
    config = make_config("debug", **{**SMALL, "run.checkpoint_every": 100_000})
    train(config, tmp_path, progress=False, stop_after_chunks=2)  # killed before any checkpoint
    assert len(read_metrics(tmp_path)) == 2 and not list((tmp_path / "checkpoints").glob("[0-9]*"))
    state, _ = train(config, tmp_path, progress=True)
    _assert_same(_params(state), straight_params)
    assert read_metrics(tmp_path) == read_metrics(straight_dir)
    from test_logging import tb_scalars

    assert tb_scalars(tmp_path / "tb") == tb_scalars(straight_dir / "tb")
    out = capsys.readouterr().out
    assert out.index("compiling the training step") < out.index("compiled in ") < out.index("env_steps ")


@pytest.mark.parametrize(("minutes", "expected"), [(1e-9, [164, 264, 364]), (60.0, [364])])
def test_time_based_checkpoints(tmp_path, minutes, expected):
    """checkpoint_minutes saves at the first chunk end after that long (here: every chunk), beside the
    step-based interval (here: larger than the run); a long interval adds nothing."""
    config = make_config(
        "debug",
        **{**SHORT, "run.checkpoint_every": 100_000, "run.checkpoint_minutes": minutes},
        **{"run.keep_checkpoints": 10},
    )
    train(config, tmp_path, progress=False)
    from mbrl_jax.checkpoint import Checkpointer

    with Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == expected


@pytest.fixture
def fresh_compilation_cache(tmp_path):
    """An empty persistent compilation cache for one test, and no programs kept from earlier tests, so that
    its first compiles are real misses."""
    from jax.experimental.compilation_cache import compilation_cache

    previous = jax.config.jax_compilation_cache_dir
    runner.clear_programs()
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
    yield
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", previous)


@pytest.mark.unoptimized  # its own program, in its own cache (tests/conftest.py)
def test_the_runners_chunk_compiles_once_across_a_resume(tmp_path, fresh_compilation_cache):
    """The runner's own programs (init and chunk), compiled for a fresh run, are reused when the run resumes:
    in the same process it asks for nothing; in a new process (the kept programs forgotten) it asks the
    compilation cache for its chunk and gets it, compiling nothing."""
    requests, hits = [], []

    def listener(event: str, **kwargs) -> None:
        if event == "/jax/compilation_cache/compile_requests_use_cache":
            requests.append(event)
        elif event == "/jax/compilation_cache/cache_hits":
            hits.append(event)

    jax.monitoring.register_event_listener(listener)
    config = make_config("debug", **{**SMALL, "run.steps": 400})
    try:
        train(config, tmp_path / "run", progress=False, stop_after_chunks=1)
        first = (len(requests), len(hits))
        train(config, tmp_path / "run", progress=False, stop_after_chunks=1)
        in_process = len(requests) - first[0]
        runner.clear_programs()
        train(config, tmp_path / "run", progress=False)
        resumed = (len(requests) - first[0] - in_process, len(hits) - first[1])
    finally:
        jax.monitoring.unregister_event_listener(listener)
    assert first[0] - first[1] >= 2  # the fresh run compiled init and the chunk (misses)
    assert in_process == 0  # resumed in this process: its programs were kept
    assert resumed[0] >= 1 and resumed[0] == resumed[1]  # the resume compiled its chunk: every request a hit
    assert [r["env_steps"] for r in read_metrics(tmp_path / "run")][-3:] == [264, 364, 400]


def test_changing_the_evaluation_policy_on_resume_leaves_training_exact(tmp_path, straight_run):
    """Evaluation draws its keys apart from training's: a run evaluated with the mode, then resumed with
    sampled evaluation, learns exactly what the uninterrupted run learns."""
    _, straight_params = straight_run
    config = make_config("debug", **SMALL)
    assert config.run.eval_policy == "sample"
    train(config.replace(**{"run.eval_policy": "mode"}), tmp_path, progress=False, stop_after_chunks=3)
    state, _ = train(config, tmp_path, progress=False)
    _assert_same(_params(state), straight_params)


@pytest.mark.slow  # three runs of a program no other test shares
@pytest.mark.unoptimized  # compared only with itself (tests/conftest.py)
def test_frequency_sampler_and_reward_smoothing_resume_exactly(tmp_path):
    """Drama's sampler and DreamSmooth on together: the use counts live in the train state, so a run stopped
    after a checkpoint and resumed ends where an uninterrupted one does; every update counted its windows."""
    overrides = {
        **SMALL,
        "run.steps": 400,
        "replay.sampler": "frequency",
        "replay.imag_batch": 16,
        "replay.imag_context": 4,
        "dreamer.loss_repval": 0.0,
        "replay.reward_smoothing": "gaussian",
    }
    config = make_config("debug", **overrides)
    straight, _ = train(config, tmp_path / "straight", progress=False)
    counts = jax.device_get(straight.replay.counts)
    updates = int(straight.updates)
    assert counts.train.sum() == updates * config.replay.batch_size  # capacity > steps: nothing overwritten
    assert counts.imagine.sum() == updates * config.replay.imag_batch
    train(config, tmp_path / "resumed", progress=False, stop_after_chunks=2)
    resumed, _ = train(config, tmp_path / "resumed", progress=False)
    _assert_same(_params(resumed), _params(straight))
    _assert_same(jax.tree.leaves(jax.device_get(resumed.replay.counts)), jax.tree.leaves(counts))
    assert read_metrics(tmp_path / "resumed") == read_metrics(tmp_path / "straight")


def test_a_config_run_again_in_this_process_reuses_its_programs(monkeypatch):
    """A second run (or resume) of a config in the same process reuses its jitted programs, so it neither
    traces nor compiles again; another config, a patched make_train, or envs held outside the state (an
    envpool pool) get programs of their own."""
    config = make_config("debug", **SHORT)
    first = runner.make_programs(config)
    assert runner.make_programs(config).chunk is first.chunk
    assert runner.make_programs(config.replace(**{"run.seed": 1})).chunk is not first.chunk
    real_make_train = runner.make_train
    monkeypatch.setattr(runner, "make_train", lambda *a, **k: real_make_train(*a, **k))
    assert runner.make_programs(config).chunk is not first.chunk
    monkeypatch.undo()
    assert runner.make_programs(config).chunk is first.chunk
    pooled = make_config("debug", **{**SHORT, "env.name": "envpool:CartPole-v1"})
    assert runner.make_programs(pooled).chunk is not runner.make_programs(pooled).chunk
