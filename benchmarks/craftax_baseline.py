"""Craftax figures that need no training, and the RESULTS.md section that reads them beside the runs.

    python benchmarks/craftax_baseline.py --episodes 100 --out benchmarks/results/craftax-cpu.json

Measures on the first device: the envs' own speed (`env_steps_per_s`: env steps/s of a jitted `lax.scan` of
`--steps` steps with uniformly random actions, no policy, best of 3 calls after a compiling one, per
`--num-envs` value), and a uniformly random policy's Crafter metrics over `--episodes` episodes run in
parallel from one reset until each has ended (a jitted `lax.while_loop`): mean return and length, each
achievement's success rate (percentage of episodes that unlocked it) and the Crafter score (Hafner, 2021).
That is the baseline a learning run on the same env is compared against. `--note` is stored as given (say
there whether the machine was shared). Training throughput comes from `benchmarks/throughput.py --preset
craftax`; `craftax_section` (called by `benchmarks/learning.py` when it writes RESULTS.md) puts the
`craftax-*.json` files and the craftax runs' last evaluations, as means over seeds, in one table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.report import emit, machine_info  # noqa: E402
from mbrl_jax.agents import env_action, random_action  # noqa: E402
from mbrl_jax.config import ConfigError  # noqa: E402
from mbrl_jax.envs import crafter_score, is_craftax, make_env  # noqa: E402
from mbrl_jax.envs.craftax_env import unknown_craftax_env  # noqa: E402
from mbrl_jax.trainer import ACHIEVEMENT_PREFIX  # noqa: E402

DEFAULT_ENV = "craftax:Craftax-Classic-Symbolic-v1"


def env_steps_per_s(name: str, num_envs: int, steps: int, seed: int = 0) -> dict[str, float]:
    """Env steps/s (over all envs) of `num_envs` envs alone under uniformly random actions, and the first
    (compiling) call's seconds."""
    env = make_env(name, num_envs)

    def rollout(key):
        def step(env_state, k):
            k_act, k_env = jax.random.split(k)
            action = env_action(env.spec, random_action(env.spec, num_envs, k_act))
            return env.step(env_state, action, k_env)[0], None

        k_reset, k_steps = jax.random.split(key)
        return jax.lax.scan(step, env.reset(k_reset)[0], jax.random.split(k_steps, steps))[0].episode_length

    run = jax.jit(rollout)
    start = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(seed)))
    first = time.perf_counter() - start
    best = float("inf")
    for i in range(3):
        start = time.perf_counter()
        jax.block_until_ready(run(jax.random.key(seed + 1 + i)))
        best = min(best, time.perf_counter() - start)
    return {
        "num_envs": num_envs,
        "steps": steps,
        "first_call_s": first,
        "env_steps_per_s": steps * num_envs / best,
    }


def random_episodes(name: str, episodes: int, seed: int = 0) -> dict:
    """One episode in each of `episodes` envs under uniformly random actions: [N] returns and lengths and
    [N, K] achievements unlocked, as numpy arrays."""
    env = make_env(name, episodes)
    limit = env.spec.max_episode_steps + 1

    def run(key):
        k_reset, k_loop = jax.random.split(key)
        env_state, ts = env.reset(k_reset)
        n, k = episodes, len(env.achievement_names)
        init = (0, k_loop, env_state, jnp.zeros(n), jnp.zeros(n, jnp.int32), jnp.zeros((n, k), bool))
        init = (*init, jnp.zeros(n, bool))

        def more(loop):
            return (loop[0] < limit) & ~loop[-1].all()

        def step(loop):
            t, key, env_state, ret, length, unlocked, finished = loop
            key, k_act, k_env = jax.random.split(key, 3)
            action = env_action(env.spec, random_action(env.spec, n, k_act))
            env_state, ts = env.step(env_state, action, k_env)
            ret = jnp.where(finished, ret, ts.episode_return)
            length = jnp.where(finished, length, ts.episode_length)
            unlocked = jnp.where(finished[:, None], unlocked, env.achievements(env_state))
            return t + 1, key, env_state, ret, length, unlocked, finished | ts.is_last

        return jax.lax.while_loop(more, step, init)[3:]

    ret, length, unlocked, finished = jax.device_get(jax.jit(run)(jax.random.key(seed)))
    if not finished.all():
        raise RuntimeError(f"{name}: {int((~finished).sum())} random episodes did not end in {limit} steps")
    return {"names": env.achievement_names, "returns": ret, "lengths": length, "achievements": unlocked}


def random_baseline(name: str, episodes: int, seed: int = 0) -> dict:
    """`random_episodes` summarised: means, success rates in percent, Crafter score."""
    start = time.perf_counter()
    out = random_episodes(name, episodes, seed)
    rates = 100.0 * out["achievements"].mean(axis=0)
    return {
        "env": name,
        "episodes": episodes,
        "seed": seed,
        "return_mean": float(out["returns"].mean()),
        "return_std": float(out["returns"].std()),
        "length_mean": float(out["lengths"].mean()),
        "achievements": {k: float(r) for k, r in zip(out["names"], rates, strict=True)},
        "crafter_score": crafter_score(rates),
        "wall_s": time.perf_counter() - start,
    }


