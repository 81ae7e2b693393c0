"""The host side of a run: run directory, resume, checkpoints, logging, progress, non-finite guard.

`train(config, logdir)` is what `experiments/run.py` calls. Python runs only between compiled chunks:
    init (once) -> [run_chunk -> metrics to disk -> maybe checkpoint] x num_chunks -> plots.
Running it again on the same logdir resumes from the latest checkpoint; raising only `steps` continues a
finished run exactly as if the larger budget had been given from the start (a chunk never depends on `steps`).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from mbrl_jax.checkpoint import Checkpointer, flat_leaves, load_config, save_config
from mbrl_jax.config import RESUMABLE_FIELDS, Config, ConfigError, config_diff, config_from_dict
from mbrl_jax.logging import MetricLogger, Progress
from mbrl_jax.train import TrainState, make_train, summarize_chunk


class NonFiniteError(RuntimeError):
    """Losses or parameters stopped being finite; nothing from that chunk was saved."""


def check_logdir(logdir: str | Path) -> Path:
    """The run folder, created if missing; a ConfigError if it cannot be written (before any compile)."""
    path = Path(logdir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"logdir={str(logdir)!r} cannot be created: {err.strerror}") from None
    if not path.is_dir() or not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"logdir={str(logdir)!r} is not a writable directory")
    return path


def check_resume(config: Config, logdir: Path) -> None:
    """Refuses a logdir that holds a run of another config; only `RESUMABLE_FIELDS` may differ."""
    stored = load_config(logdir)
    if stored is None:
        return
    try:
        previous = config_from_dict(stored)
    except ConfigError as err:
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a config.yaml this version cannot read: {err}"
        ) from None
    diff = {k: v for k, v in config_diff(previous, config).items() if k not in RESUMABLE_FIELDS}
    if diff:
        fields = ", ".join(f"{k} (run has {a!r}, given {b!r})" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a run with a different config: {fields}; use another --logdir, or "
            f"change only {sorted(RESUMABLE_FIELDS)} to resume it"
        )


def finite_flags(state: TrainState, metrics: dict) -> dict:
    """Inside jit: one bool per floating leaf of what the guard watches: the agent's parameters, optimiser
    state, slow critic and return norm, and the chunk's losses. Everything else a chunk reports is either
    finite by construction or absent."""
    watched = {
        "agent": state.agent,
        "losses": {k: v for k, v in metrics.items() if k.startswith("loss")},
    }
    return jax.tree.map(
        lambda x: jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.floating) else jnp.bool_(True),
        watched,
    )


def non_finite_names(flags: dict) -> list[str]:
    """Host side: 'agent/params/wm/...' paths of the leaves whose flag is False."""
    return [name for name, ok in flat_leaves(jax.device_get(flags)).items() if not bool(ok)]


def describe_non_finite(names: list[str], limit: int = 3) -> str:
    """'losses loss_model; agent state params/wm/... and 12 more tensors' from `non_finite_names`."""
    losses = [n.split("/", 1)[1] for n in names if n.startswith("losses/")]
    state = [n.split("/", 1)[1] for n in names if n.startswith("agent/")]
    parts = []
    if losses:
        parts.append("losses " + ", ".join(losses))
    if state:
        more = f" and {len(state) - limit} more tensors" if len(state) > limit else ""
        parts.append("agent state " + ", ".join(state[:limit]) + more)
    return "; ".join(parts)


def _chunks_done(config: Config, env_steps: int) -> int:
    return (env_steps - config.prefill_steps_per_env * config.num_envs) // config.env_steps_per_chunk


def train(
    config: Config,
    logdir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after_chunks: int | None = None,
) -> tuple[TrainState, list[dict]]:
    """Trains `config`, logging to and resuming from `logdir` (if given). Returns the final state and the
    metric records of this call. `stop_after_chunks` ends early after that many chunks (tests, schedulers)."""
    path = check_logdir(logdir) if logdir is not None else None
    if path is not None:
        check_resume(config, path)
        save_config(path, config.to_dict())

    trainer = make_train(config)
    init = jax.jit(trainer.init)

    def chunk_and_check(state):
        state, metrics = trainer.run_chunk(state)
        return state, metrics, finite_flags(state, metrics)

    chunk_fn = jax.jit(chunk_and_check, donate_argnums=0)
    key = jax.random.PRNGKey(config.seed)
    ckpt = Checkpointer(path / "checkpoints", keep=config.keep_checkpoints) if path is not None else None
    logger = MetricLogger(path) if path is not None else None

    latest = ckpt.latest_step() if ckpt is not None else None
    if latest is not None:
        target = jax.eval_shape(init, key)
        ckpt.check_compatible(latest, target)
        state = ckpt.restore(latest, target)
        logger.truncate_after(latest)  # lines after the checkpoint are recomputed identically
    else:
        state = init(key)
    start_chunk = _chunks_done(config, int(state.env_steps))
    total_steps = (
        config.prefill_steps_per_env * config.num_envs + config.num_chunks * config.env_steps_per_chunk
    )
    ckpt_every = max(1, math.ceil(config.checkpoint_every / config.env_steps_per_chunk))
    last_saved = latest
    records = []
    display = Progress(total_steps, int(state.env_steps)) if progress else None
    t_start = time.time()
    with contextlib.ExitStack() as cleanup:
        if display is not None:
            cleanup.enter_context(display)
        if logger is not None:
            cleanup.callback(logger.close)
        for index in range(start_chunk, config.num_chunks):
            if stop_after_chunks is not None and index - start_chunk >= stop_after_chunks:
                break
            state, metrics, finite = chunk_fn(state)
            metrics = summarize_chunk(metrics)
            env_steps = metrics["env_steps"]
            bad = non_finite_names(finite)
            if bad:
                raise NonFiniteError(
                    f"non-finite {describe_non_finite(bad)} in the chunk ending at "
                    f"env step {env_steps}; nothing from it was saved. Last good checkpoint: "
                    f"{'env step ' + str(last_saved) if last_saved is not None else 'none'}"
                    f"{' in ' + str(ckpt.directory) if ckpt is not None and last_saved is not None else ''}"
                )
            records.append(metrics)
            if logger is not None:
                logger.write(metrics)
            if display is not None:
                display.update(env_steps, metrics)
            done = index + 1
            if ckpt is not None and (done % ckpt_every == 0 or done == config.num_chunks):
                ckpt.save(env_steps, state, {"env_steps": env_steps, "wall_time": time.time() - t_start})
                last_saved = env_steps
    if path is not None and int(state.env_steps) >= total_steps:
        from mbrl_jax.plotting import plot_run

        plot_run(path)
    return state, records
