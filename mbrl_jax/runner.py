"""The host side of a run: run directory, resume, checkpoints, logging, progress, non-finite guard.

`train(config, logdir)` is what `experiments/run.py` calls. Python runs only between compiled chunks:
    init (once) -> [run_chunk -> metrics to disk -> maybe checkpoint] x num_chunks -> plots.
A run does `Config.total_env_steps` env steps (`describe_budget` says how): chunks end on fixed boundaries
and the last one stops at the budget. Running it again on the same logdir resumes from the latest checkpoint;
raising only `steps` continues a finished run's state exactly as if the larger budget had been given from the
start (a chunk's plan is an argument of the one compiled chunk, and a chunk cut at the budget leaves the state
as the uncut chunk's first iterations would).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import math
import os
import shlex
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

from mbrl_jax.checkpoint import Checkpointer, flat_leaves, load_config, save_config
from mbrl_jax.config import (
    RESUMABLE_FIELDS,
    Config,
    ConfigError,
    config_diff,
    config_from_dict,
    make_config,
)
from mbrl_jax.envs import resolve_loop
from mbrl_jax.logging import MetricLogger, Progress
from mbrl_jax.memory import release_freed_heap
from mbrl_jax.parallel import (
    DIVERGED_FILE,
    SWEEP_FILE,
    check_devices,
    check_seeds,
    make_mesh,
    seed_logdir,
    state_shardings,
    stored_seeds,
    wait_for_all_processes,
    write_aggregate,
)
from mbrl_jax.trainer import TrainState, make_train, plan_chunk, summarize_chunk

try:
    import fcntl
except ImportError:  # not POSIX (Windows): runs are not guarded against a second writer
    fcntl = None


class NonFiniteError(RuntimeError):
    """Losses or parameters stopped being finite; nothing from that chunk was saved. `env_steps`: where the
    chunk that turned them ended (None when it is not known here); `non_finite`: what turned, by seed (None
    for a single run)."""

    def __init__(self, message: str, env_steps: int | None = None, non_finite: dict | None = None) -> None:
        super().__init__(message)
        self.env_steps, self.non_finite = env_steps, dict(non_finite or {})


class LogdirInUse(RuntimeError):
    """Another process is training in this run folder; nothing was read or written."""


@contextlib.contextmanager
def hold_logdir(path: Path | None):
    """An exclusive lock on the run folder while a run trains in it (process 0 of a multi-host run): a second
    run on the same folder, say a resume started while the first still finishes its last chunk, stops with
    `LogdirInUse` before it writes anything, instead of both appending and checkpointing. The lock is on the
    folder itself (no file is added to it), and the OS drops it when the process ends, however it ends."""
    if path is None or fcntl is None or jax.process_index() != 0:
        yield
        return
    folder = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(folder, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LogdirInUse(
                f"logdir={str(path)!r} is in use by another run (a process holds its lock); let that run "
                f"stop (SIGINT or SIGTERM checkpoint it at the next chunk), then resume, or pass another "
                f"--logdir"
            ) from None
        yield
    finally:
        os.close(folder)  # releases the lock


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


def stored_config(logdir: Path) -> Config | None:
    """The config of the run in `logdir` (its config.yaml), or None when it holds none; raises ConfigError
    naming the logdir when this version cannot read the file."""
    stored = load_config(logdir)
    if stored is None:
        return None
    try:
        return config_from_dict(stored)
    except ConfigError as err:
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a config.yaml this version cannot read: {err}"
        ) from None


def continue_command(logdir: Path) -> str:
    """The command line that continues the run or sweep stored in `logdir` (its stored config and seeds)."""
    return f"python experiments/run.py --logdir {shlex.quote(str(logdir))}"


def sweep_of_seed_folder(logdir: Path) -> tuple[Path, list[int]] | None:
    """(the sweep's folder, its seeds) when `logdir` is the `seed<s>/` folder of a sweep, else None."""
    parent = logdir.absolute().parent
    seeds = stored_seeds(parent)
    if seeds is None or not logdir.name.startswith("seed") or not logdir.name[4:].isdigit():
        return None
    return (parent, seeds) if int(logdir.name[4:]) in seeds else None


def check_resume(config: Config, logdir: Path, seeds: Sequence[int] | None = None) -> None:
    """Refuses a logdir that is a seed's folder inside a sweep, that holds a run of another config (only
    `RESUMABLE_FIELDS` may differ), a sweep where a single run is asked for (`seeds` None), a single run
    where a sweep is, or a sweep of other seeds. Each refusal names the command that continues what the
    folder holds."""
    owner = sweep_of_seed_folder(Path(logdir))
    if owner is not None:
        sweep, sweep_seeds = owner
        raise ConfigError(
            f"logdir={str(logdir)!r} is the folder of {Path(logdir).name[:4]} {Path(logdir).name[4:]} in the "
            f"sweep of seeds {sweep_seeds} in {str(sweep)!r}, not a run of its own; continue the sweep with "
            f"{continue_command(sweep)}, or use another logdir"
        )
    previous = stored_config(logdir)
    if previous is None:
        return
    stored = stored_seeds(logdir)
    if stored is not None and seeds is None:
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a sweep of seeds {stored}; resume it as a sweep "
            f"({continue_command(Path(logdir))}) or use another logdir for the single run"
        )
    if seeds is not None and stored is None:
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a single run (seed {previous.run.seed}), not a sweep; continue it "
            f"with {continue_command(Path(logdir))}, or use another logdir for the sweep"
        )
    if seeds is not None and list(stored) != list(seeds):
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a sweep of seeds {stored}, given seeds {list(seeds)}; "
            "resume it with the same seeds or use another logdir"
        )
    diff = {k: v for k, v in config_diff(previous, config).items() if k not in RESUMABLE_FIELDS}
    if diff:
        fields = ", ".join(f"{k} (run has {a!r}, given {b!r})" for k, (a, b) in sorted(diff.items()))
        raise ConfigError(
            f"logdir={str(logdir)!r} holds a run with a different config: {fields}; use another logdir "
            f"(--new on the command line), or "
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


def final_env_steps(config: Config) -> int:
    """Env steps at which a run of `config` ends (`Config.total_env_steps`)."""
    return config.total_env_steps


def describe_budget(config: Config) -> tuple[str, bool]:
    """What a run of `config` will do, said before it starts, and whether that is exactly `run.steps`:
    ('30,000 env steps = 1,024 prefill + 28 chunks of 1,000 + a last chunk of 976', True). Where the envs'
    lockstep makes `run.steps` unreachable, the text says what the run does instead and why."""
    total, n = config.total_env_steps, config.env.num_envs
    prefill, per_chunk = config.prefill_steps_per_env * n, config.env_steps_per_chunk
    whole, last = divmod(total - prefill, per_chunk)
    parts = [f"{prefill:,} prefill"]
    if whole:
        parts.append(f"{whole:,} chunk{'s' if whole > 1 else ''} of {per_chunk:,}")
    if last:
        parts.append(f"{'a last chunk' if whole else 'one chunk'} of {last:,}")
    text = f"{total:,} env steps = " + " + ".join(parts)
    exact = total == config.run.steps
    why = []
    if not exact:
        per_iteration = config.env_steps_per_iteration
        why.append(
            f"run.steps={config.run.steps:,} rounded up to whole iterations of {per_iteration} env steps "
            f"({n} envs x {per_iteration // n} step{'s' if per_iteration > n else ''})"
        )
    if prefill != config.replay.prefill:
        why.append(f"replay.prefill={config.replay.prefill:,} taken as {prefill:,} (whole steps of {n} envs)")
    return text + (" (" + "; ".join(why) + ")" if why else ""), exact


def latest_checkpoint(logdir: str | Path) -> tuple[int, float] | None:
    """(env steps, save time as a Unix timestamp) of the newest checkpoint in `logdir`, or None."""
    directory = Path(logdir) / "checkpoints"
    if not directory.is_dir():
        return None
    with Checkpointer(directory) as ckpt:
        step = ckpt.latest_step()
        return None if step is None else (step, ckpt.directory.joinpath(str(step)).stat().st_mtime)


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run between chunks, after the last complete chunk was saved."""

    def __init__(self, signum: int, env_steps: int | None, saved: bool) -> None:
        self.signum, self.env_steps, self.saved = signum, env_steps, saved
        name = signal.Signals(signum).name
        where = (
            f"at env step {env_steps} (checkpoint {'saved' if saved else 'already there'})"
            if env_steps is not None
            else "before the first chunk completed (nothing new to save)"
        )
        super().__init__(f"stopped by {name} {where}")

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # what a shell reports for a process killed by the signal: 130, 143


class _StopOnSignal:
    """SIGINT and SIGTERM set `signum`; the chunk loop stops at the next chunk boundary. The handlers then
    give way to the default ones, so a second signal ends the process at once (losing only the chunk in
    flight: checkpoints and metrics lines are crash-safe). Installed only on the main thread."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, announce: bool) -> None:
        self.signum: int | None = None
        self._announce = announce
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopOnSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in self.SIGNALS}
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.signum = signum
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if self._announce:
            name = signal.Signals(signum).name
            os.write(2, f"{name}: saving after the chunk in flight; send it again to stop at once\n".encode())

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _wait(arrays) -> None:
    """Block until `arrays` are computed, returning to Python often so that signal handlers run promptly
    (a blocking device_get would hold them until the chunk ends)."""
    leaves = jax.tree.leaves(arrays)
    while not all(x.is_ready() for x in leaves):
        time.sleep(0.005)


