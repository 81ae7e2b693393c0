"""Bad input: a one-line error naming the field, the value and what is allowed; exit status 2; nothing
compiled; nothing in an existing run directory changed."""

from pathlib import Path

import pytest

from experiments import run as run_cli
from mbrl_jax.config import ConfigError

# (arguments, words the message must contain)
BAD_INPUTS = [
    (["--env", "CartPol-v1"], ["env", "CartPol-v1", "CartPole-v1"]),
    (["--env", "Nope-v0"], ["env", "Nope-v0"]),
    (["--preset", "cartpol"], ["preset", "cartpol", "cartpole"]),
    (["--preset", "size3m"], ["preset", "size3m", "allowed"]),
    (["bach_size=8"], ["bach_size", "batch_size"]),
    (["learning_rate=1e-4"], ["learning_rate"]),
    (["batch_size=8"], ["batch_size", "did you mean 'replay.batch_size'"]),  # a key without its group
    (["replay.lr=1e-4"], ["replay.lr", "did you mean 'optim.lr'"]),  # a key in the wrong group
    (["replay.batch_size=abc"], ["batch_size", "abc", "int"]),
    (["replay.batch_size=1.5"], ["batch_size", "1.5", "int"]),
    (["optim.lr=fast"], ["lr", "fast", "float"]),
    (["replay.batch_size=0"], ["batch_size", "0", "> 0"]),
    (["env.num_envs=-2"], ["num_envs", "-2", "> 0"]),
    (["--steps", "0"], ["steps", "0", "> 0"]),
    (["optim.lr=-0.001"], ["lr", "-0.001", "> 0"]),
    (["replay.train_ratio=0"], ["train_ratio", "> 0"]),
    (["--seed", "-1"], ["seed", "-1", ">= 0"]),
    (["dreamer.unimix=1.5"], ["unimix", "1.5", "[0, 1]"]),
    (["dreamer.return_lambda=-0.1"], ["return_lambda", "-0.1", "[0, 1]"]),
    (["dreamer.horizon=0.5"], ["horizon", "0.5", ">= 1"]),
    (
        ["--preset", "cartpole", "replay.batch_length=256", "replay.capacity=800"],
        ["batch_length", "256", "replay"],
    ),
    (["replay.prefill=10"], ["prefill", "10", "batch_length"]),
    (["--preset", "cartpole", "wm.deter=100"], ["deter", "100", "blocks"]),
    (["dreamer.action_minstd=2", "dreamer.action_maxstd=1"], ["action_minstd", "action_maxstd"]),
    (["agent=tdmpc3"], ["agent", "tdmpc3", "allowed", "did you mean 'tdmpc2'"]),
    (["--preset", "tdmpc2", "--env", "CartPole-v1"], ["CartPole-v1", "tdmpc2", "continuous actions"]),
    (["--preset", "tdmpc2", "optim.lr=0.1"], ["optim.lr=0.1", "agent='tdmpc2'", "would ignore it"]),
    (["--preset", "cartpole", "wm.mamba.layers=3"], ["wm.mamba.layers=3", "backbone 'mamba'", "'gru'"]),
    (["run.eval_policy=greedy"], ["eval_policy", "greedy", "'sample', 'mode'"]),
    (["--env", "Breakout-MinAtar-rgb"], ["env", "Breakout-MinAtar-rgb", "Breakout-MinAtar-rgb64"]),
    (
        ["--new", "--preset", "minatar", "replay.max_gib=0.01"],
        ["replay.capacity=100000", "replay.max_gib=0.01", "MiB", "obs/image 400 B"],
    ),
    (["lr"], ["lr", "key=value"]),
    (["run.devices=2"], ["run.devices=2", "JAX sees 1 cpu device", "xla_force_host_platform_device_count"]),
    (["run.devices=4"], ["run.devices=4", "must divide env.num_envs=2"]),
    (["--seeds", "3-1"], ["seeds", "3-1", "backwards"]),
    (["--seeds", "0,2,2"], ["seeds", "[2]", "more than once"]),
    (["--seeds", "x"], ["seeds", "'x'", "ranges"]),
    (["--seed", "1", "--seeds", "0-2"], ["--seed", "--seeds 0-2", "give one"]),
    (["--preset", "debug", "--seeds", "0-2"], ["holds a single run", "not a sweep"]),
    (["--new", "--seeds", "0-4095", "--preset", "cartpole-reference"], ["4096 seeds in one program", "GiB"]),
    (["--logdir", "/proc/no_such_dir/run"], ["logdir", "/proc/no_such_dir/run"]),
    # device memory, integer ranges, non-finite floats: refused before anything is allocated
    (
        ["--new", "replay.batch_size=10000000"],
        ["replay.batch_size=10000000", "device memory", "GiB", "activations"],
    ),
    (["run.seed=1e20"], ["seed", "100000000000000000000", "4294967295"]),
    (["--seed", "4294967296"], ["seed", "4294967296", "4294967295"]),
    (["run.steps=3e9"], ["steps", "3000000000", "2147483647"]),
    (["optim.lr=inf"], ["lr", "inf", "finite"]),
    (["optim.lr=nan"], ["lr", "nan", "finite"]),
    (["dreamer.horizon=inf"], ["horizon", "inf", "finite"]),
    (["run.checkpoint_minutes=0"], ["checkpoint_minutes", "0", "> 0"]),
    # the command line itself
    (["--steps", "1000", "run.steps=1.5e4"], ["steps", "--steps 1000", "run.steps=1.5e4", "twice"]),
    (["replay.batch_size=4", "replay.batch_size=8"], ["replay.batch_size=4", "replay.batch_size=8", "twice"]),
    (["--seed", "1", "--seed", "2"], ["seed", "--seed 1", "--seed 2", "twice"]),
    (["--preset", "debug", "--preset", "cartpole"], ["--preset debug", "--preset cartpole", "twice"]),
    (["--steps", "1.5"], ["steps", "1.5", "int"]),
    (["--bogus"], ["unrecognized", "--bogus"]),
    (["--steps"], ["--steps", "expected one argument"]),
    (["--preset", ""], ["--preset ''", "empty name", "cartpole"]),
    (["--preset", "debug,,size1m"], ["--preset 'debug,,size1m'", "empty name"]),
]


