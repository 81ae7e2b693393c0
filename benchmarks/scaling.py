"""Seed scaling and device scaling of the compiled training loop, as one JSON object, a table and a PNG.

    python benchmarks/scaling.py                                  # seeds 1,2,4,8,16 and devices 1,2,4
    python benchmarks/scaling.py --seeds 1,8 --devices 1,4 --chunks 2 --out benchmarks/results/scaling.json
    python benchmarks/scaling.py --preset debug --seeds 1,2 --devices 1,2   # a quick smoke run

Seed scaling: S seeds trained as one program (`mbrl_jax.runner.make_programs(config, seeds)`, the train state
vmapped over a seed axis, as `--seeds` runs a sweep), for each S of `--seeds`. Device scaling: one run with
`run.devices=D` (envs, replay and batches split along the mesh axis 'data', parameters replicated), each D in
a fresh process started with `XLA_FLAGS=--xla_force_host_platform_device_count=D` (more devices than the
machine has are virtual: they share its cores). Every measurement compiles, runs one warm-up chunk, then
times `--chunks` chunks with `block_until_ready`; the chunks are the real ones (acting, learning, one
evaluation). Figures: wall seconds per chunk, total env steps/s, wall time per seed, and the ratio of each
wall time to the first row's. The JSON object is the last line of stdout (and the contents of `--out`); the
table goes to stderr; `--plot` saves the PNG.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from benchmarks.report import emit, machine_info  # noqa: E402

DEFAULT_PRESET = "cartpole"
# Short chunks: the benchmark times the same program as a run, only fewer env steps of it.
DEFAULT_OVERRIDES = ("run.chunk_steps=256",)


def parse_counts(text: str, flag: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise ValueError(f"{flag} takes comma-separated positive integers such as 1,2,4, got {text!r}")
    return counts


def measure(config, seeds: list[int] | None, chunks: int) -> dict[str, Any]:
    """Compile, one warm-up chunk, then `chunks` timed chunks of `config` (a sweep of `seeds` if given)."""
    import jax

    from mbrl_jax.runner import make_programs
    from mbrl_jax.trainer import plan_chunk

    def plan(done: int):  # the plan of a whole chunk after `done` chunks, as in a run far from its end
        steps = config.prefill_steps_per_env * config.env.num_envs + done * config.env_steps_per_chunk
        return plan_chunk(config, steps, 2**31 - 1)

    programs = make_programs(config, seeds)
    start = time.perf_counter()
    state = programs.init(programs.key)
    chunk = programs.chunk.lower(state, plan(0)).compile()
    compile_s = time.perf_counter() - start
    state = jax.block_until_ready(chunk(state, plan(0))[0])  # warm-up
    steps0 = int(jax.numpy.ravel(state.env_steps)[0])
    start = time.perf_counter()
    for done in range(1, chunks + 1):
        state = chunk(state, plan(done))[0]
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    members = 1 if seeds is None else len(seeds)
    steps = (int(jax.numpy.ravel(state.env_steps)[0]) - steps0) * members
    return {
        "compile_s": compile_s,
        "chunk_s": seconds / chunks,
        "env_steps_per_s": steps / seconds,
        "chunk_s_per_seed": seconds / chunks / members,
    }


def make_bench_config(preset: str, overrides: list[str], **extra):
    from mbrl_jax.config import make_config, parse_overrides

    return make_config(*[p for p in preset.split(",") if p], **parse_overrides(overrides), **extra)


def seed_scaling(preset: str, overrides: list[str], counts: list[int], chunks: int) -> list[dict]:
    config = make_bench_config(preset, overrides)
    rows = []
    for count in counts:
        print(f"seeds: {count} ...", file=sys.stderr, flush=True)
        rows.append({"seeds": count, **measure(config, list(range(count)), chunks)})
    return rows


def device_scaling(preset: str, overrides: list[str], counts: list[int], chunks: int) -> list[dict]:
    """Each device count in its own process: jax fixes the CPU device count when it starts."""
    rows = []
    for count in counts:
        print(f"devices: {count} ...", file=sys.stderr, flush=True)
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}"}
        command = [sys.executable, __file__, "--worker-devices", str(count), "--preset", preset]
        command += ["--chunks", str(chunks), *overrides]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the {count}-device measurement failed:\n{done.stderr[-3000:]}")
        rows.append({"devices": count, **json.loads(done.stdout.strip().splitlines()[-1])})
    return rows


def with_ratios(rows: list[dict]) -> list[dict]:
    base = rows[0]["chunk_s"]
    return [{**row, "wall_ratio": row["chunk_s"] / base} for row in rows]


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True)
    for key, label in (("seeds", "seeds (vmapped)"), ("devices", "devices (run.devices)")):
        rows = report[f"{key}_scaling"]
        if not rows:
            continue
        table = Table(title=f"{report['preset']}: {label}")
        for column in (key, "s / chunk", "wall × first row", "env steps/s", "s / chunk / seed", "compile s"):
            table.add_column(column, justify="right")
        for r in rows:
            table.add_row(
                str(r[key]),
                f"{r['chunk_s']:.2f}",
                f"{r['wall_ratio']:.2f}",
                f"{r['env_steps_per_s']:.0f}",
                f"{r['chunk_s_per_seed']:.2f}",
                f"{r['compile_s']:.1f}",
            )
        console.print(table)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(k, report[f"{k}_scaling"]) for k in ("seeds", "devices") if report[f"{k}_scaling"]]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, rows) in zip(axes[0], panels, strict=True):
        xs = [r[key] for r in rows]
        ax.plot(xs, [r["wall_ratio"] for r in rows], "o-", label="wall time / first row")
        if key == "seeds":  # S seeds are S times the work: below the line is what vmapping gains
            ax.plot(xs, [x / xs[0] for x in xs], "--", color="grey", label="S x one seed (no gain)")
        else:  # the same work split: D real devices would ideally take 1/D
            ax.plot(xs, [xs[0] / x for x in xs], "--", color="grey", label="ideal on real devices (1/D)")
            ax.axhline(1.0, color="grey", lw=0.8, label="one device")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel(key)
        ax.set_ylabel("wall time per chunk, × first row")
        ax.set_title(f"{report['preset']}: {key}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", default=DEFAULT_PRESET, help="comma-separated presets (default: cartpole)"
    )
    parser.add_argument(
        "--seeds", default="1,2,4,8,16", help="seed counts to time, comma-separated ('' none)"
    )
    parser.add_argument("--devices", default="1,2,4", help="device counts to time, comma-separated ('' none)")
    parser.add_argument("--chunks", type=int, default=1, help="timed chunks after one warm-up chunk")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--plot", help="save the scaling plot to this PNG")
    parser.add_argument("--worker-devices", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help=f"config overrides (default: {' '.join(DEFAULT_OVERRIDES)})",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = args.overrides or list(DEFAULT_OVERRIDES)
    if args.worker_devices is not None:  # a device-scaling child: one measurement, JSON on stdout
        config = make_bench_config(args.preset, overrides, **{"run.devices": args.worker_devices})
        print(json.dumps(measure(config, None, args.chunks)), flush=True)
        return 0
    from mbrl_jax.config import ConfigError

    try:
        if args.chunks < 1:
            raise ValueError(f"--chunks must be >= 1, got {args.chunks}")
        seed_counts = parse_counts(args.seeds, "--seeds") if args.seeds else []
        device_counts = parse_counts(args.devices, "--devices") if args.devices else []
        make_bench_config(args.preset, overrides)  # bad presets or overrides fail here, before any compile
        for count in device_counts:  # and so do device counts that cannot split the envs and batches
            make_bench_config(args.preset, overrides, **{"run.devices": count})
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"preset": args.preset, "overrides": overrides, "chunks": args.chunks}
    report["seeds_scaling"] = (
        with_ratios(seed_scaling(args.preset, overrides, seed_counts, args.chunks)) if seed_counts else []
    )
    report["devices_scaling"] = (
        with_ratios(device_scaling(args.preset, overrides, device_counts, args.chunks))
        if device_counts
        else []
    )
    report["machine"] = machine_info()
    print_table(report)
    if args.plot:
        plot(report, Path(args.plot))
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