# Seconds of a first compile per line of the lowered program (StableHLO text), measured on the 2-core CPU
# this project is tested on (debug and cartpole presets: about 1.5 ms per line). A rough guide only.
_COMPILE_SECONDS_PER_LINE = 1.5e-3


def _compile(lowered: list, say) -> list:
    lines = sum(low.as_text().count("\n") for low in lowered)
    folder = jax.config.jax_compilation_cache_dir
    cached = f"cached afterwards in {folder}" if folder else "no compilation cache is set"
    estimate = lines * _COMPILE_SECONDS_PER_LINE
    say(f"compiling the training step (first time: about {estimate:.0f} s; {cached})")
    start = time.monotonic()
    compiled = [low.compile() for low in lowered]
    release_freed_heap()  # the compiler's freed working memory, before the programs allocate theirs
    say(f"compiled in {time.monotonic() - start:.1f} s")
    return compiled


def train(
    config: Config,
    logdir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    handle_signals: bool = True,
    announce: bool = True,
    on_chunk: Callable[[dict], None] | None = None,
) -> tuple[TrainState, list[dict]]:
    """Trains `config`, logging to and resuming from `logdir` (if given). Returns the final state and the
    metric records of this call. `stop_after_chunks` ends early after that many chunks (tests, schedulers).

    With `handle_signals` (and on the main thread), SIGINT / SIGTERM stop the run at the next chunk
    boundary: the last complete chunk is checkpointed, the logs are flushed, and `Interrupted` is raised.
    Metric records after the checkpoint that the run resumes from (all of them when there is none) are
    dropped before anything is appended, so a resumed run's files equal an uninterrupted run's.
    Non-finite losses or agent state raise `NonFiniteError` before anything of that chunk is saved.

    The run does `config.total_env_steps` env steps; with `announce` (and `progress`) it first prints how
    (`describe_budget`), and a budget the envs cannot meet exactly is also a warning saying what runs instead.
    Compiled programs go to the persistent compilation cache (`use_compilation_cache`). `on_chunk`, if given,
    is called after each chunk is logged (and saved, when due) with that chunk's records by seed (the key
    None for a single run): a driver's own host work between chunks, e.g. its wall-time note.
    """
    state, records = _train(
        config, logdir, None, progress, stop_after_chunks, handle_signals, announce, on_chunk
    )
    return state, records[None]


