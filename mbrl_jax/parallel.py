"""Many seeds in one compiled program, and devices: the seed list of a sweep, its run-folder layout and its
aggregate; the device mesh and the train state's shardings.

Devices (`run.devices=D`): a run lays its envs, replay and sampled batch along a mesh axis 'data' (parameters,
optimiser and counters replicated). The program stays the single-device program: `jax.jit` with those
shardings lets XLA partition it (GSPMD), so the env steps, the replay and each update's batch are split over
the devices and the gradient sums become all-reduces; a run on D devices computes what it computes on one,
up to the order of those sums. A sweep lays its seed axis along a mesh axis 'seed' instead (seeds divisible
by D).

A sweep of seeds s_1..s_S is one train state with a leading seed axis ([S, ...] on every leaf), built by
`jax.vmap(trainer.init)` over the keys `PRNGKey(s_i)` and advanced by `jax.vmap(trainer.run_chunk)`; seed s_i
starts from the same key as a single run with `run.seed=s_i`. Its folder:

    <logdir>/config.yaml       the sweep's config (run.seed = the first seed)
    <logdir>/sweep.json        {"seeds": [...]}
    <logdir>/checkpoints/      one checkpoint of the whole sweep per save
    <logdir>/seed<s>/          each seed's config.yaml (run.seed = s), metrics, curves.png, diverged.json
    <logdir>/aggregate.json    across seeds: final evaluation return (mean, IQM, bootstrap 95% CI) and curve
    <logdir>/curves.png        every seed's evaluation curve with their mean and band
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mbrl_jax.config import UINT32_MAX, Config, ConfigError

if TYPE_CHECKING:  # jax is imported only when a mesh is built, so the command line answers --help at once
    from jax.sharding import Mesh

SWEEP_FILE = "sweep.json"
DIVERGED_FILE = "diverged.json"
AGGREGATE_FILE = "aggregate.json"
MAX_SEEDS = 4096
_RANGE = re.compile(r"^(\d+)-(\d+)$")


def parse_seeds(text: str) -> list[int]:
    """'0-7' -> [0, ..., 7]; '0,3,5' -> [0, 3, 5]; '1-3,9' -> [1, 2, 3, 9]; ConfigError naming a bad part.

    Every part is read and the seeds are counted and bounded before any list is built, so a refusal costs
    time in the length of the text, not in the number of seeds it names."""
    parts: list[tuple[int, int]] = []
    count = 0
    for part in (p.strip() for p in str(text).split(",")):
        match = _RANGE.match(part)
        if match:
            low, high = int(match[1]), int(match[2])
            if high < low:
                raise ConfigError(f"seeds={text!r}: the range {part!r} runs backwards; write {high}-{low}")
        elif part.isdigit():
            low = high = int(part)
        else:
            raise ConfigError(
                f"seeds={text!r}: {part!r} is not a seed; allowed: non-negative integers and ranges, "
                "e.g. 0-7 or 0,3,5"
            )
        if high > UINT32_MAX:
            raise ConfigError(f"seeds={text!r}: {high} is outside 0 to {UINT32_MAX} (a uint32 PRNG seed)")
        parts.append((low, high))
        count += high - low + 1
        if count > MAX_SEEDS:
            raise ConfigError(
                f"seeds={text!r} names more than {MAX_SEEDS} seeds; at most {MAX_SEEDS} in a sweep"
            )
    return check_seeds([seed for low, high in parts for seed in range(low, high + 1)])


def check_seeds(seeds: Sequence[int]) -> list[int]:
    """The seeds as a list of ints, refused (ConfigError) when empty, too many, repeated or out of uint32
    range; linear in the number of seeds."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("seeds is empty; give at least one seed")
    if len(seeds) > MAX_SEEDS:
        raise ConfigError(f"{len(seeds)} seeds in one sweep; at most {MAX_SEEDS}")
    seen: set[int] = set()
    repeated: set[int] = set()
    for seed in seeds:
        (repeated if seed in seen else seen).add(seed)
    if repeated:
        raise ConfigError(
            f"seeds {sorted(repeated)} are given more than once; each seed runs once in a sweep"
        )
    bad = [s for s in seeds if not 0 <= s <= UINT32_MAX]
    if bad:
        raise ConfigError(f"seeds {bad} are outside 0 to {UINT32_MAX} (a uint32 PRNG seed)")
    return seeds


def seed_logdir(logdir: str | Path, seed: int) -> Path:
    return Path(logdir) / f"seed{seed}"


def stored_seeds(logdir: str | Path) -> list[int] | None:
    """The seeds of the sweep stored in `logdir`, or None when it holds no sweep."""
    path = Path(logdir) / SWEEP_FILE
    return json.loads(path.read_text())["seeds"] if path.is_file() else None


