"""Learning curves across seeds, and the results page.

    python benchmarks/learning.py --task cartpole:0,1,2 --task pendulum:0 --out benchmarks/results
    taskset -c 0 python benchmarks/learning.py --task acrobot:0 &     # one run per core, in parallel
    taskset -c 1 python benchmarks/learning.py --task mountaincar:0 &
    python benchmarks/learning.py --report-only --out benchmarks/results      # rewrite RESULTS.md from runs

Each (task, seed) trains with `mbrl_jax.make_train` (the seeds given for a task vmapped in one program) into
`<out>/runs/<task>-s<seed>/` (a finished run is skipped, so the command can be re-run after an
interruption). On a 2-core CPU one XLA process barely uses the second core and vmapping seeds buys nothing
(cartpole preset: 84 ms per update for one seed, 88 ms per seed-update for three vmapped; 102 ms on one
core), so runs pinned one per core in parallel give the most runs per hour there.
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
import shutil
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
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


def run_task(task: str, seeds: list[int], out: Path, overrides: dict) -> list[dict]:
    """Trains every seed of `task` as one compiled program (the train state vmapped over a seed axis) and
    logs each seed to `<out>/runs/<task>-s<seed>/` (config.yaml, metrics.jsonl/csv, wall_time.json). A host
    env (`env.name=gymnasium:...` or `envpool:...`) cannot be vmapped: its seeds run one after another, each
    with its own wall time, in the loop `env.loop` picks (envpool's XLA interface in the compiled loop, or the
    host loop, `mbrl_jax.host_loop`).

    A seed whose losses turn non-finite stops being logged (its run directory records where); the others go
    on. Seeds whose run directory already holds a finished run are skipped. There are no checkpoints: an
    interrupted task starts over."""
    from mbrl_jax.envs import is_host_env

    configs = {seed: make_config(task, **{**overrides, "run.seed": seed}) for seed in seeds}
    logdirs = {seed: out / "runs" / f"{task}-s{seed}" for seed in seeds}
    todo = [s for s in seeds if not _finished(logdirs[s], configs[s])]
    if not todo:
        return [{"task": task, "seed": s, "skipped": True} for s in seeds]
    if is_host_env(configs[todo[0]].env.name):
        return [row for s in todo for row in _run_seeds(task, [s], configs, logdirs)]
    return _run_seeds(task, todo, configs, logdirs)


def _run_seeds(task: str, todo: list[int], configs: dict, logdirs: dict) -> list[dict]:
    """`run_task`'s loop for the seeds `todo`: vmapped in one program (gymnax), or one seed of a host env in
    the loop `env.loop` picks."""
    from mbrl_jax.checkpoint import save_config
    from mbrl_jax.envs import is_host_env, resolve_loop
    from mbrl_jax.host_loop import make_host_train
    from mbrl_jax.logging import MetricLogger
    from mbrl_jax.trainer import make_train, summarize_chunk

    config = configs[todo[0]]
    start = time.perf_counter()
    if is_host_env(config.env.name):  # one seed; its metrics get the seed axis the vmapped program has
        if resolve_loop(config.env.name, config.env.loop) == "host":
            trainer = make_host_train(config)
            state, run_chunk = trainer.init(jax.random.PRNGKey(todo[0])), trainer.run_chunk
        else:
            trainer = make_train(config)
            state = jax.jit(trainer.init)(jax.random.PRNGKey(todo[0]))
            run_chunk = jax.jit(trainer.run_chunk, donate_argnums=0)

        def chunk(state):
            state, metrics = run_chunk(state)
            return state, jax.tree.map(lambda x: jnp.asarray(x)[None], metrics)

    else:
        trainer = make_train(config)
        keys = jnp.stack([jax.random.PRNGKey(s) for s in todo])
        state = jax.jit(jax.vmap(trainer.init))(keys)
        chunk = jax.jit(jax.vmap(trainer.run_chunk), donate_argnums=0)
    loggers = {}
    # what ran where, written before the first chunk so that a run cut off early still says it
    run_info = {
        "commit": code_commit(),
        "device": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "loop": resolve_loop(config.env.name, config.env.loop),
    }
    for seed in todo:
        shutil.rmtree(logdirs[seed], ignore_errors=True)
        logdirs[seed].mkdir(parents=True)
        save_config(logdirs[seed], configs[seed].to_dict())
        loggers[seed] = MetricLogger(logdirs[seed])
        (logdirs[seed] / "run.json").write_text(json.dumps(run_info))
    diverged: dict[int, int] = {}
    for index in range(config.num_chunks):
        state, metrics = chunk(state)
        metrics = jax.device_get(metrics)
        elapsed = time.perf_counter() - start
        line = []
        for i, seed in enumerate(todo):
            record = {**summarize_chunk({k: v[i] for k, v in metrics.items()}), "wall_s": elapsed}
            if seed in diverged:
                continue
            if not all(np.isfinite(v) for k, v in record.items() if k.startswith("loss")):
                diverged[seed] = record["env_steps"]
                (logdirs[seed] / "diverged.json").write_text(json.dumps({"env_steps": record["env_steps"]}))
                continue
            loggers[seed].write(record)
            line.append(f"s{seed} {record['eval_return']:.1f}" if "eval_return" in record else f"s{seed} -")
        print(
            f"{task} chunk {index + 1}/{config.num_chunks} env_steps {record['env_steps']} "
            f"eval {' '.join(line)} ({elapsed / 60:.1f} min)",
            flush=True,
        )
    wall = time.perf_counter() - start
    for seed in todo:
        loggers[seed].close()
        timing = {
            "wall_s": wall,
            "steps": config.run.steps,
            "seeds_in_program": len(todo),
        }
        (logdirs[seed] / "wall_time.json").write_text(json.dumps(timing))
    return [{"task": task, "seed": s, "wall_s": wall, "diverged_at": diverged.get(s)} for s in todo]


def _finished(logdir: Path, config) -> bool:
    records = read_metrics(logdir) if (logdir / "wall_time.json").exists() else []
    return bool(records) and records[-1]["env_steps"] >= config.run.steps


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
        seeds.append(int(logdir.name.rsplit("-s", 1)[1]))
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
        timing = logdir / "wall_time.json"
        timing = json.loads(timing.read_text()) if timing.exists() else {}
        # a run in progress (or cut off): the wall time of its last record so far
        walls.append(timing.get("wall_s", records[-1].get("wall_s", float("nan"))))
        finished.append(bool(timing))
        info = logdir / "run.json"
        info = json.loads(info.read_text()) if info.exists() else timing
        commits.append(info.get("commit"))
        devices.append(info.get("device"))
        # runs stored before envpool's XLA path existed ran every host env on the host loop
        loops.append(info.get("loop", "host" if ":" in (env or "") else "compiled"))
    finals, bests = np.array(finals), np.array(bests)
    # the random policy's return on this env, from whichever task's baseline file measured it
    baselines = (
        [json.loads(p.read_text()) for p in sorted(logdirs[0].parent.glob("random-*.json"))]
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
        runs = sorted((out / "runs").glob(f"{s['task']}-s*"))
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
        differing = set()
        for seed in s["seed_ids"]:
            stored = config_from_dict(load_config(out / "runs" / f"{s['task']}-s{seed}") or {}).flat()
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
        by_task: dict[str, list[int]] = {}
        for task, seed in plan:
            by_task.setdefault(task, []).append(seed)
        for task, seeds in by_task.items():
            for result in run_task(task, seeds, out, overrides):
                print(json.dumps(result), flush=True)
            baseline = out / "runs" / f"random-{task}.json"
            if not baseline.exists():
                env = make_config(task, **overrides).env
                score = random_policy_return(env.name, action_repeat=env.action_repeat)
                baseline.write_text(json.dumps({"env": env.name, "return": score}))
    tasks = sorted({p.name.rsplit("-s", 1)[0] for p in (out / "runs").glob("*-s*") if p.is_dir()})
    tasks = [t for t in tasks if not args.task or t in {s.partition(":")[0] for s in args.task}]
    summaries = [summarize(t, sorted((out / "runs").glob(f"{t}-s*"))) for t in tasks]
    command = "python benchmarks/learning.py " + " ".join(argv if argv is not None else sys.argv[1:])
    write_results(summaries, out, Path(args.results_md), command)
    print(json.dumps(summaries))
    return 0


if __name__ == "__main__":
    sys.exit(main())