def train_sweep(
    config: Config,
    seeds: Sequence[int],
    logdir: str | Path | None = None,
    *,
    progress: bool = True,
    stop_after_chunks: int | None = None,
    handle_signals: bool = True,
    announce: bool = True,
    on_chunk: Callable[[dict], None] | None = None,
) -> tuple[TrainState, dict[int, list[dict]]]:
    """Trains `config` for every seed in `seeds` as one compiled program (the train state vmapped over a
    leading seed axis; seed s starts from the key of a single run with `run.seed=s`). The folder layout is
    in `mbrl_jax.parallel`; running it again on the same `logdir` and seeds resumes the sweep exactly, as
    `train` does a run. Returns the final state ([S, ...] leaves) and each seed's records of this call.

    A seed whose losses or agent state turn non-finite is reported by number, its `seed<s>/diverged.json`
    says where, and it is no longer logged; the other seeds go on (every seed computes independently), and
    `NonFiniteError` is raised only when no seed is left, before anything of that chunk is saved.
    """
    seeds = check_seeds(seeds)
    config = make_config(base=config, **{"run.seed": seeds[0]})
    return _train(config, logdir, seeds, progress, stop_after_chunks, handle_signals, announce, on_chunk)


def _member(tree, index: int | None):
    """One seed's slice of a sweep's pytree (`index` None: the tree of a single run, unchanged)."""
    return tree if index is None else jax.tree.map(lambda x: x[index], tree)


