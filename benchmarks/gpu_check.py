"""The GPU check: one command for the first session lent a GPU, at most 8 minutes on one GPU, writing one
archive of JSON.

    python benchmarks/gpu_check.py --out gpu-check.tar.gz                 # on the GPU machine
    python benchmarks/gpu_check.py --tiny --out /tmp/gpu-check.tar.gz     # a dry run (CPU, tiny settings)

Each item runs in its own child process (so each peak memory is its own) under its own time limit:
  rgb64-size1m-patches, rgb64-size1m-xla, rgb64-size12m-patches, rgb64-size12m-xla: the 64 x 64 x 3 image
    workload (`--preset rgb64,SIZE`) with each convolution form (`wm.conv`): learner updates/s and env
    steps/s of training chunks (acting included), compile seconds, peak device memory and peak RSS;
  pong-seeds1, pong-seeds5: `atari100k` on envpool Pong end to end, one seed and five seeds in one program:
    env steps/s after the compile, compile seconds, peak memory.
The archive holds one `<item>.json` per item and `summary.json` (machine, settings, each item's status and
wall time). An item that fails or runs out of time is recorded with the end of its error output, and the
others go on. Peak device memory is `memory_stats()["peak_bytes_in_use"]` where the backend reports it (GPU),
else null.

The device image lacks some of this project's packages (gymnax, distrax, envpool, ...):
`benchmarks/pack_device_wheels.py` packs them for it (see its docstring for the command that installs them
there). Timed chunks are measured as `benchmarks/scaling.py` measures them (compile, one warm-up chunk,
then timed chunks with block_until_ready).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

# item -> (presets, overrides, seeds, seconds allowed); the limits add up to under 8 minutes
ITEMS: dict[str, tuple[list[str], dict[str, Any], list[int] | None, int]] = {
    "rgb64-size1m-patches": (["rgb64", "size1m"], {"wm.conv": "patches"}, None, 50),
    "rgb64-size1m-xla": (["rgb64", "size1m"], {"wm.conv": "xla"}, None, 50),
    "rgb64-size12m-patches": (["rgb64", "size12m"], {"wm.conv": "patches"}, None, 70),
    "rgb64-size12m-xla": (["rgb64", "size12m"], {"wm.conv": "xla"}, None, 70),
    "pong-seeds1": (["atari100k"], {}, [0], 70),
    "pong-seeds5": (["atari100k"], {}, [0, 1, 2, 3, 4], 110),
}
BUDGET_S = 8 * 60
# Every item: chunks of 64 env steps (32 updates at the image workload's ratio), timed after a warm-up.
CHUNK = {"run.chunk_steps": 64, "replay.capacity": 20_000}
# --tiny: the same items at the debug preset's sizes, for a dry run on a CPU
TINY = {
    "replay.prefill": 64,
    "replay.batch_size": 2,
    "replay.batch_length": 8,
    "replay.capacity": 1_000,
    "run.chunk_steps": 16,
    "run.eval_episodes": 1,
    "run.eval_steps": 8,
    "replay.train_ratio": 32.0,
}


def item_config(name: str, tiny: bool):
    from mbrl_jax.config import make_config

    presets, overrides, _, _ = ITEMS[name]
    if tiny:
        presets = [p for p in presets if not p.startswith("size")] + ["debug"]
        env = (
            {"env.name": "envpool:Pong-v5"}
            if name.startswith("pong")
            else {"env.name": "Breakout-MinAtar-rgb64"}
        )
        return make_config(*presets, **{**overrides, **env, **TINY, "wm.depth": 2})
    return make_config(*presets, **{**overrides, **CHUNK})


def measure_item(name: str, tiny: bool, chunks: int) -> dict[str, Any]:
    """One item, in this process: `benchmarks/scaling.py`'s measurement plus updates/s and peak memory."""
    import jax

    from benchmarks.scaling import measure
    from benchmarks.throughput import peak_rss_mb

    config = item_config(name, tiny)
    seeds = ITEMS[name][2]
    result = measure(config, seeds, chunks)
    members = 1 if seeds is None else len(seeds)
    updates = config.iterations_per_chunk * config.updates_per_iteration * members
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return {
        "item": name,
        "config": {"presets": ITEMS[name][0], "seeds": seeds, "tiny": tiny, **config.flat()},
        **result,
        "updates_per_s": updates / result["chunk_s"],
        "peak_device_mib": None if peak is None else peak / 2**20,
        "peak_rss_mib": peak_rss_mb(),
        "device": jax.devices()[0].device_kind,
        "platform": jax.devices()[0].platform,
    }


