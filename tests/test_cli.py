"""The command line's one precedence rule, the default run directory, and resume feedback; the README says the
same as `--help`."""

from pathlib import Path

import pytest

from experiments import run as run_cli
from mbrl_jax.checkpoint import save_config
from mbrl_jax.config import make_config

# runs its compiled programs more than it compiles them: optimized (tests/conftest.py)
pytestmark = pytest.mark.optimized

ROOT = Path(__file__).resolve().parents[1]


def build(*argv):
    """(config, logdir) of a single run's command line."""
    config, logdir, seeds = run_cli.build_config(run_cli.parse_args(list(argv)))
    assert seeds is None
    return config, logdir


def test_flags_and_key_values_in_any_order_give_the_same_config():
    a, _ = build("--preset", "debug", "optim.lr=1e-4", "--steps", "1000", "replay.batch_size=8")
    b, _ = build("replay.batch_size=8", "--steps", "1e3", "optim.lr=0.0001", "--preset", "debug")
    c, _ = build("--steps", "1.5e4", "--preset", "debug", "optim.lr=1e-4", "replay.batch_size=8")
    assert a == b == c.replace(**{"run.steps": 1000})
    assert (a.run.steps, a.optim.lr, a.replay.batch_size) == (1000, 1e-4, 8)
    assert c.run.steps == 15_000


def test_presets_left_to_right_then_fields():
    debug_then_cartpole, _ = build("--preset", "debug,cartpole")
    cartpole_then_debug, _ = build("--preset", "cartpole,debug")
    assert (
        debug_then_cartpole.replay.batch_size == make_config("cartpole").replay.batch_size
    )  # the later preset wins
    assert cartpole_then_debug.replay.batch_size == make_config("debug").replay.batch_size
    assert (
        build("--preset", "debug", "replay.batch_size=8")[0].replay.batch_size == 8
    )  # fields win over presets
    assert (
        build("replay.batch_size=8", "--preset", "debug")[0].replay.batch_size == 8
    )  # wherever they are written
    assert build()[0] == make_config("cartpole")  # the default preset
    assert build("--env", "Acrobot-v1")[0] == make_config(
        **{"env.name": "Acrobot-v1"}
    )  # --env alone: no default preset


def test_logdir_alone_resumes_with_the_stored_config(tmp_path):
    stored = make_config("debug", **{"optim.lr": 1e-3, "run.seed": 4})
    save_config(tmp_path, stored.to_dict())
    assert build("--logdir", str(tmp_path)) == (stored, tmp_path)
    assert build("--logdir", str(tmp_path), "--steps", "5000")[0] == stored.replace(**{"run.steps": 5000})
    assert build("--logdir", str(tmp_path), "--preset", "debug")[0] == make_config(
        "debug"
    )  # a preset: no base