def _mean_record(records: list[dict]) -> dict:
    """What the progress line shows for a sweep: the mean over seeds of each number every record has."""
    if not records:
        return {}
    keys = set.intersection(*(set(r) for r in records))
    return {k: sum(r[k] for r in records) / len(records) for k in keys}


@dataclasses.dataclass(frozen=True)
class Programs:
    """The jitted programs of a run (`seeds` None) or of a sweep, laid out on `run.devices` devices."""

    init: Callable  # key -> TrainState ([S, ...] on every leaf for a sweep)
    chunk: Callable  # (state, ChunkPlan) -> (state, metrics, finite flags); donates the state
    key: jax.Array  # init's key: PRNGKey(run.seed), or one per seed stacked
    shardings: Any  # the state's NamedShardings on the mesh, None on one device
    target: Any = None  # the state's shapes where `init` cannot be traced (host loop); else from init
    host: bool = False  # the host loop: init and chunk are Python loops over jitted pieces, compiled lazily
    restart: Callable | None = None  # state -> state after a restore, where the envs are not in it (envpool)


# The programs of the last few configs this process ran. A pure program (its envs in its state, as gymnax's
# are) is a function of the config alone, so a second run of the same config in this process (a resume, a
# rerun) reuses the jitted functions and skips tracing, lowering and loading (a debug rerun: 5.0 s instead of
# 9.4 s). Programs that hold outside state (envpool's pools, host envs) are not kept.
_PROGRAMS: collections.OrderedDict = collections.OrderedDict()
_PROGRAMS_KEPT = 4


def clear_programs() -> None:
    """Forgets the programs kept for reuse (`_PROGRAMS`), freeing their executables: the next run compiles
    (or loads from the compilation cache) as a new process would."""
    _PROGRAMS.clear()


def _programs_key(config: Config, seeds: Sequence[int] | None) -> tuple[tuple, tuple]:
    """What a pure program depends on besides the config: the components registered under its names (a
    plugin registered again is a new program) and XLA's optimization setting. Returns
    the key and the objects whose ids it holds, kept alive beside the programs so that no id is reused."""
    from mbrl_jax.agents import AGENTS
    from mbrl_jax.world_models import BACKBONES

    components = [(name, v) for r in (AGENTS, BACKBONES) for name, v in sorted(r.items())]
    key = (
        config,
        None if seeds is None else tuple(seeds),
        id(make_train),
        tuple((name, id(v)) for name, v in components),
        jax.config.read("jax_disable_most_optimizations"),  # jit's own key holds x64 and matmul precision
    )
    return key, (make_train, components)


