"""Run folders and refusals before work: a sweep's seed folder is not a run (nor a run folder a sweep), seed
lists are bounded before they are built, a missing env package is one line, run files are 0644, and the
hints printed work from any folder. Each both ways: refused on the bad case, quiet on a healthy one."""

import json
import os
import shlex
import stat
import subprocess
import sys
import time
from pathlib import Path

import gymnasium
import pytest

import mbrl_jax.runner
from experiments import plot as plot_cli
from experiments import run as run_cli
from mbrl_jax.checkpoint import save_config
from mbrl_jax.config import ConfigError, make_config
from mbrl_jax.logging import MetricLogger
from mbrl_jax.parallel import SWEEP_FILE, parse_seeds, seed_logdir
from mbrl_jax.runner import check_resume, train

ROOT = Path(__file__).resolve().parents[1]
TINY = {"run.steps": 164, "run.chunk_steps": 100, "replay.prefill": 64, "replay.batch_length": 16}


def _snapshot(folder: Path) -> dict:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


@pytest.fixture
def sweep_folder(tmp_path):
    """A sweep's folder as the runner lays it out (`mbrl_jax.parallel`), with a metrics row per seed."""
    config = make_config("debug", **TINY)
    save_config(tmp_path, config.to_dict())
    (tmp_path / SWEEP_FILE).write_text(json.dumps({"seeds": [0, 1]}))
    for seed in (0, 1):
        save_config(seed_logdir(tmp_path, seed), config.replace(**{"run.seed": seed}).to_dict())
        with MetricLogger(seed_logdir(tmp_path, seed), tensorboard=False) as log:
            log.write({"env_steps": 164, "eval_return": 10.0 + seed})
    return tmp_path


@pytest.fixture
def no_training(monkeypatch):
    import mbrl_jax.runner

    for name in ("train", "train_sweep"):
        monkeypatch.setattr(mbrl_jax.runner, name, lambda *a, **k: pytest.fail("training started"))


def test_a_sweeps_seed_folder_is_refused_as_a_run_with_the_command_that_continues_the_sweep(
    sweep_folder, capsys, no_training
):
    before = _snapshot(sweep_folder)
    assert run_cli.main(["--logdir", str(sweep_folder / "seed0")]) == 2
    err = _one_error_line(capsys)
    assert "seed 0 in the sweep of seeds [0, 1]" in err
    assert f"python experiments/run.py --logdir {sweep_folder}" in err
    assert run_cli.main(["--preset", "debug", "--logdir", str(sweep_folder / "seed1"), "--seeds", "0-1"]) == 2
    assert "seed 1 in the sweep" in _one_error_line(capsys)
    with pytest.raises(ConfigError, match="not a run of its own"):  # the library refuses it too
        train(make_config("debug", **TINY), sweep_folder / "seed0")
    assert _snapshot(sweep_folder) == before
    # quiet on healthy folders: the sweep itself as a sweep, and a folder merely named seed<s>
    check_resume(make_config("debug", **TINY), sweep_folder, [0, 1])
    check_resume(make_config("debug", **TINY), sweep_folder / "seed7")


def test_a_run_folder_is_refused_as_a_sweep_and_a_sweep_as_a_run(sweep_folder, tmp_path_factory, capsys):
    run = tmp_path_factory.mktemp("run")
    save_config(run, make_config("debug", **TINY).to_dict())
    assert run_cli.main(["--preset", "debug", "--seeds", "0-1", "--logdir", str(run), *_pairs(TINY)]) == 2
    err = _one_error_line(capsys)
    assert "holds a single run (seed 0), not a sweep" in err
    assert f"python experiments/run.py --logdir {run}" in err
    assert run_cli.main(["--preset", "debug", "--logdir", str(sweep_folder), *_pairs(TINY)]) == 2
    err = _one_error_line(capsys)
    assert "holds a sweep of seeds [0, 1]" in err and f"--logdir {sweep_folder}" in err
    check_resume(make_config("debug", **TINY), run)  # quiet: the run as a run


def _pairs(settings: dict) -> list[str]:
    return [f"{k}={v}" for k, v in settings.items()]


@pytest.mark.parametrize("seeds", ["0-100000", "0-4294967295", "0-10,5-4294967295", "0-99999999999"])
def test_huge_seed_lists_are_refused_at_once(seeds, capsys, no_training):
    start = time.perf_counter()
    assert run_cli.main(["--seeds", seeds]) == 2
    assert time.perf_counter() - start < 1.0
    err = _one_error_line(capsys)
    assert seeds in err and ("at most 4096" in err or "outside 0 to 4294967295" in err)


def test_seed_lists_up_to_the_cap_are_taken_quickly():
    start = time.perf_counter()
    assert parse_seeds("0-4095") == list(range(4096))
    assert parse_seeds("4294967290-4294967295,3") == [*range(4294967290, 4294967296), 3]
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ConfigError, match=r"seeds \[3\] are given more than once"):
        parse_seeds("0-4094,3")