@pytest.fixture(scope="module")
def existing_run(tmp_path_factory):
    """A run directory with files in it, made without training (config + a metrics line)."""
    from mbrl_jax.checkpoint import save_config
    from mbrl_jax.config import make_config
    from mbrl_jax.logging import MetricLogger

    logdir = tmp_path_factory.mktemp("existing")
    save_config(logdir, make_config("debug").to_dict())
    with MetricLogger(logdir, tensorboard=False) as log:
        log.write({"env_steps": 100, "eval_return": 12.0})
    return logdir


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize(("argv", "words"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_exits_2_with_one_clear_line(argv, words, capsys, monkeypatch, existing_run):
    import mbrl_jax.runner

    for name in ("train", "train_sweep"):
        monkeypatch.setattr(
            mbrl_jax.runner, name, lambda *a, **k: pytest.fail("training started on bad input")
        )
    if "--logdir" not in argv:
        argv = [*argv, "--logdir", str(existing_run)]
    before = _snapshot(existing_run)
    assert run_cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("error: ")
    for word in words:
        assert word in err, (word, err)
    assert _snapshot(existing_run) == before


def test_resuming_with_another_config_is_refused(capsys, monkeypatch, existing_run):
    import mbrl_jax.runner

    monkeypatch.setattr(mbrl_jax.runner, "train", lambda *a, **k: pytest.fail("training started"))
    before = _snapshot(existing_run)
    assert (
        run_cli.main(["--preset", "debug", "--logdir", str(existing_run), "optim.lr=0.001", "wm.units=16"])
        == 2
    )
    err = capsys.readouterr().err
    assert "lr" in err and "units" in err and "0.001" in err
    assert _snapshot(existing_run) == before


def test_edge_values_are_accepted():
    """The range and finiteness checks stay quiet at the edges and on every preset."""
    from mbrl_jax.config import PRESETS, make_config
    from mbrl_jax.settings import PRESET_OWNERS

    config = make_config(
        "debug",
        **{"run.seed": 2**32 - 1, "run.steps": 2**31 - 1, "optim.lr": 1e-30, "run.checkpoint_minutes": 1e-6},
    )
    assert config.run.seed == 2**32 - 1 and config.run.steps == 2**31 - 1
    args = run_cli.parse_args(["--preset", "debug", "--seed", "4294967295", "--steps", "1.5e4"])
    assert run_cli.build_config(args)[0].run.seed == 2**32 - 1
    for name in PRESETS:  # an agent's own presets (its sizes) on its task preset
        owner = PRESET_OWNERS[name].removeprefix("agent ").strip("'")
        make_config(*([owner] if owner in PRESETS and owner != name else []), name)


def test_envpool_presets_without_envpool_are_refused_with_the_install_line(monkeypatch):
    """envpool is a dependency, but an install that lost it (or a platform without its wheel) gets the
    install line, not a traceback."""
    import sys

    from mbrl_jax.config import make_config

    monkeypatch.setitem(sys.modules, "envpool", None)  # `import envpool` now raises ImportError
    with pytest.raises(ConfigError, match=r"envpool names need the envpool package .*pip install"):
        make_config("atari100k")


def test_memory_check_is_quiet_on_healthy_presets():
    from mbrl_jax.config import make_config
    from mbrl_jax.memory import check_memory

    for name in ("debug", "cartpole", "size12m"):
        check_memory(make_config(name))


def test_at_least_twenty_bad_inputs():
    assert len(BAD_INPUTS) >= 20


def test_a_second_run_on_a_folder_in_use_stops_before_writing(capsys, existing_run):
    """A run folder held by another process (here this test, through flock itself) is refused with a clear
    error and exit 1, before any compile, and its files stay as they were."""
    import fcntl
    import os

    before = _snapshot(existing_run)
    held = os.open(existing_run, os.O_RDONLY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert run_cli.main(["--logdir", str(existing_run)]) == 1
    finally:
        os.close(held)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and str(existing_run) in err and "in use by another run" in err
    assert _snapshot(existing_run) == before
    # the refused run let go of everything it opened: the folder can be locked again at once
    again = os.open(existing_run, os.O_RDONLY)
    try:
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(again)