def write_aggregate(logdir: str | Path, seeds: Sequence[int]) -> dict:
    """`aggregate.json` and `curves.png` of the sweep in `logdir` from its seeds' metrics; returns the dict.

    Seeds that turned non-finite (their `diverged.json`) are listed apart and left out of the statistics.
    The curve statistics are taken at the env steps every remaining seed evaluated at (they all share them).
    """
    from mbrl_jax.logging import read_metrics
    from mbrl_jax.plotting import metric_series, plot_curves
    from mbrl_jax.stats import bootstrap_mean_ci, iqm

    logdir = Path(logdir)
    diverged = {
        s: json.loads(p.read_text()) for s in seeds if (p := seed_logdir(logdir, s) / DIVERGED_FILE).is_file()
    }
    live = [s for s in seeds if s not in diverged]
    series = {s: metric_series(read_metrics(seed_logdir(logdir, s)), "eval_return") for s in live}
    series = {s: v for s, v in series.items() if len(v[0])}
    out: dict = {"seeds": list(seeds), "diverged": {str(s): d for s, d in diverged.items()}}
    if series:
        common = sorted(set.intersection(*(set(steps.tolist()) for steps, _ in series.values())))
        curves = np.array(
            [
                [dict(zip(steps.tolist(), values.tolist(), strict=True))[x] for x in common]
                for steps, values in series.values()
            ]
        )  # [S, T]
        mean, low, high = bootstrap_mean_ci(curves)
        finals = curves[:, -1]
        out["final_eval_return"] = {
            "env_steps": int(common[-1]),
            "per_seed": {str(s): float(v) for s, v in zip(series, finals, strict=True)},
            "mean": float(finals.mean()),
            "iqm": iqm(finals),
            "ci95": [float(low[-1]), float(high[-1])],
        }
        out["curve"] = {
            "env_steps": [int(x) for x in common],
            "mean": mean.tolist(),
            "iqm": [iqm(curves[:, t]) for t in range(curves.shape[1])],
            "ci95_low": low.tolist(),
            "ci95_high": high.tolist(),
        }
        plot_curves([seed_logdir(logdir, s) for s in series], logdir / "curves.png", label="eval_return")
    (logdir / AGGREGATE_FILE).write_text(json.dumps(out, indent=1))
    return out


def initialize_hosts(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """Joins this process to a multi-host run with `jax.distributed.initialize` (before any other jax call).

    Arguments left None come from the environment, as `jax.distributed.initialize` reads it (on a TPU pod
    slice and under SLURM nothing needs to be given). On CPU hosts the cross-process collectives go through
    gloo. Every process then runs the same program over the global device mesh; only process 0 writes logs.
    """
    import jax

    if jax.config.jax_platforms in ("cpu", None) or os.environ.get("JAX_PLATFORMS") == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def wait_for_all_processes(name: str) -> None:
    """A barrier of every process of a multi-host run (no-op with one process), through the coordination
    service rather than a collective: a collective waits only 30 s for the other processes to join it, less
    than one process may spend compiling while another reads the program from the cache."""
    import jax
    import orbax.checkpoint as ocp

    if jax.process_count() > 1:
        ocp.multihost.sync_global_processes(name, processes=set(range(jax.process_count())))


def check_devices(config: Config, seeds: Sequence[int] | None = None) -> None:
    """ConfigError for a sweep that cannot be one program (an envpool sweep over several devices), or when
    `run.devices` exceeds the devices JAX sees, does not divide a sweep's seeds, or (with several processes)
    leaves out another process's devices. A sweep of a host env (Gymnasium, envpool on the host loop) is one
    program of the host loop, each seed with its own envs (`mbrl_jax.host_loop`), on one device (the
    config's own check refuses `run.devices` > 1 for a host env)."""
    import jax

    from mbrl_jax.envs import is_envpool

    wanted, present = config.run.devices, jax.devices()
    name = config.env.name
    if seeds is not None and is_envpool(name) and wanted > 1:
        raise ConfigError(
            f"run.devices={wanted} with env.name={name!r}: a sweep's envpool pools step on the host "
            "that made them, so an envpool sweep runs on one device; set run.devices=1"
        )
    if jax.process_count() > 1 and wanted != len(present):
        raise ConfigError(
            f"run.devices={wanted}, but {jax.process_count()} processes hold {len(present)} devices in all; "
            f"a multi-host run uses every device: set run.devices={len(present)}"
        )
    if wanted > len(present):
        raise ConfigError(
            f"run.devices={wanted} but JAX sees {len(present)} {present[0].platform} device(s); allowed: 1 "
            f"to {len(present)} (on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N makes N)"
        )
    if seeds is not None and len(seeds) % wanted:
        raise ConfigError(
            f"run.devices={wanted} must divide the number of seeds ({len(seeds)}): a sweep puts as many "
            "seeds on each device"
        )


def make_mesh(config: Config, seeds: Sequence[int] | None = None) -> Mesh | None:
    """The `jax.sharding.Mesh` of `run.devices` devices: axis 'data' for a run, 'seed' for a sweep; None for
    one device."""
    import jax
    from jax.sharding import Mesh

    if config.run.devices == 1:
        return None
    devices = np.array(jax.devices()[: config.run.devices])
    return Mesh(devices, ("data",) if seeds is None else ("seed",))


def state_shardings(state, mesh: Mesh):
    """NamedShardings for a TrainState (or its shapes) on `mesh`: on a 'seed' mesh every leaf is split along
    its leading seed axis; on a 'data' mesh the env-batched fields (env states, last timesteps, actions,
    policy carries, replay buffers) along their env axis, and the rest (agent, keys, counters) replicated."""
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    if "seed" in mesh.axis_names:
        return jax.tree.map(lambda _: NamedSharding(mesh, P("seed")), state)
    split, whole = NamedSharding(mesh, P("data")), NamedSharding(mesh, P())
    every = lambda tree, sharding: jax.tree.map(lambda _: sharding, tree)  # noqa: E731
    return state.replace(
        key=whole,
        env_steps=whole,
        updates=whole,
        env_state=every(state.env_state, split),
        timestep=every(state.timestep, split),
        prev_action=split,
        policy=every(state.policy, split),
        replay=every(state.replay, whole).replace(data=every(state.replay.data, split)),
        agent=every(state.agent, whole),
    )