def run_item(name: str, tiny: bool, chunks: int, limit_s: float) -> dict[str, Any]:
    """`name` in a child process under `limit_s` seconds: its JSON, or its status and its output's end."""
    command = [
        sys.executable,
        __file__,
        "--item",
        name,
        "--chunks",
        str(chunks),
        *(["--tiny"] if tiny else []),
    ]
    start = time.monotonic()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired as err:
        tail = (err.stderr or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {
            "item": name,
            "status": "timeout",
            "limit_s": limit_s,
            "wall_s": time.monotonic() - start,
            "error": tail,
        }
    wall = time.monotonic() - start
    if done.returncode != 0:
        return {"item": name, "status": "failed", "wall_s": wall, "error": done.stderr[-3000:]}
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "status": "ok", "wall_s": wall}


def write_archive(path: Path, files: dict[str, Any]) -> Path:
    """A .tar.gz of `{name: JSON object}`, each as `<name>.json`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as archive:
        for name, obj in files.items():
            data = json.dumps(obj, indent=1, default=str).encode()
            info = tarfile.TarInfo(f"{name}.json")
            info.size, info.mtime = len(data), int(time.time())
            archive.addfile(info, io.BytesIO(data))
    return path


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu-check.tar.gz", help="the archive to write")
    parser.add_argument("--items", default=",".join(ITEMS), help="comma-separated items (default: all)")
    parser.add_argument("--tiny", action="store_true", help="tiny settings: a dry run on a CPU")
    parser.add_argument("--chunks", type=int, default=2, help="timed chunks per item after a warm-up")
    parser.add_argument("--item", help=argparse.SUPPRESS)  # a child process: measure one item, print JSON
    args = parser.parse_args(argv)
    items = [i for i in args.items.split(",") if i]
    unknown = [i for i in items if i not in ITEMS]
    if unknown or not items:
        parser.error(f"--items {args.items!r}: unknown {unknown}; allowed: {', '.join(ITEMS)}")
    if args.chunks < 1:
        parser.error(f"--chunks {args.chunks} must be >= 1")
    args.items = items
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.item:
        print(json.dumps(measure_item(args.item, args.tiny, args.chunks)), flush=True)
        return 0
    start = time.monotonic()
    results = {}
    for name in args.items:
        limit = ITEMS[name][3] * (4 if args.tiny else 1)  # a CPU compiles the tiny programs slower
        print(f"gpu_check: {name} (at most {limit} s) ...", file=sys.stderr, flush=True)
        results[name] = run_item(name, args.tiny, args.chunks, limit)
        print(
            f"gpu_check: {name}: {results[name]['status']} in {results[name]['wall_s']:.0f} s",
            file=sys.stderr,
            flush=True,
        )
    summary = {
        "items": {
            n: {
                k: r.get(k)
                for k in (
                    "status",
                    "wall_s",
                    "updates_per_s",
                    "env_steps_per_s",
                    "compile_s",
                    "peak_device_mib",
                    "peak_rss_mib",
                )
            }
            for n, r in results.items()
        },
        "tiny": args.tiny,
        "wall_s": time.monotonic() - start,
        "budget_s": BUDGET_S,
        "machine": {"python": platform.python_version(), "host": platform.node()},
    }
    out = write_archive(Path(args.out), {"summary": summary, **results})
    print(json.dumps(summary))
    print(f"gpu_check: wrote {out}", file=sys.stderr)
    return 0 if all(r["status"] == "ok" for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