def test_default_logdir_is_stable_and_new_starts_fresh(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config, logdir = build("--preset", "debug", "--seed", "3")
    assert logdir == Path("runs/CartPole-v1-debug-seed3")
    assert build("--preset", "debug", "--seed", "3")[1] == logdir  # the same command, the same run
    assert build("--preset", "cartpole,size1m")[1] == Path("runs/CartPole-v1-cartpole-size1m-seed0")
    assert build("--env", "Acrobot-v1")[1] == Path("runs/Acrobot-v1-seed0")
    assert build("--preset", "debug", "--seed", "3", "--new")[1] == logdir  # nothing there yet
    save_config(logdir, config.to_dict())
    assert build("--preset", "debug", "--seed", "3", "--new")[1] == Path("runs/CartPole-v1-debug-seed3-2")


def test_resume_feedback(tmp_path, capsys, monkeypatch):
    """'resuming from env step N (checkpoint of <time>)' and 'finished at N env steps' with exit 0 and no
    compile; 'no checkpoint yet' when only metrics are there."""
    import mbrl_jax.runner
    from mbrl_jax.logging import MetricLogger
    from mbrl_jax.runner import final_env_steps

    config = make_config(
        "debug", **{"run.steps": 364, "run.chunk_steps": 100, "replay.prefill": 64, "replay.batch_length": 16}
    )
    args = ["--logdir", str(tmp_path), "--no-progress"]
    mbrl_jax.runner.train(config, tmp_path, progress=False, stop_after_chunks=1)  # checkpoint_every > run
    with MetricLogger(tmp_path, tensorboard=False) as log:
        log.write({"env_steps": 999})  # a row after any checkpoint
    monkeypatch.setattr(mbrl_jax.runner, "train", lambda *a, **k: (None, []))
    assert run_cli.main(args) == 0
    assert "no checkpoint yet: starting from env step 0" in capsys.readouterr().out

    monkeypatch.undo()
    mbrl_jax.runner.train(config, tmp_path, progress=False)
    end = final_env_steps(config)
    monkeypatch.setattr(mbrl_jax.runner, "train", lambda *a, **k: pytest.fail("a finished run compiled"))
    assert run_cli.main(args) == 0
    assert f"finished at {end} env steps; pass --steps M > {end} to continue" in capsys.readouterr().out
    assert run_cli.main([*args, "--steps", "200"]) == 0  # fewer steps than done: the same message
    assert f"finished at {end} env steps" in capsys.readouterr().out

    monkeypatch.setattr(mbrl_jax.runner, "train", lambda *a, **k: (None, []))
    assert run_cli.main([*args, "--steps", "464"]) == 0
    assert f"resuming from env step {end} (checkpoint of 20" in capsys.readouterr().out


def test_help_and_readme_state_the_rule(capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli.parse_args(["--help"])
    assert exit_.value.code == 0
    help_text = " ".join(capsys.readouterr().out.split())
    readme = " ".join((ROOT / "README.md").read_text().split())
    for text in (help_text, readme):
        for phrase in (
            "runs/<env>-<presets>-seed<seed>",
            "--new",
            "in any order",
            "a field set twice (as flag or key) is an error naming both",
            "MBRL_JAX_CACHE_DIR",
            "130 / 143",
        ):
            assert phrase in text, phrase


def test_seeds_make_a_sweep_in_its_own_folder_that_resumes_as_a_sweep(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # tests/test_sweep.py's sweep: its program compiles once for both
    small = ["run.steps=364", "run.chunk_steps=100", "replay.prefill=64", "replay.batch_length=16"]
    argv = ["--preset", "debug", "--seeds", "0-2", "--no-progress", *small]
    config, logdir, seeds = run_cli.build_config(run_cli.parse_args(argv))
    assert seeds == [0, 1, 2] and config.run.seed == 0
    assert logdir == Path("runs/CartPole-v1-debug-seeds0-2")
    assert run_cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "seeds 0,1,2" in out and "done: final eval return seed 0 " in out and "seed 2 " in out
    assert (logdir / "aggregate.json").is_file() and (logdir / "seed1" / "metrics.jsonl").is_file()
    # --logdir alone finds the sweep and its seeds
    assert run_cli.build_config(run_cli.parse_args(["--logdir", str(logdir)]))[1:] == (logdir, [0, 1, 2])
    assert run_cli.main(["--logdir", str(logdir)]) == 0
    assert "finished at 364 env steps" in capsys.readouterr().out


def test_the_start_up_line_gives_the_replay_size(tmp_path, capsys, monkeypatch):
    """minatar: a step holds the 10x10x4 uint8 image (400 B), the one-hot action (3 float32), reward
    (float32), three flags (bool) and the replay context (deter 256 float32, 32x4 stoch float32)."""
    import mbrl_jax.runner

    monkeypatch.setattr(mbrl_jax.runner, "train", lambda *a, **k: (None, []))
    args = ["--preset", "minatar", "--logdir", str(tmp_path / "r"), "--no-progress", "replay.capacity=20000"]
    assert run_cli.main(args) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("replay:"))
    per_step = 10 * 10 * 4 + 3 * 4 + 4 + 3 + 256 * 4 + 32 * 4 * 4
    assert f"20000 steps x {per_step} B per step" in line and "obs/image 400 B" in line
    assert f"{20000 * per_step / 2**20:.1f} MiB" in line
