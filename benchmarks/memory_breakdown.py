"""Where a run's memory goes, per preset: XLA's compiled memory analysis of the learner update and of the
training chunk, beside the estimate of `mbrl_jax/memory.py` and the measured peak RSS of a short run.

    python benchmarks/memory_breakdown.py        # cartpole, rgb64,size1m and rgb64,size12m
    python benchmarks/memory_breakdown.py --preset rgb64,size1m --no-rss --out memory.json

Each preset is measured in a fresh child process, so that its peak RSS is its own. The child
1. builds the train state (`init`: networks, optimiser, envs, replay prefilled), noting the resident set;
2. lowers and compiles the chunk as a run does (`jax.jit(run_chunk, donate_argnums=0)`) and reads
   `memory_analysis()`: arguments (the state), outputs (the new state and metrics), aliased bytes (outputs
   written into donated arguments), temporaries (XLA's scratch for the program, the backward pass's
   activations among them) and generated code; then hands the compiler's freed memory back to the OS as
   the runner does (`release_freed_heap`), noting the resident set before and after;
3. runs one chunk (`--chunk-steps` env steps: the program's memory does not depend on its length) and takes
   the peak RSS of the process (`ru_maxrss`: import, state, compile and run together);
4. compiles the learner update alone (`agent.learn` on a replay-sampled batch, the state donated as in the
   chunk) for its own analysis, and for an image preset once more with the other convolution form
   (`wm.conv`: `update_other_conv`), which shows what the patch matrices take.
`device_peak_bytes` of a program is what XLA needs at once on a device: arguments + outputs - aliased +
temporaries. `--no-rss` skips steps 1 and 3 (compiles only), for presets whose chunk is too slow to run.
The JSON object is the last line of stdout (and the contents of `--out`); a table goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

DEFAULT_PRESETS = ("cartpole", "rgb64,size1m", "rgb64,size12m")
MIB = 2**20
ANALYSIS_FIELDS = {  # memory_analysis() attribute -> JSON name
    "argument_size_in_bytes": "argument_bytes",
    "output_size_in_bytes": "output_bytes",
    "alias_size_in_bytes": "alias_bytes",
    "temp_size_in_bytes": "temp_bytes",
    "generated_code_size_in_bytes": "code_bytes",
}


def rss_mib() -> float:
    """This process's resident set now, in MiB (Linux /proc; NaN elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def peak_rss_mib() -> float:
    """Largest resident set of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


def analysis(compiled) -> dict[str, int]:
    """A compiled program's memory analysis as bytes, with `device_peak_bytes` (module docstring)."""
    stats = compiled.memory_analysis()
    out = {name: int(getattr(stats, attr)) for attr, name in ANALYSIS_FIELDS.items()}
    out["device_peak_bytes"] = (
        out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"] + out["temp_bytes"]
    )
    return out


def measure(preset: str, chunk_steps: int, rss: bool) -> dict[str, Any]:
    """Every figure of one preset (run in a child process: see the module docstring)."""
    import jax

    from benchmarks.throughput import split_preset
    from mbrl_jax.agents.dreamer import make_dreamer
    from mbrl_jax.config import make_config
    from mbrl_jax.envs import env_spec
    from mbrl_jax.memory import estimate_memory, release_freed_heap
    from mbrl_jax.nets.image import conv_form
    from mbrl_jax.trainer import make_train, sample_learner_batch

    presets, own = split_preset(preset)
    config = make_config(*presets, **{"run.chunk_steps": chunk_steps, **own})
    result: dict[str, Any] = {
        "preset": preset,
        "conv": conv_form(config.wm.conv),
        "chunk_steps": config.env_steps_per_chunk,
        "updates_per_chunk": config.iterations_per_chunk * config.updates_per_iteration,
        "batch": [config.replay.batch_size, config.sample_length],
        "replay_capacity": config.replay.capacity,
        "rss_import_mib": rss_mib(),
    }
    trainer = make_train(config)
    key = jax.random.PRNGKey(config.run.seed)
    if rss:
        state = jax.block_until_ready(jax.jit(trainer.init)(key))
        result["rss_after_init_mib"] = rss_mib()
    else:
        state = jax.eval_shape(trainer.init, key)
    start = time.perf_counter()
    chunk = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state).compile()
    result["chunk_compile_s"] = time.perf_counter() - start
    result["chunk"] = analysis(chunk)
    if rss:
        result["rss_after_compile_mib"] = rss_mib()
        release_freed_heap()  # as the runner does after compiling
        result["rss_after_release_mib"] = rss_mib()
        start = time.perf_counter()
        state, metrics = jax.block_until_ready(chunk(state))
        result["chunk_run_s"] = time.perf_counter() - start
        result["rss_after_chunk_mib"] = rss_mib()
        result["peak_rss_mib"] = peak_rss_mib()  # before the learner update's own compile below
        result["metrics"] = {k: float(v) for k, v in sorted(metrics.items()) if k.startswith("loss")}
    del chunk
    agent = make_dreamer(config, env_spec(config.env.name, config.env.action_repeat))
    abstract = jax.eval_shape(lambda s: s, state)
    batch = jax.eval_shape(
        lambda replay, k: sample_learner_batch(config, replay, k)[0],
        abstract.replay,
        key,
    )
    start = time.perf_counter()
    learn = jax.jit(agent.learn, donate_argnums=0).lower(abstract.agent, batch, key).compile()
    result["update_compile_s"] = time.perf_counter() - start
    result["update"] = analysis(learn)
    if any(len(leaf.shape) == 5 for leaf in jax.tree.leaves(batch["obs"])):  # [B, T, H, W, C] images
        other = "xla" if result["conv"] == "patches" else "patches"
        agent = make_dreamer(config.replace(**{"wm.conv": other}), env_spec(config.env.name))
        learn = jax.jit(agent.learn, donate_argnums=0).lower(abstract.agent, batch, key).compile()
        result["update_other_conv"] = {"conv": other, **analysis(learn)}
    estimate = estimate_memory(config)
    result["estimate"] = {
        "replay_bytes": estimate.replay,
        "params_bytes": estimate.params,
        "optimiser_bytes": estimate.optimiser,
        "other_state_bytes": estimate.other_state,
        "activations_bytes": estimate.activations,
        "runtime_bytes": estimate.runtime,  # the process itself, on CPU (mbrl_jax.memory.CPU_RUNTIME_BYTES)
        "device_bytes": estimate.device,
        "total_bytes": estimate.total,
    }
    return result