@pytest.fixture
def envs_needing_packages():
    """Two Gymnasium envs whose makers need what is not installed: one's module is missing (as an env
    package's would be), the other raises Gymnasium's DependencyNotInstalled (as box2d's envs do)."""

    def needs_box2d(**kwargs):
        raise gymnasium.error.DependencyNotInstalled(
            'Box2D is not installed, run `pip install "gymnasium[box2d]"`'
        )

    gymnasium.register("MbrlJaxMissingModule-v0", entry_point="mbrl_jax_no_such_package.envs:Env")
    gymnasium.register("MbrlJaxNeedsBox2d-v0", entry_point=needs_box2d)
    yield
    for env_id in ("MbrlJaxMissingModule-v0", "MbrlJaxNeedsBox2d-v0"):
        gymnasium.registry.pop(env_id)


@pytest.mark.parametrize("show_config", [True, False])
def test_a_missing_env_package_is_one_line_naming_it(show_config, envs_needing_packages, capsys, no_training):
    extra = ["--show-config"] if show_config else []
    assert run_cli.main(["--env", "gymnasium:MbrlJaxMissingModule-v0", *extra]) == 2
    err = _one_error_line(capsys)
    assert "cannot import mbrl_jax_no_such_package" in err and "pip install mbrl_jax_no_such_package" in err
    assert run_cli.main(["--env", "gymnasium:MbrlJaxNeedsBox2d-v0", *extra]) == 2
    err = _one_error_line(capsys)
    assert "needs a package that is not installed" in err and 'pip install "gymnasium[box2d]"' in err
    assert run_cli.main(["--env", "gymnasium:CartPole-v1", "--show-config"]) == 0  # quiet where all is there
    assert capsys.readouterr().err == ""


def test_run_files_are_0644_under_umask_022(tmp_path, monkeypatch):
    """(And the library's `train` turns the compilation cache on, as the command line does.)"""
    calls = []
    real = mbrl_jax.runner.use_compilation_cache
    monkeypatch.setattr(mbrl_jax.runner, "use_compilation_cache", lambda: calls.append(1) or real())
    previous = os.umask(0o022)
    try:
        train(make_config("debug", **TINY), tmp_path, progress=False)
    finally:
        os.umask(previous)
    assert calls == [1]
    files = [p for p in tmp_path.iterdir() if p.is_file()]
    assert {"config.yaml", "metrics.csv", "metrics.jsonl"} <= {p.name for p in files}
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in files}
    assert set(modes.values()) == {0o644}, modes


def test_plot_points_from_a_sweep_folder_to_its_seed_folders(sweep_folder, tmp_path_factory, capsys):
    assert plot_cli.main([str(sweep_folder)]) == 2
    err = capsys.readouterr().err
    assert (
        "it is a sweep" in err and str(sweep_folder / "seed0") in err and str(sweep_folder / "seed1") in err
    )
    out = tmp_path_factory.mktemp("plot") / "curves.png"
    seeds = [str(sweep_folder / "seed0"), str(sweep_folder / "seed1")]
    assert plot_cli.main([*seeds, "--out", str(out)]) == 0 and out.is_file()


def test_the_resume_hint_runs_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    hint = run_cli.resume_command(Path("runs/x"))
    assert hint == f"{sys.executable} {ROOT / 'experiments' / 'run.py'} --logdir {tmp_path / 'runs' / 'x'}"
    assert all(Path(part).is_absolute() for part in shlex.split(hint) if part != "--logdir")


def test_the_library_uses_the_compilation_cache_unless_told_otherwise(tmp_path):
    """`train` turns on $MBRL_JAX_CACHE_DIR's cache (as the command line does) where the process set none,
    keeps a folder the process chose, and an empty variable turns it off."""
    probe = (
        "import sys, jax; from mbrl_jax.runner import use_compilation_cache\n"
        "if sys.argv[1]: jax.config.update('jax_compilation_cache_dir', sys.argv[1])\n"
        "print(use_compilation_cache(), jax.config.jax_compilation_cache_dir)"
    )

    def folder(own: str, variable: str | None) -> str:
        env = {k: v for k, v in os.environ.items() if k != "MBRL_JAX_CACHE_DIR"}
        if variable is not None:
            env["MBRL_JAX_CACHE_DIR"] = variable
        out = subprocess.run([sys.executable, "-c", probe, own], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.split()

    assert folder("", str(tmp_path / "c")) == [str(tmp_path / "c")] * 2
    assert folder(str(tmp_path / "mine"), str(tmp_path / "c")) == [str(tmp_path / "mine")] * 2
    assert folder("", "") == ["None", "None"]
    assert folder("", None) == [str(Path.home() / ".cache" / "mbrl_jax" / "xla")] * 2
