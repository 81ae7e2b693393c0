"""TD-MPC2 throughput: MPPI planning steps/s (act calls over num_envs) and learner updates/s, as JSON.

    python benchmarks/tdmpc2_throughput.py                                  # --preset tdmpc2 (5M model)
    python benchmarks/tdmpc2_throughput.py --preset tdmpc2 --preset tdmpc2,tdmpc2-1m --num-envs 1,8
    python benchmarks/tdmpc2_throughput.py --preset tdmpc2 tdmpc2.num_samples=256 --out bench.json

Each `--preset` value is one configuration (comma-separated presets left to right); trailing key=value
overrides apply to every one. `act` is the agent's jitted act (one MPPI plan per env: iterations x samples x
horizon latent steps) on a batch of `num_envs` observations; `learn` is one jitted update (model + Q, policy
prior, target EMA) on a replay-shaped batch of random data. Both are timed as the best of `--repeats` calls
after a warm-up call, with `block_until_ready`. The JSON object is the last line of stdout (and `--out`); a
table goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks.report import emit, machine_info  # noqa: E402
from mbrl_jax.agents import make_agent  # noqa: E402
from mbrl_jax.config import ConfigError, make_config, parse_overrides  # noqa: E402
from mbrl_jax.envs import env_spec  # noqa: E402


def best_time(fn, *args, repeats: int) -> tuple[float, float]:
    """(first call incl. compilation, best of `repeats` later calls), seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return first, best


def random_batch(config, spec, key) -> dict:
    """A replay-shaped batch [B, horizon + 1, ...] of random data (no episode starts inside)."""
    B, T, A = config.replay.batch_size, config.sample_length, spec.action_dim
    k_obs, k_act, k_rew = jax.random.split(key, 3)
    obs = {k: jax.random.normal(k_obs, (B, T, *shape)) for k, shape in spec.obs_shapes.items()}
    return {
        "obs": obs,
        "action": jax.random.uniform(k_act, (B, T, A), minval=-1, maxval=1),
        "reward": jax.random.normal(k_rew, (B, T)),
        "is_first": jnp.zeros((B, T), bool).at[:, 0].set(True),
        "is_last": jnp.zeros((B, T), bool),
        "is_terminal": jnp.zeros((B, T), bool),
    }


def measure(presets: list[str], overrides: dict, num_envs: list[int], repeats: int) -> dict:
    config = make_config(*presets, **overrides)
    spec = env_spec(config.env.name)
    agent = make_agent(config, spec)
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))
    t = config.tdmpc2
    result = {
        "preset": ",".join(presets),
        "env": config.env.name,
        "num_params": sum(x.size for x in jax.tree.leaves(state.params)),
        "plan": f"{t.iterations} it x {t.num_samples} samples x horizon {t.horizon}",
        "act": [],
    }
    act = jax.jit(agent.act, static_argnames="mode")
    for n in num_envs:
        obs = {k: jnp.zeros((n, *shape)) for k, shape in spec.obs_shapes.items()}
        args = (state, agent.initial_carry(n), obs, jnp.zeros((n, spec.action_dim)), jnp.ones(n, bool))
        first, best = best_time(act, *args, jax.random.PRNGKey(1), repeats=repeats)
        result["act"].append(
            {"num_envs": n, "compile_s": first - best, "act_ms": 1e3 * best, "plan_steps_per_s": n / best}
        )
    batch = random_batch(config, spec, jax.random.PRNGKey(2))
    learn = jax.jit(agent.learn)
    first, best = best_time(learn, state, batch, jax.random.PRNGKey(3), repeats=repeats)
    result.update(
        batch_size=config.replay.batch_size,
        learn_compile_s=first - best,
        learner_update_ms=1e3 * best,
        updates_per_s=1.0 / best,
    )
    return result


def print_table(report: dict) -> None:
    print(
        f"{'preset':<24}{'params':>10}{'envs':>6}{'act ms':>10}{'plans/s':>10}{'update ms':>11}",
        file=sys.stderr,
    )
    for r in report["results"]:
        for a in r["act"]:
            print(
                f"{r['preset']:<24}{r['num_params']:>10}{a['num_envs']:>6}{a['act_ms']:>10.1f}"
                f"{a['plan_steps_per_s']:>10.1f}{r['learner_update_ms']:>11.1f}",
                file=sys.stderr,
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", action="append", default=[], help="comma-separated presets (repeatable)")
    parser.add_argument("--num-envs", default="1,8", help="comma-separated batch sizes of act")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    try:
        overrides = parse_overrides(args.overrides)
        num_envs = [int(n) for n in args.num_envs.split(",")]
        presets = [p.split(",") for p in (args.preset or ["tdmpc2"])]
        for p in presets:
            make_config(*p, **overrides)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report = {"machine": machine_info(), "results": []}
    for p in presets:
        print(f"measuring {','.join(p)} ...", file=sys.stderr, flush=True)
        report["results"].append(measure(p, overrides, num_envs, args.repeats))
    print_table(report)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