def make_programs(config: Config, seeds: Sequence[int] | None = None) -> Programs:
    """`make_train`'s init and run_chunk (plus the finite flags of `finite_flags`), vmapped over a leading
    seed axis for a sweep, and jitted: plainly on one device, else with in/out shardings on
    `make_mesh(config, seeds)` so XLA partitions the single-device program (see mbrl_jax.parallel). The
    programs of a config run earlier in this process are reused where they are pure (`_PROGRAMS`)."""
    if resolve_loop(config.env.name, config.env.loop) == "host":
        return _host_programs(config, seeds)
    check_devices(config, seeds)
    key, referenced = _programs_key(config, seeds)
    if key in _PROGRAMS:
        _PROGRAMS.move_to_end(key)
        return _PROGRAMS[key][0]
    mesh = make_mesh(config, seeds)
    trainer = make_train(config, mesh if seeds is None else None, seeds)
    programs = _jitted_programs(trainer, config, seeds, mesh)
    if trainer.restart is None:  # the envs live in the state: nothing outside it to go stale
        _PROGRAMS[key] = (programs, referenced)
        while len(_PROGRAMS) > _PROGRAMS_KEPT:
            _PROGRAMS.popitem(last=False)
    return programs


def _jitted_programs(trainer, config: Config, seeds: Sequence[int] | None, mesh) -> Programs:
    def chunk_and_check(state, plan):
        state, metrics = trainer.run_chunk(state, plan)
        return state, metrics, finite_flags(state, metrics)

    if seeds is None:
        init, chunk = trainer.init, chunk_and_check
        key = jax.random.PRNGKey(config.run.seed)
    else:  # one plan for every seed: they move in step
        init, chunk = jax.vmap(trainer.init), jax.vmap(chunk_and_check, in_axes=(0, None))
        key = jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])
    if mesh is None:
        restart = trainer.restart if seeds is None or trainer.restart is None else jax.vmap(trainer.restart)
        restart = jax.jit(restart, donate_argnums=0) if restart is not None else None
        return Programs(jax.jit(init), jax.jit(chunk, donate_argnums=0), key, None, restart=restart)
    shardings = state_shardings(jax.eval_shape(init, key), mesh)
    everywhere = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # metrics: on every host
    chunk_fn = jax.jit(
        chunk,
        in_shardings=(shardings, everywhere),
        out_shardings=(shardings, everywhere, everywhere),
        donate_argnums=0,
    )
    return Programs(jax.jit(init, out_shardings=shardings), chunk_fn, key, shardings)


def _host_programs(config: Config, seeds: Sequence[int] | None) -> Programs:
    """The host loop's init and chunk (`mbrl_jax.host_loop`), on one device: a run, or a sweep whose jitted
    pieces are vmapped over seeds, with one set of host envs per seed (seed s's key and envs as its run's)."""
    check_devices(config, seeds)
    from mbrl_jax.host_loop import make_host_train

    trainer = make_host_train(config, seeds)
    flags = jax.jit(finite_flags if seeds is None else jax.vmap(finite_flags))

    def chunk_and_check(state, plan):
        state, metrics = trainer.run_chunk(state, plan)
        return state, metrics, flags(state, metrics)

    if seeds is None:
        key = jax.random.PRNGKey(config.run.seed)
    else:
        key = jnp.stack([jax.random.PRNGKey(seed) for seed in seeds])
    return Programs(trainer.init, chunk_and_check, key, None, target=trainer.abstract_state(key), host=True)


def use_compilation_cache() -> str | None:
    """Keeps compiled programs on disk, so a second run (or a resume) of the same config starts in seconds:
    in $MBRL_JAX_CACHE_DIR (default ~/.cache/mbrl_jax/xla; an empty value turns the cache off), unless the
    process already set `jax_compilation_cache_dir` itself. Returns the folder in use, or None."""
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    folder = os.environ.get("MBRL_JAX_CACHE_DIR", str(Path.home() / ".cache" / "mbrl_jax" / "xla"))
    if not folder:
        return None
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
    return folder


