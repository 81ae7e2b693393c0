"""An estimate of the device memory a run needs, checked against what the device has before anything is
allocated (a batch size that cannot fit is refused in a second, not after a 20 s compile and an OOM trace).

The train state (replay, parameters, optimiser, env states) is sized exactly with `jax.eval_shape`, which
traces `init` without allocating. The activations of one learner update are estimated: the update keeps, per
replayed start (batch_size * batch_length of them), the world model's step and `imag_horizon + 1` imagined
steps for the backward pass. The per-step coefficients below were fitted to XLA's own figure
(`compiled.memory_analysis().temp_size_in_bytes` of a chunk) over batch, length, horizon, deter, units,
latent and bin sizes, and err on the high side by about 10-20%; `tests/test_memory.py` keeps them honest.
The image encoder and decoder are fitted the same way, per convolution form (`wm.conv`), from the temporaries
of their gradient at 64 x 64 x 3, depths 4 and 16, whole and run over the batch in chunks as the learner's
batch is (`mbrl_jax.nets.image.image_activation_floats`; benchmarks/memory_breakdown.py).

Where the device is the host (the CPU backend) the process itself also counts: the imported libraries, XLA's
compiler and the compiled programs (`runtime`, measured as peak RSS less the state and XLA's temporaries).
"""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING

import jax
import numpy as np

from mbrl_jax.agents import AGENTS
from mbrl_jax.errors import ConfigError

if TYPE_CHECKING:
    from mbrl_jax.config import Config

GIB = 2**30
# Resident memory of a CPU process beyond its state and XLA's temporaries: the imported libraries (0.4 GiB)
# and XLA's compiler at work (0.9 GiB for cartpole's chunk, 1.1 GiB for rgb64's; handed back to the OS after
# compiling, `release_freed_heap`, so a peak of its own before the run: cartpole's and rgb64,size1m's peak RSS
# is their compile), measured with benchmarks/memory_breakdown.py (results/memory-breakdown-cpu.json). 1.5 GiB
# puts the total 3-25% above the three presets' peak RSS there (cartpole, rgb64,size1m, rgb64,size12m).
CPU_RUNTIME_BYTES = 3 * GIB // 2


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    """Bytes, by what holds them."""

    replay: int
    params: int  # parameters of every network (and the slow critic)
    optimiser: int
    other_state: int  # env states, policy carry, keys, counters
    activations: int  # kept for the backward pass of one update, plus the gradients
    runtime: int = 0  # the process itself where the device is the host (CPU_RUNTIME_BYTES), else 0

    @property
    def device(self) -> int:
        """What XLA allocates: the state and one update's temporaries."""
        return self.replay + self.params + self.optimiser + self.other_state + self.activations

    @property
    def total(self) -> int:
        return self.device + self.runtime

    def describe(self) -> str:
        parts = {
            "replay": self.replay,
            "parameters": self.params,
            "optimiser": self.optimiser,
            "activations of one update": self.activations,
        }
        if self.runtime:
            parts["jax and XLA's compiler in the process"] = self.runtime
        return ", ".join(f"{name} {_gib(size)}" for name, size in parts.items())


def _gib(size: float) -> str:
    return f"{size / GIB:.2f} GiB" if size >= GIB else f"{size / 2**20:.1f} MiB"


