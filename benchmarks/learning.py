"""Learning curves across seeds, and the results page.

    python benchmarks/learning.py --task cartpole:0,1,2 --task pendulum:0 --out benchmarks/results
    taskset -c 0 python benchmarks/learning.py --task acrobot:0 &     # one run per core, in parallel
    taskset -c 1 python benchmarks/learning.py --task mountaincar:0 &
    python benchmarks/learning.py --report-only --out benchmarks/results      # rewrite RESULTS.md from runs

Every run trains through the library's driver, `mbrl_jax.runner`, as `experiments/run.py` does: the seeds
given for a task as one sweep (`train_sweep`: one compiled program, the train state vmapped over seeds) in
`<out>/runs/<task>-seeds<seeds>/` with a `seed<s>/` folder per seed (host envs too: a host-loop sweep); one
seed, or each seed of a config that cannot be swept (`check_devices` refuses it), with `train` in
`<out>/runs/<task>-s<seed>/`. So the
runner's non-finite guard (losses and agent state; a seed that turns stops with its `diverged.json`, the
other seeds of its sweep go on), metric logs, checkpoints and exact resume hold here too: the command re-run
after an interruption (Ctrl-C, a kill, a lost machine) resumes every unfinished run from its last
checkpoint, skips finished ones (a seed stored in either layout), and with a raised `run.steps` continues
finished runs. Each run folder also gets `run.json` (commit, device, loop, and the wall time so far, after
every chunk) and, once its program ends, `wall_time.json`. Runs stored by the earlier driver (its own loop,
`<task>-s<seed>/` without checkpoints) are read the same way.
On a 2-core CPU one XLA process barely uses the second core and vmapping seeds buys nothing (cartpole preset:
84 ms per update for one seed, 88 ms per seed-update for three vmapped; 102 ms on one core), so there one
seed per command, pinned one per core in parallel, gives the most runs per hour. On a GPU a sweep is what
pays: 8 cartpole seeds in one program took 1.27 times one seed's wall time on an H100 (`scaling-h100.json`).
Then `benchmarks/RESULTS.md` is written from the runs' metrics: per task the final and best evaluation
return (mean, IQM and bootstrap 95% CI over seeds), the first env step at which the threshold was reached,
wall time, and the machine; a PNG of the curves (mean and band over seeds); and the tables of the JSON files
that `throughput.py` (`throughput-*.json`), `scaling.py` (`scaling-*.json`) and `ab_learner.py` (`ab-*.json`)
wrote into the same folder.
Nothing in RESULTS.md is typed in by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mbrl_jax.config import (  # noqa: E402
    PRESETS,
    ConfigError,
    config_from_dict,
    make_config,
    parse_overrides,
)
from mbrl_jax.logging import read_metrics  # noqa: E402
from mbrl_jax.parallel import DIVERGED_FILE, seed_logdir, stored_seeds  # noqa: E402

# Thresholds the issues name, per env; a run "solves" the task at the first eval at or above it.
THRESHOLDS = {"CartPole-v1": 450.0, "Pendulum-v1": -300.0, "Breakout-MinAtar": 10.0}
# Per (task preset, env), where its issue names another threshold than the env's (TD-MPC2 on Pendulum: issue
# 13); the preset run on another env (`env.name=...`) takes that env's threshold, if any.
TASK_THRESHOLDS = {("tdmpc2", "Pendulum-v1"): -250.0}
# A note printed under a task's section: what a reader must know about runs measured with older code.
TASK_NOTES = {
    "tdmpc2": "Measured before TD-MPC2 followed the reference in three details (#34): the policy loss's "
    "entropy term was the log-probability after the tanh, not the Gaussian one before it times the action "
    "dimension; weights were drawn from a normal cut at 2 std (std 0.0176) instead of the reference's "
    "N(0, 0.02^2); and action spaces of 20 dimensions or more did not get 2 extra MPPI iterations (these "
    "tasks have fewer than 20). These runs were not repeated after the change.",
}
ROOT = Path(__file__).resolve().parents[1]
# Run folders under <out>/runs: `<task>-s<seed>` (one seed in its program) and `<task>-seeds<seeds>` (a sweep)
SWEEP_INFIX = "-seeds"
_SINGLE_RUN = re.compile(r"^(?P<task>.+)-s(?P<seed>\d+)$")
_SEED = re.compile(r"(?:-s|^seed)(?P<seed>\d+)$")


def random_policy_return(env_name: str, episodes: int = 64, seed: int = 0, action_repeat: int = 1) -> float:
    """Mean return of uniformly random actions over `episodes` full episodes (run in parallel on device, or
    on the host for a host env, with the run's `env.action_repeat`)."""
    from mbrl_jax.agents import random_action
    from mbrl_jax.envs import is_host_env, make_env, make_host_env
    from mbrl_jax.trainer import episode_returns

    if is_host_env(env_name):
        env = make_host_env(env_name, episodes, action_repeat=action_repeat)
        rng = np.random.default_rng(seed)
        ts = env.reset(seed)
        ret, finished = np.zeros(episodes), np.zeros(episodes, bool)
        while not finished.all():
            ts = env.step(env.random_actions(rng))
            ret = np.where(finished, ret, ts.episode_return)
            finished |= ts.is_last
        env.close()
        return float(ret.mean())
    env = make_env(env_name, episodes)

    def act(carry, obs, prev_action, is_first, key):
        return random_action(env.spec, episodes, key), carry

    run = jax.jit(lambda key: episode_returns(env, act, None, key).mean())
    return float(run(jax.random.PRNGKey(seed)))


def run_task(
    task: str,
    seeds: list[int],
    out: Path,
    overrides: dict,
    *,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> list[dict]:
    """Trains the seeds of `task` that have not finished, through `mbrl_jax.runner`, under `<out>/runs/`.

    A seed whose run folder already holds a finished run (its budget done, or turned non-finite) is
    skipped. An unfinished one with a checkpoint is resumed where it is: its own `<task>-s<seed>/` with
    `train`, or the sweep that holds it with `train_sweep` (all of that sweep's seeds; the runner resumes a
    sweep only as a whole). The rest start: several as one sweep in `<task>-seeds<seeds>/` (`seed<s>/`
    per seed), one seed, or each seed of a config that cannot be swept (`check_devices` refuses it), alone
    in `<task>-s<seed>/`. A folder left without a checkpoint holds nothing to resume and starts over.
    `stop_after_chunks` ends every program after that many chunks, as an interruption would (tests).
    Returns one row per seed."""
    from mbrl_jax.runner import check_logdir, hold_logdir, latest_checkpoint, sweep_of_seed_folder

    runs = out / "runs"
    found = task_runs(runs, task)
    seeds = list(dict.fromkeys(seeds))
    rows, plans, fresh = [], {}, []  # plans: program folder -> (its seeds, whether a sweep)
    for seed in seeds:
        config = make_config(task, **{**overrides, "run.seed": seed})
        logdir = found.get(seed)
        if logdir is not None and _finished(logdir, config):
            rows.append({"task": task, "seed": seed, "skipped": True})
            continue
        owner = sweep_of_seed_folder(logdir) if logdir is not None else None
        folder = owner[0] if owner else logdir
        if folder is not None and latest_checkpoint(folder) is not None:
            plans[folder] = (owner[1], True) if owner else ([seed], False)
        else:
            fresh.append(seed)
            if folder is not None and folder.exists():  # cut off before its first checkpoint
                with hold_logdir(check_logdir(folder)):  # not while another process trains in it
                    shutil.rmtree(folder)
    if len(fresh) > 1 and _can_sweep(make_config(task, **overrides), fresh):
        plans[runs / f"{task}{SWEEP_INFIX}{seed_spec(fresh)}"] = (sorted(fresh), True)
    else:
        plans.update({runs / f"{task}-s{seed}": ([seed], False) for seed in fresh})
    for folder, (program_seeds, sweep) in plans.items():
        others = [s for s in program_seeds if s not in seeds]
        if others:
            print(f"{task}: seeds {others} resume too: {folder.name} is one sweep", flush=True)
        rows += _train_program(task, folder, program_seeds, sweep, overrides, progress, stop_after_chunks)
    return rows


def _can_sweep(config, seeds: list[int]) -> bool:
    """Whether the runner can train `seeds` of `config` as one program (its own check, `check_devices`)."""
    from mbrl_jax.parallel import check_devices

    try:
        check_devices(config, seeds)
    except ConfigError:
        return False
    return True


def _train_program(
    task: str,
    folder: Path,
    seeds: list[int],
    sweep: bool,
    overrides: dict,
    progress: bool,
    stop_after_chunks: int | None,
) -> list[dict]:
    """One program of `run_task`: `train_sweep` of `seeds` in `folder`, or `train` of the one seed there.

    Beside the runner's files, each seed's folder gets `run.json` (commit, device, JAX, loop, and `wall_s`:
    seconds every call spent training it so far; rewritten after every chunk) and, when the program ends (its
    budget done, or no seed left finite), `wall_time.json`. A seed that turns non-finite has `diverged.json`
    (the runner writes it while other seeds go on; here, for the seeds of a program that stops)."""
    from mbrl_jax.envs import resolve_loop
    from mbrl_jax.runner import NonFiniteError, latest_checkpoint, train, train_sweep

    config = make_config(task, **{**overrides, "run.seed": seeds[0]})
    logdirs = {s: seed_logdir(folder, s) if sweep else folder for s in seeds}
    resumed = latest_checkpoint(folder)
    print(
        f"{task}: seed{'s' if sweep else ''} {', '.join(map(str, seeds))} in {folder} "
        + (f"(resuming from env step {resumed[0]:,})" if resumed else "(new)"),
        flush=True,
    )
    previous = {s: {**_run_info(d), **_wall_time(d)} if resumed else {} for s, d in logdirs.items()}
    # seconds earlier calls spent on it: a run resumed from a checkpoint (a fresh one from none)
    before = {s: previous[s].get("wall_s", 0.0) for s in seeds}
    now = {
        "commit": code_commit(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "loop": resolve_loop(config.env.name, config.env.loop),
    }
    start = time.perf_counter()

    def note(_records: dict) -> None:  # after every chunk: what ran where, and the wall time so far
        for seed, logdir in logdirs.items():
            info = {k: _joined(previous[seed].get(k), v) for k, v in now.items()}
            info["wall_s"] = before[seed] + time.perf_counter() - start
            (logdir / "run.json").write_text(json.dumps(info))
            (logdir / "wall_time.json").unlink(missing_ok=True)  # a finished run continued: in progress

    options = dict(progress=progress, stop_after_chunks=stop_after_chunks, on_chunk=note)
    diverged: dict[int, int | None] = {}
    try:
        if sweep:
            train_sweep(config, seeds, folder, **options)
        else:
            train(config, folder, **options)
    except NonFiniteError as err:  # no seed of the program left finite: it ends here
        for member, what in err.non_finite.items():
            logdir = logdirs[seeds[0] if member is None else member]
            mark = {"env_steps": err.env_steps, "non_finite": what}
            (logdir / DIVERGED_FILE).write_text(json.dumps(mark))
        print(f"{task}: {err}", flush=True)
    wall = time.perf_counter() - start
    for seed, logdir in logdirs.items():
        bad = logdir / DIVERGED_FILE
        diverged[seed] = json.loads(bad.read_text())["env_steps"] if bad.exists() else None
    latest = latest_checkpoint(folder)
    ended = all(x is not None for x in diverged.values()) or (
        latest is not None and latest[0] >= config.total_env_steps
    )
    for seed, logdir in logdirs.items():
        if ended:
            timing = {
                "wall_s": before[seed] + wall,
                "steps": config.run.steps,
                "seeds_in_program": len(seeds),
            }
            (logdir / "wall_time.json").write_text(json.dumps(timing))
    return [
        {"task": task, "seed": s, "logdir": str(logdirs[s]), "finished": ended, "diverged_at": diverged[s]}
        for s in seeds
    ]


def _run_info(logdir: Path) -> dict:
    path = logdir / "run.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _wall_time(logdir: Path) -> dict:
    path = logdir / "wall_time.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _joined(previous: str | None, now: str | None) -> str | None:
    """'a' then 'b' -> 'a+b': a run resumed under another commit (or device) names both."""
    parts = [p for p in (previous or "").split("+") if p]
    if now and now not in parts:
        parts.append(now)
    return "+".join(parts) or None


def _finished(logdir: Path, config) -> bool:
    """Whether the run in `logdir` ended (its program wrote wall_time.json): it did `config`'s budget, or
    turned non-finite."""
    if not (logdir / "wall_time.json").exists():
        return False
    if (logdir / DIVERGED_FILE).exists():
        return True
    records = read_metrics(logdir)
    return bool(records) and records[-1]["env_steps"] >= config.run.steps


def seed_spec(seeds: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2,5': a sweep folder's name for its seeds (the `--seeds` syntax of run.py)."""
    parts, seeds = [], sorted(seeds)
    low = prev = seeds[0]
    for seed in [*seeds[1:], None]:
        if seed is not None and seed == prev + 1:
            prev = seed
            continue
        parts.append(str(low) if low == prev else f"{low}-{prev}")
        low = prev = seed
    return ",".join(parts)


def run_folders(runs: Path) -> list[tuple[str, int, Path]]:
    """(task, seed, run folder) of every run stored in `runs`, in both layouts: `<task>-s<seed>/` (one seed
    in its program: every run of the earlier driver, and single seeds of this one) and the `seed<s>/`
    folders of the sweeps `<task>-seeds<seeds>/` (several seeds in one program)."""
    found = []
    for path in sorted(p for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []:
        sweep_seeds = stored_seeds(path)
        if sweep_seeds is not None and SWEEP_INFIX in path.name:
            task = path.name.rpartition(SWEEP_INFIX)[0]
            found += [(task, seed, seed_logdir(path, seed)) for seed in sweep_seeds]
        elif (match := _SINGLE_RUN.match(path.name)) is not None:
            found.append((match["task"], int(match["seed"]), path))
    return found


def task_runs(runs: Path, task: str) -> dict[int, Path]:
    """Seed -> run folder of `task` in `runs`, by seed. A seed stored twice (a sweep and a run of its own)
    counts once: the folder whose records go furthest."""
    best: dict[int, Path] = {}
    for name, seed, logdir in run_folders(runs):
        if name == task and (seed not in best or _last_env_steps(logdir) > _last_env_steps(best[seed])):
            best[seed] = logdir
    return dict(sorted(best.items()))


def _last_env_steps(logdir: Path) -> int:
    records = read_metrics(logdir)
    return records[-1]["env_steps"] if records else -1


def run_seed(logdir: Path) -> int:
    """The seed of a run folder: `<task>-s<seed>` or a sweep's `seed<s>`."""
    return int(_SEED.search(logdir.name)["seed"])


def code_commit() -> str | None:
    """The short git commit of the code that runs (this script's checkout); outside a checkout (a copy of
    the tree on another machine), `MBRL_JAX_COMMIT` from the environment, else None."""
    import subprocess

    try:
        out = subprocess.run(
            ["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return os.environ.get("MBRL_JAX_COMMIT")
    return out.stdout.strip() or os.environ.get("MBRL_JAX_COMMIT")


def summarize(task: str, logdirs: list[Path]) -> dict:
    from mbrl_jax.stats import bootstrap_mean_ci, iqm

    finals, bests, solved_at, walls, steps, seeds, diverged, commits = [], [], [], [], [], [], [], []
    finished, devices, train_finals, loops = [], [], [], []
    env = None
    if logdirs and (logdirs[0] / "config.yaml").exists():
        from mbrl_jax.checkpoint import load_config

        env = config_from_dict(load_config(logdirs[0])).env.name
    plain_env = (env or "").rpartition(":")[2]  # without a host backend's "gymnasium:" or "envpool:"
    threshold = TASK_THRESHOLDS.get((task, plain_env), THRESHOLDS.get(plain_env))
    for logdir in logdirs:
        records = read_metrics(logdir)
        evals = [(r["env_steps"], r["eval_return"]) for r in records if "eval_return" in r]
        if not evals:
            continue
        seeds.append(run_seed(logdir))
        bad = logdir / "diverged.json"
        diverged.append(json.loads(bad.read_text())["env_steps"] if bad.exists() else None)
        finals.append(evals[-1][1])
        # the sampled (training) policy's episodes of the last chunk in which any ended: what the reference
        # reports
        episodes = [r["episode_return"] for r in records if r.get("episode_return") is not None]
        train_finals.append(episodes[-1] if episodes else float("nan"))
        bests.append(max(v for _, v in evals))
        steps.append(evals[-1][0])
        hit = [s for s, v in evals if threshold is not None and v >= threshold]
        solved_at.append(hit[0] if hit else None)
        timing, info = _wall_time(logdir), _run_info(logdir)
        # a run in progress (or cut off): its wall time so far, from run.json (the runner's runs) or from its
        # last record (the earlier driver's)
        so_far = info.get("wall_s", records[-1].get("wall_s", float("nan")))
        walls.append(timing.get("wall_s", so_far))
        finished.append(bool(timing))
        info = info or timing
        commits.append(info.get("commit"))
        devices.append(info.get("device"))
        # runs stored before envpool's XLA path existed ran every host env on the host loop
        loops.append(info.get("loop", "host" if ":" in (env or "") else "compiled"))
    finals, bests = np.array(finals), np.array(bests)
    # the random policy's return on this env, from whichever task's baseline file measured it
    baselines = (
        [json.loads(p.read_text()) for p in sorted(runs_folder(logdirs[0]).glob("random-*.json"))]
        if logdirs
        else []
    )
    random_return = next((b["return"] for b in baselines if b.get("env") == env), None)
    if env and ":" in env and loops:  # a host env: which loop drove it
        env = f"{env} ({'/'.join(sorted(set(loops)))} loop)"
    return {
        "task": task,
        "env": env,
        "seeds": len(finals),
        "seed_ids": seeds,
        "steps_per_seed": [int(x) for x in steps],
        "diverged": diverged,
        "random_return": random_return,
        "env_steps": int(max(steps)) if steps else 0,
        "final_mean": float(finals.mean()),
        "final_iqm": iqm(finals),
        "final_ci": tuple(float(x) for x in bootstrap_mean_ci(finals)[1:]),
        "best_mean": float(bests.mean()),
        "finals": finals.tolist(),
        "bests": bests.tolist(),
        "train_finals": train_finals,
        "threshold": threshold,
        "solved_at": solved_at,
        "wall_s": walls,
        "finished": finished,
        "devices": devices,
        "commits": commits,
    }


def runs_folder(logdir: Path) -> Path:
    """The `runs` folder that holds a run folder: its parent, or its sweep's parent."""
    from mbrl_jax.runner import sweep_of_seed_folder

    owner = sweep_of_seed_folder(logdir)
    return owner[0].parent if owner else logdir.parent


PEER_COMMIT = "danijar/dreamerv3@e3f0224"  # what the first side-by-side JSON ran against


def machine() -> str:
    import jax

    cpu = platform.processor() or platform.machine()
    return f"{jax.devices()[0].platform} ({cpu}, {os.cpu_count()} cores), jax {jax.__version__}"


def write_results(summaries: list[dict], out: Path, results_md: Path, command: str) -> None:
    from mbrl_jax.plotting import plot_curves

    lines = [
        "# mbrl_jax results",
        "",
        "Generated by `benchmarks/learning.py` from the runs' `metrics.jsonl`; do not edit by hand.",
        f"Command: `{command}`, written on {machine()}; the device of each run is listed per seed.",
        "",
        "Evaluation return: mean over the config's `eval_episodes` episodes after each chunk, with each "
        "run's `run.eval_policy`: `sample` (actions drawn from the policy, as the reference evaluates; the "
        "default) or `mode` (the policy's mode; every run stored before that setting existed). *final*: at "
        "the end of the run; *best*: the highest evaluation of the run; CI: "
        "bootstrap 95% over seeds of the final return; *reached*: first env step with an evaluation at or "
        "above the threshold. *Final training return*: mean return of the training episodes (actions sampled "
        "from the policy, as the reference DreamerV3 both acts and evaluates) that ended in the last chunk.",
        "",
    ]
    lines += robustness_table(summaries, out)
    for s in summaries:
        plot = out / f"{s['task']}.png"
        runs = list(task_runs(out / "runs", s["task"]).values())
        plot_curves(runs, plot, key="eval_return", label=s["task"])
        reached = (
            ", ".join("not reached" if x is None else f"{x:,}" for x in s["solved_at"])
            if s["threshold"] is not None
            else "–"
        )
        walls = wall_times_text(s, decimals=1)
        lines += [
            f"## {s['task']}",
            "",
            "| seeds | env steps | final mean | final IQM | final 95% CI | best mean | threshold "
            "| reached at (per seed) | wall time (per seed) |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
            f"| {s['seeds']} | {s['env_steps']:,} | {s['final_mean']:.1f} | {s['final_iqm']:.1f} | "
            f"[{s['final_ci'][0]:.1f}, {s['final_ci'][1]:.1f}] | {s['best_mean']:.1f} | "
            f"{s['threshold'] or '–'} | "
            f"{reached} | {walls} |",
            "",
            "Per seed, final / best (code commit, device): "
            + "; ".join(
                f"s{seed} {f:.1f} / {b:.1f} ({commit or 'not recorded'}, {device or 'not recorded'})"
                for seed, f, b, commit, device in zip(
                    s["seed_ids"], s["finals"], s["bests"], s["commits"], s["devices"], strict=True
                )
            ),
            "",
            *([TASK_NOTES[s["task"]], ""] if s["task"] in TASK_NOTES else []),
            f"![{s['task']}]({os.path.relpath(plot, results_md.parent)})",
            "",
        ]
    from benchmarks.craftax_baseline import craftax_section

    lines += craftax_section(
        out, {s["task"]: list(task_runs(out / "runs", s["task"]).values()) for s in summaries}
    )
    lines += peer_section(out)
    lines += throughput_section(out)
    lines += scaling_section(out, results_md)
    lines += backbones_section(out, results_md)
    lines += ab_section(out)
    lines += conv_layouts_section(out)
    results_md.write_text("\n".join(lines))


def wall_times_text(summary: dict, decimals: int) -> str:
    """Per seed: '12.5 min', or '3.0 min so far' for a run in progress; '–' where no time was recorded."""
    return ", ".join(
        "–" if not np.isfinite(w) else f"{w / 60:.{decimals}f} min" + ("" if done else " so far")
        for w, done in zip(summary["wall_s"], summary["finished"], strict=True)
    )


def robustness_table(summaries: list[dict], out: Path) -> list[str]:
    """One row per task: every seed's final evaluation return beside a random policy's return."""
    lines = [
        "## Robustness: one set of hyperparameters across tasks",
        "",
        "| task | env | seeds | env steps (per seed) | final return (per seed) | best (per seed) "
        "| final training return (per seed) | random policy | threshold | reached at | non-finite runs "
        "| wall time (per seed) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in summaries:
        fmt = lambda xs: ", ".join(f"{x:.1f}" for x in xs)
        reached = (
            ", ".join("not reached" if x is None else f"{x:,}" for x in s["solved_at"])
            if s["threshold"]
            else "–"
        )
        random = "–" if s["random_return"] is None else f"{s['random_return']:.1f}"
        bad = sum(d is not None for d in s["diverged"])
        lines.append(
            f"| {s['task']} | {s['env']} | {', '.join(map(str, s['seed_ids']))} | "
            f"{', '.join(f'{x:,}' for x in s['steps_per_seed'])} | {fmt(s['finals'])} | {fmt(s['bests'])} | "
            f"{fmt(s['train_finals'])} | {random} | {s['threshold'] or '–'} | {reached} | {bad} | "
            + wall_times_text(s, decimals=0)
            + " |"
        )
    lines += ["", settings_note(summaries, out), ""]
    return lines


def settings_note(summaries: list[dict], out: Path) -> str:
    """States each task's preset and its settings, checked against every run's config.yaml: a run whose
    config differs from its task's preset (other than env and seed) is named with the keys that differ."""
    from mbrl_jax.checkpoint import load_config

    notes, by_settings = [], {}
    for s in summaries:
        preset = make_config(s["task"]).flat()
        differing, logdirs = set(), task_runs(out / "runs", s["task"])
        for seed in s["seed_ids"]:
            stored = config_from_dict(load_config(logdirs[seed]) or {}).flat()
            differing |= {k for k, v in stored.items() if preset[k] != v} - {"env.name", "run.seed"}
        if differing:
            notes.append(f"runs of `{s['task']}` differ from their preset in {sorted(differing)}")
        settings = {k: v for k, v in PRESETS[s["task"]].items() if k != "env.name"}
        by_settings.setdefault(json.dumps(settings), []).append(s["task"])
    described = []
    for settings, tasks in by_settings.items():
        values = json.loads(settings)
        defaults = "the config defaults (the reference's hyperparameters)"
        listed = ", ".join(f"{k}={v}" for k, v in values.items() if k != "run.steps")
        described.append(
            f"{', '.join(f'`{t}`' for t in tasks)}: {defaults}" + (f" with {listed}" if listed else "")
        )
    checked = "; ".join(notes) if notes else "every run's config.yaml equals its task's preset except seed"
    return (
        f"Settings: {'; '.join(described)}. Checked: {checked}. A run still in progress shows fewer env "
        "steps and its wall time so far; *random policy*: mean return of uniformly random actions over 64 "
        "episodes."
    )


def peer_section(out: Path) -> list[str]:
    """Tables from the JSON files `benchmarks/peer_sidebyside.py --out <out>/peer-sidebyside-*.json` wrote:
    mbrl_jax beside the official DreamerV3 on the same workloads, as ratios."""
    from benchmarks.peer_sidebyside import table_lines

    lines = []
    for path in sorted(out.glob("peer-sidebyside-*.json")):
        report = json.loads(path.read_text())
        m = report["machine"]
        where = m if isinstance(m, str) else f"{m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs"
        quiet = "a quiet machine (nothing else on the cores)" if report["quiet"] else "a BUSY machine"
        load = report["load_before"]
        load = load if isinstance(load, str) else " ".join(f"{x:.2f}" for x in load)
        lines += [
            f"## Side by side with the official DreamerV3: `{path.name}`",
            "",
            f"{report['date']}, {where}, {quiet}; load average before: {load}. mbrl_jax at "
            f"{report['mbrl_jax_commit']}, the official DreamerV3 at {report.get('peer', PEER_COMMIT)}, "
            "each pair one after the other in the same session. Speed: learner updates per second of wall "
            "time while training, acting included; ratio = mbrl_jax / official (above 1: mbrl_jax faster). "
            "Memory: peak resident set of the training process; ratio above 1: mbrl_jax uses more. "
            "Method: " + report["method"],
            "",
            *table_lines(report),
            "",
        ]
    return lines


def throughput_section(out: Path) -> list[str]:
    """Tables from the JSON files `benchmarks/throughput.py --out <out>/throughput-*.json` wrote."""
    from benchmarks.throughput import ROWS

    lines = []
    for path in sorted(out.glob("throughput*.json")):
        report = json.loads(path.read_text())
        m, results = report["machine"], report["results"]
        lines += [
            f"## Throughput: `{path.name}`",
            "",
            f"Machine: {m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs, jax {m['jax_version']}. "
            f"Settings: {json.dumps(report['settings'])}.",
            "",
            "| | " + " | ".join(r["preset"] for r in results) + " |",
            "| --- |" + " --- |" * len(results),
        ]
        lines += [  # a field only some results have (a host env's `loop`): "–" in the others
            f"| {label} | " + " | ".join(fmt.format(r[f]) if f in r else "–" for r in results) + " |"
            for f, label, fmt in ROWS
            if any(f in r for r in results)
        ]
        for r in results:
            for name in ("profile", "note"):
                if r.get(name):
                    lines += ["", f"**{r['preset']} {name}:**", "", r[name]]
        lines.append("")
    return lines


def scaling_section(out: Path, results_md: Path) -> list[str]:
    """Tables from the JSON files `benchmarks/scaling.py --out <out>/scaling-*.json` wrote, and their PNGs."""
    lines = []
    for path in sorted(out.glob("scaling-*.json")):
        r = json.loads(path.read_text())
        m = r["machine"]
        lines += [
            f"## Scaling: `{path.name}`",
            "",
            f"Preset `{r['preset']}` with {' '.join(r['overrides'])}; {r['chunks']} timed chunk(s) after a "
            f"warm-up chunk. Machine: {m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs, "
            f"jax {m['jax_version']}.",
            "",
        ]
        for key, what in (("seeds", "seeds vmapped in one program"), ("devices", "devices (run.devices)")):
            rows = r[f"{key}_scaling"]
            if not rows:
                continue
            lines += [
                f"| {what} | s / chunk | wall × first row | env steps/s (all seeds) | s / chunk / seed |",
                "| --- | --- | --- | --- | --- |",
            ]
            lines += [
                f"| {x[key]} | {x['chunk_s']:.1f} | {x['wall_ratio']:.2f} | {x['env_steps_per_s']:.1f} | "
                f"{x['chunk_s_per_seed']:.1f} |"
                for x in rows
            ]
            lines.append("")
        if r.get("note"):
            lines += [r["note"], ""]
        plot = path.with_suffix(".png")
        if plot.exists():
            lines += [f"![{path.stem}]({os.path.relpath(plot, results_md.parent)})", ""]
    return lines


def backbones_section(out: Path, results_md: Path) -> list[str]:
    """Tables from the JSON files `benchmarks/backbones.py --out <out>/backbones-*.json` wrote, and PNGs."""
    lines = []
    for path in sorted(out.glob("backbones-*.json")):
        r = json.loads(path.read_text())
        m = r["machine"]
        lines += [
            f"## Sequence backbones: `{path.name}`",
            "",
            f"World-model update (loss and gradient) of the `{r['preset']}` model on {r['batch']} random "
            f"windows of T steps, best of 3; XLA temporary memory of that program. Machine: "
            f"{m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs, jax {m['jax_version']}.",
            "",
            "| backbone | T | s / update | steps / s | temp MiB | time × first T |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        first: dict[str, float] = {}
        for x in r["updates"]:
            base = first.setdefault(x["backbone"], x["update_s"])
            lines.append(
                f"| {x['backbone']} | {x['length']} | {x['update_s']:.3f} | {x['steps_per_s']:.0f} | "
                f"{x['temp_mib']:.0f} | {x['update_s'] / base:.2f} |"
            )
        lines += ["", "| backbone | imagination starts × horizon | s / rollout | imagined steps / s |"]
        lines.append("| --- | --- | --- | --- |")
        lines += [
            f"| {x['backbone']} | {x['starts']} × {x['horizon']} | {x['rollout_s']:.3f} | "
            f"{x['imagination_steps_per_s']:.0f} |"
            for x in r["imagination"]
        ]
        lines.append("")
        plot = path.with_suffix(".png")
        if plot.exists():
            lines += [f"![{path.stem}]({os.path.relpath(plot, results_md.parent)})", ""]
    return lines


def ab_section(out: Path) -> list[str]:
    """Tables from the JSON files `benchmarks/ab_learner.py --out <out>/ab-*.json` wrote: learner update
    time of two commits, measured alternately."""
    lines = []
    for path in sorted(out.glob("ab-*.json")):
        r = json.loads(path.read_text())
        m, s = r["machine"], r["settings"]
        base, head = r["base"], r["head"]
        preset = f"`{s['preset']}`" + (f" with {' '.join(s['overrides'])}" if s["overrides"] else "")
        lines += [
            f"## A/B: `{path.name}` ({r['name']})",
            "",
            f"Learner update of the {preset} preset: head `{head['commit'][:7]}` ({head['subject']}) against "
            f"base `{base['commit'][:7]}` ({base['subject']}). {s['rounds']} rounds of base then head in one "
            f"command, each a fresh process timing {s['updates']} updates in one jit, best of {s['repeats']} "
            f"calls: `{r['command']}`.",
            "",
            f"Machine: {m['device_kind']}, {m['cpu_count']} CPUs, jax {m['jax_version']}; load average "
            f"(1 min) {m['loadavg_before'][0]:.1f} before, {m['loadavg_after'][0]:.1f} after. Absolute times "
            "depend on what else ran; the rounds alternate so that both commits share it, and the ratio is "
            "the figure to compare.",
            "",
            "| round | base (ms) | head (ms) | head / base |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {i} | {x['base_ms']:.1f} | {x['head_ms']:.1f} | {x['ratio']:.3f} |"
            for i, x in enumerate(r["rounds"], 1)
        ]
        lines.append(f"| best | {r['base_ms']:.1f} | {r['head_ms']:.1f} | {r['ratio']:.3f} |")
        for side in ("base", "head"):
            if r["profiles"].get(side):
                lines += ["", f"**{side} profile, one update:**", "", r["profiles"][side]]
        lines.append("")
    return lines


def conv_layouts_section(out: Path) -> list[str]:
    """Tables from the JSON files `benchmarks/conv_layouts.py --out <out>/conv-layouts-*.json` wrote."""
    lines = []
    for path in sorted(out.glob("conv-layouts-*.json")):
        r = json.loads(path.read_text())
        m = r["machine"]
        lines += [
            f"## Image-layer layouts: `{path.name}`",
            "",
            f"Gradient (kernel and input) of one image layer on a batch of {r['batch']}, inside a "
            f"{r['steps']}-step `lax.scan`, in the library's patch layout and in an alternative computing "
            f"the same function. Machine: {m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs, jax "
            f"{m['jax_version']}.",
            "",
            "| layer | layout | ms per gradient | × library |",
            "| --- | --- | --- | --- |",
        ]
        library: dict[str, float] = {}
        for x in r["rows"]:
            base = library.setdefault(x["layer"], x["ms_per_grad"])
            lines.append(
                f"| {x['layer']} | {x['layout']} | {x['ms_per_grad']:.0f} | {x['ms_per_grad'] / base:.2f} |"
            )
        lines += [
            "",
            "The image-workload profiles (`throughput-rgb64-cpu.json` above) put building the patch matrices "
            "(concatenate, and the slices of its gradient) first. Neither layout that avoids those copies is "
            "faster except on the 3-channel first layer. What would close the gap to issue #10's targets: a "
            "fused patch-and-multiply kernel, or XLA CPU running its convolution op inside loops as fast as "
            "outside (jax-ml/jax#12868; README, image workload throughput).",
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--task", action="append", default=[], help="PRESET:SEED[,SEED...], e.g. cartpole:0,1,2"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--results-md", default=str(ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument(
        "--report-only", action="store_true", help="only rewrite RESULTS.md from existing runs"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    out = Path(args.out)
    try:
        overrides = parse_overrides(args.overrides)
        plan = []
        for spec in args.task:
            task, _, seeds = spec.partition(":")
            if task not in PRESETS:
                raise ConfigError(f"unknown task preset '{task}'; allowed: {', '.join(PRESETS)}")
            plan += [(task, int(s)) for s in (seeds or "0").split(",")]
            for task_, seed in plan:
                make_config(task_, **{**overrides, "run.seed": seed})  # validate all before the first run
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not args.report_only:
        from mbrl_jax.runner import Interrupted, LogdirInUse

        by_task: dict[str, list[int]] = {}
        for task, seed in plan:
            by_task.setdefault(task, []).append(seed)
        for task, seeds in by_task.items():
            try:
                rows = run_task(task, seeds, out, overrides)
            except ConfigError as err:  # a run folder holds a run of another config, or a sweep of others
                print(f"error: {err}", file=sys.stderr)
                return 2
            except LogdirInUse as err:  # another process trains in one of its run folders
                print(f"error: {err}", file=sys.stderr)
                return 1
            except Interrupted as err:  # SIGINT / SIGTERM: its last complete chunk is saved
                print(f"{task}: {err}; the same command resumes it", file=sys.stderr)
                return err.exit_status
            for result in rows:
                print(json.dumps(result), flush=True)
            baseline = out / "runs" / f"random-{task}.json"
            if not baseline.exists():
                env = make_config(task, **overrides).env
                score = random_policy_return(env.name, action_repeat=env.action_repeat)
                baseline.write_text(json.dumps({"env": env.name, "return": score}))
    tasks = sorted({task for task, _, _ in run_folders(out / "runs")})
    tasks = [t for t in tasks if not args.task or t in {s.partition(":")[0] for s in args.task}]
    summaries = [summarize(t, list(task_runs(out / "runs", t).values())) for t in tasks]
    command = "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(summaries, out, Path(args.results_md), command)
    print(json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