def _train(config, logdir, seeds, progress, stop_after_chunks, handle_signals, announce, on_chunk=None):
    """The host loop of `train` (seeds None) and `train_sweep` (a list of seeds, vmapped), with the run
    folder held for the whole of it."""
    if announce:
        plan, exact = describe_budget(config)
        if progress and jax.process_index() == 0:
            print(f"mbrl_jax: {plan}", flush=True)
        if not exact:
            warnings.warn(f"the run does {plan}", UserWarning, stacklevel=3)
    use_compilation_cache()
    path = check_logdir(logdir) if logdir is not None else None
    with hold_logdir(path):
        return _train_held(config, path, seeds, progress, stop_after_chunks, handle_signals, on_chunk)


def _train_held(config, path, seeds, progress, stop_after_chunks, handle_signals, on_chunk=None):
    progress = progress and jax.process_index() == 0  # one console for a multi-host run
    say = (lambda line: print(line, flush=True)) if progress else (lambda line: None)
    total_steps = config.total_env_steps
    members = [None] if seeds is None else list(seeds)
    check_devices(config, seeds)
    if path is not None:
        check_resume(config, path, seeds)
    ckpt = Checkpointer(path / "checkpoints", keep=config.run.keep_checkpoints) if path is not None else None
    latest = ckpt.latest_step() if ckpt is not None else None
    writer = jax.process_index() == 0  # in a multi-host run every process computes, process 0 writes
    if (
        writer and path is not None and (latest is None or latest < total_steps)
    ):  # a finished run keeps its budget
        save_config(path, config.to_dict())
        if seeds is not None:
            (path / SWEEP_FILE).write_text(json.dumps({"seeds": seeds}))
            for seed in seeds:
                seed_logdir(path, seed).mkdir(exist_ok=True)
                save_config(seed_logdir(path, seed), make_config(base=config, **{"run.seed": seed}).to_dict())

    programs = make_programs(config, seeds)
    init, chunk_fn, key, shardings = programs.init, programs.chunk, programs.key, programs.shardings
    logdirs = {m: (path if m is None else seed_logdir(path, m)) for m in members} if path is not None else {}
    loggers = {m: MetricLogger(d) for m, d in logdirs.items()} if writer else {}
    diverged: set[int] = set()
    for logger in loggers.values():
        # rows after the resume point would be computed again: drop them before anything is appended
        logger.truncate_after(latest if latest is not None else -1)
    for member, logdir in logdirs.items():
        mark = logdir / DIVERGED_FILE
        if mark.is_file():
            if latest is not None and json.loads(mark.read_text())["env_steps"] <= latest:
                diverged.add(member)
            elif writer:
                mark.unlink()  # it diverged after the checkpoint resumed from: that chunk runs again
    if seeds is not None and diverged == set(seeds):
        raise NonFiniteError(
            f"every seed of the sweep in {path} turned non-finite before its last checkpoint"
        )
    target = programs.target if programs.target is not None else jax.eval_shape(init, key)
    if shardings is not None:  # restored arrays land where the compiled chunk expects them
        target = jax.tree.map(
            lambda leaf, where: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=where),
            target,
            shardings,
        )
    if latest is not None:
        ckpt.check_compatible(latest, target)
        state = ckpt.restore(latest, target)
        if programs.restart is not None:
            state = programs.restart(state)
        if not programs.host:
            (chunk_fn,) = _compile([chunk_fn.lower(target, plan_chunk(config, latest, total_steps))], say)
    elif programs.host:
        state = init(key)
    else:
        plan = plan_chunk(config, config.prefill_steps_per_env * config.env.num_envs, total_steps)
        init, chunk_fn = _compile([init.lower(key), chunk_fn.lower(target, plan)], say)
        state = init(key)
    wait_for_all_processes(f"mbrl_jax compiled {path}")  # a multi-host run's processes start chunks together
    reached = env_steps_reached(state)
    prefill, per_chunk = config.prefill_steps_per_env * config.env.num_envs, config.env_steps_per_chunk
    ckpt_every = max(1, math.ceil(config.run.checkpoint_every / config.env_steps_per_chunk))
    last_saved = latest
    records: dict[int | None, list[dict]] = {m: [] for m in members}
    display = Progress(total_steps, reached) if progress else None
    t_start = last_save_time = time.time()
    env_steps = None  # of the last complete chunk of this call
    interrupted = False

    def save(env_steps: int) -> None:
        nonlocal last_saved, last_save_time
        ckpt.save(env_steps, state, {"env_steps": env_steps, "wall_time": time.time() - t_start})
        last_saved, last_save_time = env_steps, time.time()

    with contextlib.ExitStack() as cleanup:
        stop = cleanup.enter_context(_StopOnSignal(announce=progress)) if handle_signals else None
        for logger in loggers.values():
            cleanup.callback(logger.close)
        if display is not None:
            cleanup.enter_context(display)  # after compiling: rates and ETA count only compiled chunks
        chunks_run = 0
        while reached < total_steps:
            if stop is not None and stop.signum is not None:
                interrupted = True
                break
            if stop_after_chunks is not None and chunks_run >= stop_after_chunks:
                break
            # the plan's values are arguments of the one compiled chunk, so every run length shares it
            state, metrics, finite = chunk_fn(state, plan_chunk(config, reached, total_steps))
            chunks_run += 1
            if stop is not None:
                _wait(finite)
            metrics, finite = jax.device_get((metrics, finite))  # one transfer; seeds are sliced on the host
            chunk_records, newly_bad = {}, {}
            for i, member in enumerate(members):
                seed_axis = None if seeds is None else i
                record = summarize_chunk(_member(metrics, seed_axis))
                env_steps = record["env_steps"]
                if member in diverged:
                    continue
                bad = non_finite_names(_member(finite, seed_axis))
                if bad:
                    newly_bad[member] = describe_non_finite(bad)
                else:
                    chunk_records[member] = record
            where = f"the chunk ending at env step {env_steps}"
            if newly_bad and not chunk_records:  # nothing healthy left: stop before saving anything
                last = f"env step {last_saved} in {ckpt.directory}" if ckpt and last_saved else "none"
                names = "; ".join(
                    (what if m is None else f"seed {m}: {what}") for m, what in newly_bad.items()
                )
                raise NonFiniteError(
                    f"non-finite {names} in {where}; nothing from it was saved. Last good checkpoint: {last}",
                    env_steps,
                    newly_bad,
                )
            for member, what in newly_bad.items():
                diverged.add(member)
                if logdirs and writer:
                    mark = {"env_steps": env_steps, "non_finite": what}
                    (logdirs[member] / DIVERGED_FILE).write_text(json.dumps(mark))
                say(f"seed {member} stopped: non-finite {what} in {where}; the other seeds go on")
            for member, record in chunk_records.items():
                records[member].append(record)
                if member in loggers:
                    loggers[member].write(record)
            if display is not None:
                display.update(env_steps, _mean_record(list(chunk_records.values())))
            reached = env_steps
            done, past = divmod(reached - prefill, per_chunk)  # chunk boundaries passed
            due = (past == 0 and done % ckpt_every == 0) or (
                time.time() - last_save_time >= 60 * config.run.checkpoint_minutes
            )
            if ckpt is not None and (due or reached >= total_steps):
                save(env_steps)
            if on_chunk is not None:
                on_chunk(chunk_records)
        if interrupted:
            saved = ckpt is not None and env_steps is not None and last_saved != env_steps
            if saved:
                save(env_steps)
            raise Interrupted(stop.signum, env_steps, saved)
    if writer and path is not None and reached >= total_steps:
        from mbrl_jax.plotting import plot_run

        for member in members:
            if member not in diverged:
                plot_run(logdirs[member])
        if seeds is not None:
            write_aggregate(path, seeds)
    return state, records


def env_steps_reached(state: TrainState) -> int:
    """Env steps of a run's state (a sweep's seeds all move in step)."""
    return int(jnp.ravel(state.env_steps)[0])