def craftax_section(out: Path, runs: dict[str, list[Path]]) -> list[str]:
    """RESULTS.md lines: per craftax env, each achievement's success rate and the Crafter score of the
    random-policy baselines (`<out>/craftax-*.json`) and of the runs (`runs`: task -> its seeds' folders)
    whose evaluations report achievements, at each run's last evaluation, mean over seeds; and the envs'
    own speed. Empty when there is neither."""
    from mbrl_jax.logging import read_metrics

    columns = []  # (title, env, {metric: value})
    speeds = []
    for path in sorted(out.glob("craftax-*.json")):
        report = json.loads(path.read_text())
        for base in report.get("random", []):
            values = {**base["achievements"], "score": base["crafter_score"], "return": base["return_mean"]}
            columns.append(
                (f"random policy ({base['episodes']} episodes, `{path.name}`)", base["env"], values)
            )
        speeds += [(path.name, report.get("note"), s) for s in report.get("env_speed", [])]
    for task, logdirs in sorted(runs.items()):
        finals = []
        for logdir in logdirs:
            evals = [r for r in read_metrics(logdir) if any(k.startswith(ACHIEVEMENT_PREFIX) for k in r)]
            if evals:
                finals.append(evals[-1])
        if not finals:
            continue
        keys = [k for k in finals[0] if k.startswith(ACHIEVEMENT_PREFIX)]
        values = {k.removeprefix(ACHIEVEMENT_PREFIX): float(np.mean([f[k] for f in finals])) for k in keys}
        values["score"] = float(np.mean([f["eval_crafter_score"] for f in finals]))
        values["return"] = float(np.mean([f["eval_return"] for f in finals]))
        steps = ", ".join(f"{f['env_steps']:,}" for f in finals)
        columns.append((f"`{task}` ({len(finals)} seeds, at {steps} env steps)", None, values))
    if not columns and not speeds:
        return []
    lines = [
        "## Craftax: Crafter's achievements",
        "",
        "Success rate (%) of each achievement: the share of evaluation episodes that unlocked it, at a run's "
        "last evaluation, mean over seeds; score: Crafter's score, exp(mean ln(1 + s_i)) - 1 over the rates "
        "s_i in percent (Hafner, 2021). Random policy: uniformly random actions, every episode run to its "
        "end (`benchmarks/craftax_baseline.py`).",
        "",
    ]
    if columns:
        names = [k for k in columns[0][2] if k not in ("score", "return")]
        lines += [
            "| | " + " | ".join(title for title, _, _ in columns) + " |",
            "| --- |" + " --- |" * len(columns),
            *(
                f"| {k} | " + " | ".join(f"{c[2].get(k, float('nan')):.1f}" for c in columns) + " |"
                for k in names
            ),
            "| **score** | " + " | ".join(f"**{c[2]['score']:.2f}**" for c in columns) + " |",
            "| return | " + " | ".join(f"{c[2]['return']:.2f}" for c in columns) + " |",
            "",
        ]
    if speeds:
        lines += [
            "Envs alone (random actions, jitted scan): "
            + "; ".join(
                f"{s['num_envs']} env{'s' if s['num_envs'] > 1 else ''}: {s['env_steps_per_s']:,.0f} steps/s"
                for _, _, s in speeds
            )
            + f" ({', '.join(sorted({f'`{p}`' for p, _, _ in speeds}))}"
            + "".join(sorted({f"; {n}" for _, n, _ in speeds if n}))
            + ").",
            "",
        ]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default=DEFAULT_ENV, help=f"a craftax env (default {DEFAULT_ENV})")
    parser.add_argument("--num-envs", default="1,16", help="comma-separated env counts timed alone")
    parser.add_argument("--steps", type=int, default=1000, help="steps per timed scan")
    parser.add_argument("--episodes", type=int, default=100, help="random-policy episodes (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", default=None, help="stored in the JSON as given (e.g. a shared machine)")
    parser.add_argument("--out", help="also write the JSON object to this file")
    args = parser.parse_args(argv)
    try:
        reason = (
            unknown_craftax_env(args.env) if is_craftax(args.env) else f"--env={args.env!r} is not craftax:"
        )
        if reason is not None:
            raise ConfigError(reason)
        num_envs = [int(x) for x in args.num_envs.split(",") if x]
        if min(num_envs, default=1) < 1 or args.steps < 1 or args.episodes < 0:
            raise ConfigError(
                f"--num-envs must be ints >= 1, --steps >= 1 and --episodes >= 0; got {args.num_envs!r}, "
                f"{args.steps}, {args.episodes}"
            )
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    speed = []
    for n in num_envs:
        speed.append({"env": args.env, **env_steps_per_s(args.env, n, args.steps, args.seed)})
        print(f"{n} envs: {speed[-1]['env_steps_per_s']:,.0f} env steps/s", file=sys.stderr, flush=True)
    random = [random_baseline(args.env, args.episodes, args.seed)] if args.episodes else []
    for base in random:
        print(
            f"random policy: return {base['return_mean']:.2f}, length {base['length_mean']:.0f}, "
            f"score {base['crafter_score']:.2f}",
            file=sys.stderr,
        )
    report = {"machine": machine_info(), "note": args.note, "env_speed": speed, "random": random}
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