def _nbytes(tree) -> int:
    return int(sum(np.prod(x.shape, dtype=np.int64) * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def activation_floats_per_start(config: Config, obs_shapes: dict[str, tuple[int, ...]]) -> int | None:
    """float32 values one update keeps per replayed start for the backward pass: the agent's own estimate
    (`register_agent(..., memory=)`), or None where the agent has none."""
    estimate = AGENTS[config.agent].memory
    return None if estimate is None else estimate(config, obs_shapes)


def abstract_state(config: Config):
    """The shapes of a run's train state (`jax.ShapeDtypeStruct` leaves); allocates nothing."""
    from mbrl_jax.envs import resolve_loop  # late imports: these pull in the agent and the envs

    if resolve_loop(config.env.name, config.env.loop) == "host":
        from mbrl_jax.host_loop import make_host_train

        return make_host_train(config).abstract_state(jax.random.PRNGKey(0))
    from mbrl_jax.trainer import make_train

    return jax.eval_shape(make_train(config).init, jax.random.PRNGKey(0))


def estimate_memory(config: Config) -> MemoryEstimate:
    """Device memory of a run of `config`; allocates nothing (shapes come from `jax.eval_shape`)."""
    state = abstract_state(config)
    replay, params = _nbytes(state.replay), _nbytes(state.agent.params)
    agent = _nbytes(state.agent)
    starts = config.replay.batch_size * config.replay.batch_length
    obs_shapes = {k: v.shape[2:] for k, v in state.replay.data["obs"].items()}
    per_start = activation_floats_per_start(config, obs_shapes)
    # + one gradient per parameter; an agent without an estimate counts its gradients only
    activations = 4 * starts * (per_start or 0) + params
    return MemoryEstimate(
        replay=replay,
        params=params,
        optimiser=agent - params,
        other_state=_nbytes(state) - replay - agent,
        activations=activations,
        runtime=CPU_RUNTIME_BYTES if jax.default_backend() == "cpu" else 0,
    )


def device_memory(device: jax.Device | None = None) -> int | None:
    """Bytes the device can allocate: the allocator's limit on an accelerator, physical memory on a CPU
    (None when unknown)."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"])
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def release_freed_heap() -> bool:
    """Hands the pages the C allocator holds free back to the OS (glibc's `malloc_trim`). XLA's compiler
    frees its working memory after a compile (about 1 GiB for the rgb64 chunk), but glibc keeps those pages
    in the process, where they add to the peak beside the buffers the program allocates when it runs; the
    runner calls this after compiling. True where it ran; False off glibc (macOS, musl), where it does
    nothing."""
    import ctypes

    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True


def replay_step_bytes(config: Config) -> dict[str, int]:
    """Bytes one stored env step takes in the replay, per field ("obs/image", "action", ...), from shapes."""
    state = abstract_state(config)
    leaves = jax.tree_util.tree_flatten_with_path(state.replay.data)[0]
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): int(
            np.prod(x.shape[2:], dtype=np.int64) * x.dtype.itemsize
        )
        for path, x in leaves
    }


def describe_replay(config: Config, seeds: int = 1) -> str:
    """One line for the console: the replay's size and what a step holds."""
    per_step = replay_step_bytes(config)
    steps = config.capacity_per_env * config.env.num_envs
    total = steps * sum(per_step.values()) * seeds
    obs = ", ".join(f"{k} {b} B" for k, b in per_step.items() if k.startswith("obs"))
    sweep = f" x {seeds} seeds" if seeds > 1 else ""
    return (
        f"replay: {_gib(total)} ({steps} steps{sweep} x {sum(per_step.values())} B per step, of which {obs}; "
        f"limit replay.max_gib={config.replay.max_gib:g})"
    )


def check_memory(config: Config, available: int | None = None, seeds: int = 1) -> MemoryEstimate:
    """Raises ConfigError with the figures when the replay exceeds `replay.max_gib`, or when the estimate
    for a run (or a sweep of `seeds` seeds in one program, which holds every seed's state and activations
    at once) exceeds `available` bytes (default: what the first device has). Returns the estimate (for all
    seeds). Nothing is allocated."""
    estimate = estimate_memory(config)
    if seeds > 1:  # one process: its runtime counts once
        estimate = MemoryEstimate(
            **{k: v if k == "runtime" else v * seeds for k, v in dataclasses.asdict(estimate).items()}
        )
    if available is None:
        available = device_memory()
    if available is not None and estimate.total > available:
        device = jax.devices()[0]
        largest = max(
            [
                (
                    estimate.activations,
                    f"replay.batch_size={config.replay.batch_size} x "
                    f"replay.batch_length={config.replay.batch_length}",
                ),
                (estimate.replay, f"replay.capacity={config.replay.capacity}"),
                (estimate.params + estimate.optimiser, "the model size (wm.deter, wm.units, wm.classes)"),
            ]
        )[1]
        sweep = f" for {seeds} seeds in one program" if seeds > 1 else ""
        raise ConfigError(
            f"{largest}{sweep} needs about {_gib(estimate.total)} of device memory ({estimate.describe()}), "
            f"more than the {_gib(available)} of {device.platform}:{device.id}; reduce it"
        )
    if estimate.replay > config.replay.max_gib * GIB:
        raise ConfigError(
            f"replay.capacity={config.replay.capacity} needs {_gib(estimate.replay)} of replay, more than "
            f"replay.max_gib={config.replay.max_gib:g}: {describe_replay(config, seeds)}; lower "
            "replay.capacity or raise replay.max_gib"
        )
    return estimate