ROWS = (  # (label, function of a result -> value or None, format)
    ("conv form", lambda r: r["conv"], "{}"),
    ("chunk: arguments (MiB)", lambda r: r["chunk"]["argument_bytes"] / MIB, "{:,.1f}"),
    ("chunk: outputs (MiB)", lambda r: r["chunk"]["output_bytes"] / MIB, "{:,.1f}"),
    ("chunk: aliased (MiB)", lambda r: r["chunk"]["alias_bytes"] / MIB, "{:,.1f}"),
    ("chunk: temporaries (MiB)", lambda r: r["chunk"]["temp_bytes"] / MIB, "{:,.1f}"),
    ("chunk: generated code (MiB)", lambda r: r["chunk"]["code_bytes"] / MIB, "{:,.2f}"),
    ("chunk: device peak (MiB)", lambda r: r["chunk"]["device_peak_bytes"] / MIB, "{:,.1f}"),
    ("update: arguments (MiB)", lambda r: r["update"]["argument_bytes"] / MIB, "{:,.1f}"),
    ("update: temporaries (MiB)", lambda r: r["update"]["temp_bytes"] / MIB, "{:,.1f}"),
    ("update: device peak (MiB)", lambda r: r["update"]["device_peak_bytes"] / MIB, "{:,.1f}"),
    (
        "update, other conv form: temporaries (MiB)",
        lambda r: r["update_other_conv"]["temp_bytes"] / MIB if "update_other_conv" in r else None,
        "{:,.1f}",
    ),
    ("estimate: replay (MiB)", lambda r: r["estimate"]["replay_bytes"] / MIB, "{:,.1f}"),
    (
        "estimate: params + optimiser (MiB)",
        lambda r: (r["estimate"]["params_bytes"] + r["estimate"]["optimiser_bytes"]) / MIB,
        "{:,.1f}",
    ),
    ("estimate: activations (MiB)", lambda r: r["estimate"]["activations_bytes"] / MIB, "{:,.1f}"),
    ("estimate: XLA's part (MiB)", lambda r: r["estimate"]["device_bytes"] / MIB, "{:,.1f}"),
    ("estimate: total, with the runtime (MiB)", lambda r: r["estimate"]["total_bytes"] / MIB, "{:,.1f}"),
    ("RSS after import (MiB)", lambda r: r.get("rss_import_mib"), "{:,.0f}"),
    ("RSS after init (MiB)", lambda r: r.get("rss_after_init_mib"), "{:,.0f}"),
    ("RSS after compile (MiB)", lambda r: r.get("rss_after_compile_mib"), "{:,.0f}"),
    ("RSS after releasing freed heap (MiB)", lambda r: r.get("rss_after_release_mib"), "{:,.0f}"),
    ("peak RSS, compile + 1 chunk (MiB)", lambda r: r.get("peak_rss_mib"), "{:,.0f}"),
    (
        "estimate / peak RSS",
        lambda r: r["estimate"]["total_bytes"] / MIB / r["peak_rss_mib"] if "peak_rss_mib" in r else None,
        "{:.2f}",
    ),
    ("chunk compile (s)", lambda r: r["chunk_compile_s"], "{:.0f}"),
    ("update compile (s)", lambda r: r["update_compile_s"], "{:.0f}"),
)


def print_table(report: dict[str, Any]) -> None:
    from benchmarks.throughput import print_preset_table

    print_preset_table("mbrl_jax memory breakdown", report, ROWS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        action="append",
        default=None,
        help="a configuration (comma-separated presets, then its own key=value overrides); repeat the flag "
        f"for several (default: {', '.join(DEFAULT_PRESETS)})",
    )
    parser.add_argument(
        "--no-rss",
        action="append",
        default=[],
        metavar="PRESET",
        help="compile this preset only, without running it (no RSS); repeatable",
    )
    parser.add_argument(
        "--chunk-steps", type=int, default=16, help="env steps of the chunk that is run (run.chunk_steps)"
    )
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # measure this preset here, print its JSON
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.chunk_steps, args.child not in args.no_rss)), flush=True)
        return 0
    from benchmarks.report import emit, machine_info

    results, load_before = [], os.getloadavg()
    for preset in args.preset or DEFAULT_PRESETS:
        print(f"measuring {preset} ...", file=sys.stderr, flush=True)
        command = [sys.executable, __file__, "--child", preset, "--chunk-steps", str(args.chunk_steps)]
        command += [a for p in args.no_rss for a in ("--no-rss", p)]
        child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        results.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    report = {
        "machine": machine_info(),
        "settings": {"chunk_steps": args.chunk_steps, "no_rss": args.no_rss},
        # memory does not depend on other processes, times do: the load says how busy the machine was
        "load_average_1min": {"before": load_before[0], "after": os.getloadavg()[0]},
        "results": results,
    }
    print_table(report)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
