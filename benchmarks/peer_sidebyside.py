"""mbrl_jax side by side with the official DreamerV3 on the same workloads: learner updates/s while training
(acting included) and the peak resident memory of the training process, as ratios.

    python benchmarks/peer_sidebyside.py --out benchmarks/results/peer-sidebyside-cpu-DATE.json
    python benchmarks/peer_sidebyside.py --pair image64:size1m:330 --pair image64:size12m:600:32

Each pair WORKLOAD:SIZE:SECONDS[:CHUNK_STEPS] runs, one after the other in fresh processes:
- the peer: `../shared/peers/dreamerv3-official.sh WORKLOAD SIZE SECONDS` (beside the project's root; it sets
  up the official code, commit e3f0224, in its own venv and prints its updates/s and peak RSS as JSON);
- mbrl_jax: `runner.train` on the same workload (`PRESETS`: image64 is `--preset rgb64,SIZE`, vector4 is
  `--preset SIZE` on CartPole; both at batch 16 x 64, train ratio 512, 4 envs, float32), a replay of 10,000
  steps, chunks of CHUNK_STEPS env steps (default `--chunk-steps`; fewer where an update takes seconds, so
  that several chunks end within SECONDS) and no evaluation, stopped after SECONDS of wall time. updates/s
  is the learner updates of the chunks after the first divided by the wall time between the first chunk's
  end and the last's (acting included, compile excluded); peak RSS is the process's `ru_maxrss`.

Time only on a quiet machine: both numbers move by 2x with another process on the cores. `load_before` and
`quiet` in the JSON say what the machine was doing; pass `--busy` when you know something else ran.
The JSON (last line of stdout, and `--out`) is what `benchmarks/learning.py` turns into RESULTS.md's table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without install

PEER_SCRIPT = ROOT.parent / "shared" / "peers" / "dreamerv3-official.sh"
PEER = "danijar/dreamerv3@e3f0224"
PRESETS = {"image64": "rgb64,{size}", "vector4": "{size},env.name=CartPole-v1"}
DEFAULT_PAIRS = ("image64:size1m:330", "vector4:size1m:330", "image64:size12m:600:32")
OURS_SETTINGS = {"replay.capacity": 10_000, "run.eval_every": 10**9}


class _TimeUp(Exception):
    """Raised from the chunk callback when the wall-time budget is spent."""


def measure_ours(workload: str, size: str, seconds: float, chunk_steps: int) -> dict[str, Any]:
    """mbrl_jax on `workload` at `size` for about `seconds` (run in a child process: module docstring)."""
    from benchmarks.throughput import split_preset
    from mbrl_jax.config import make_config
    from mbrl_jax.runner import train

    presets, own = split_preset(PRESETS[workload].format(size=size))
    settings = {**OURS_SETTINGS, "run.chunk_steps": chunk_steps, "run.steps": 10**9, **own}
    config = make_config(*presets, **settings)
    updates_per_chunk = config.iterations_per_chunk * config.updates_per_iteration
    start, ends = time.perf_counter(), []

    def on_chunk(records: dict) -> None:
        ends.append(time.perf_counter())
        if ends[-1] - start >= seconds:
            raise _TimeUp

    with tempfile.TemporaryDirectory() as logdir:
        try:
            train(config, logdir, progress=False, handle_signals=False, announce=False, on_chunk=on_chunk)
        except _TimeUp:
            pass
    timed = len(ends) - 1
    if timed < 1:
        raise SystemExit(f"{workload}:{size}: under 2 chunks in {seconds} s; give it more seconds")
    return {
        "preset": PRESETS[workload].format(size=size),
        "settings": settings,
        "chunks_timed": timed,
        "updates_timed": timed * updates_per_chunk,
        "seconds": ends[-1] - ends[0],
        "first_chunk_s": ends[0] - start,  # compile and the first chunk
        "updates_per_s": timed * updates_per_chunk / (ends[-1] - ends[0]),
        "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def measure_peer(workload: str, size: str, seconds: int) -> dict[str, Any]:
    """The official DreamerV3 through the peer script; its JSON line."""
    if not PEER_SCRIPT.exists():
        raise SystemExit(f"the peer script {PEER_SCRIPT} is missing (it lives beside the project's root)")
    command = ["bash", str(PEER_SCRIPT), workload, size, str(seconds)]
    out = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_pair(workload: str, size: str, peer: dict | None, ours: dict) -> dict[str, Any]:
    """One pair's record: both measurements and, with the peer's, the ratios mbrl_jax / official (speed above
    1: mbrl_jax faster; memory above 1: mbrl_jax uses more)."""
    pair = {"workload": workload, "size": size, "peer": peer, "mbrl_jax": ours}
    if peer is not None:
        pair["updates_per_s_ratio"] = ours["updates_per_s"] / peer["updates_per_s"]
        pair["peak_rss_ratio"] = ours["max_rss_mib"] / peer["max_rss_mib"]
    return pair


def parse_pair(text: str, chunk_steps: int) -> tuple[str, str, int, int]:
    """WORKLOAD:SIZE:SECONDS[:CHUNK_STEPS] -> its four values (`chunk_steps` where the text has none)."""
    parts = text.split(":")
    if len(parts) not in (3, 4) or parts[0] not in PRESETS or not all(p.isdigit() for p in parts[2:]):
        raise SystemExit(
            f"--pair {text!r}: expected WORKLOAD:SIZE:SECONDS[:CHUNK_STEPS] with WORKLOAD one of "
            f"{', '.join(PRESETS)}, e.g. image64:size1m:330 or image64:size12m:600:32"
        )
    return parts[0], parts[1], int(parts[2]), int(parts[3]) if len(parts) == 4 else chunk_steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--pair", action="append", help=f"WORKLOAD:SIZE:SECONDS[:CHUNK_STEPS] (default: {DEFAULT_PAIRS})"
    )
    parser.add_argument("--chunk-steps", type=int, default=128, help="mbrl_jax's run.chunk_steps by default")
    parser.add_argument("--ours-only", action="store_true", help="skip the peer (its figures then absent)")
    parser.add_argument("--busy", action="store_true", help="something else ran on the cores: say so")
    parser.add_argument("--out", help="also write the JSON report to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # measure mbrl_jax on this pair here
    args = parser.parse_args(argv)
    pairs = [parse_pair(p, args.chunk_steps) for p in args.pair or DEFAULT_PAIRS]
    if args.child:
        print(json.dumps(measure_ours(*parse_pair(args.child, args.chunk_steps))), flush=True)
        return 0
    import jax

    from benchmarks.report import emit, machine_info

    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE, text=True
    ).stdout.strip()
    load_before = os.getloadavg()
    results = []
    for workload, size, seconds, chunk_steps in pairs:
        print(f"{workload} {size}: peer ...", file=sys.stderr, flush=True)
        peer = None if args.ours_only else measure_peer(workload, size, seconds)
        print(f"{workload} {size}: mbrl_jax ...", file=sys.stderr, flush=True)
        child = [sys.executable, __file__, "--child", f"{workload}:{size}:{seconds}:{chunk_steps}"]
        done = subprocess.run(child, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"mbrl_jax on {workload}:{size} stopped: exit status {done.returncode}")
        ours = json.loads(done.stdout.strip().splitlines()[-1])
        pair = make_pair(workload, size, peer, ours)
        results.append(pair)
        print(json.dumps(pair), file=sys.stderr, flush=True)
    report = {
        "machine": machine_info(),
        "backend": jax.default_backend(),
        "date": time.strftime("%Y-%m-%d"),
        "mbrl_jax_commit": commit,
        "peer": PEER,
        "quiet": not args.busy,
        "load_before": list(load_before),
        "load_after": list(os.getloadavg()),
        "method": __doc__.split("\n\n")[2].strip(),
        "pairs": results,
    }
    print_table(report)
    emit(report, args.out)
    return 0


def print_table(report: dict[str, Any]) -> None:
    for line in table_lines(report):
        print(line, file=sys.stderr)


def table_lines(report: dict[str, Any]) -> list[str]:
    """A side-by-side report as a markdown table (RESULTS.md and stderr). Reads both this script's JSON and
    the hand-assembled first one (`peer-sidebyside-cpu-2026-12-06.json`), which has the same pair fields."""
    lines = [
        "| workload | size | official updates/s | mbrl_jax updates/s | speed ratio | official peak RSS (GiB) "
        "| mbrl_jax peak RSS (GiB) | memory ratio |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for pair in report["pairs"]:
        peer, ours = pair.get("peer"), pair["mbrl_jax"]
        peer_speed = f"{peer['updates_per_s']:.3f}" if peer else "–"
        peer_rss = f"{peer['max_rss_mib'] / 1024:.2f}" if peer else "–"
        speed = f"**{pair['updates_per_s_ratio']:.2f}×**" if peer else "–"
        memory = f"**{pair['peak_rss_ratio']:.2f}×**" if peer else "–"
        lines.append(
            f"| {pair['workload']} | {pair['size']} | {peer_speed} | {ours['updates_per_s']:.3f} | {speed} "
            f"| {peer_rss} | {ours['max_rss_mib'] / 1024:.2f} | {memory} |"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
