"""Train an agent from the command line.

    python experiments/run.py                        # CartPole-v1, in runs/CartPole-v1-cartpole-seed0
    python experiments/run.py                        # the same command again resumes that run
    python experiments/run.py --steps 50000          # continues it to 50k env steps
    python experiments/run.py --preset pendulum --seed 1
    python experiments/run.py --preset cartpole,size1m optim.lr=1e-4 --seed 3 replay.batch_size=32
    python experiments/run.py --logdir runs/X        # resumes runs/X with the config stored there
    python experiments/run.py --show-config --preset pendulum dreamer.imag_horizon=10   # print, don't run

The config, by one rule:
  1. Start from the config stored in --logdir when it holds a run and --preset is not given; otherwise from
     the defaults, with --preset cartpole when neither --preset nor --env is given.
  2. Apply the presets of --preset a,b,... left to right.
  3. Apply the field settings: --env E, --seed S, --steps N and key=value with dotted keys (any field of
     mbrl_jax.config.Config: run.*, env.*, replay.*, wm.*, wm.gru.*, dreamer.*, drama.*, optim.*, agent; see
     --show-config). They may come in any order, mixed with the other flags: --steps N is the same as
     run.steps=N, and a field set twice (as flag or key) is an error naming both.
Everything is validated, device memory included, before anything is allocated or compiled.

Run directory: --logdir, by default runs/<env>-<presets>-seed<seed>. Running again with the same directory
resumes the run there; only run.steps, run.checkpoint_every, run.checkpoint_minutes, run.keep_checkpoints,
run.eval_policy, wm.conv and drama.conv may differ.
--new starts a fresh run in <logdir>-2 (-3, ...) when <logdir> already holds one.
Ctrl-C or SIGTERM: the chunk in flight finishes and is checkpointed, then the run exits with status 130 / 143
and prints how to resume it (a second signal stops at once, losing only that chunk).
Exit status: 0 done or already finished, 1 non-finite losses, 2 bad input (nothing allocated, compiled or
changed), 130 / 143 interrupted. Compiled programs are cached in $MBRL_JAX_CACHE_DIR
(default ~/.cache/mbrl_jax/xla; empty turns the cache off).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from mbrl_jax.config import (  # noqa: E402
    PRESETS,
    Config,
    ConfigError,
    coerce_value,
    describe_config,
    make_config,
)
from mbrl_jax.parallel import check_devices, initialize_hosts, parse_seeds, stored_seeds  # noqa: E402

DEFAULT_PRESET = "cartpole"
FIELD_FLAGS = {"env": "env.name", "seed": "run.seed", "steps": "run.steps"}  # --steps N is run.steps=N


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line and exit status 2, like every other bad input
        raise ConfigError(message)


class _Field(argparse.Action):
    """`--steps N`: recorded as the field setting ('--steps N', 'run.steps', 'N') in the order given."""

    def __call__(self, parser, namespace, values, option_string=None):
        setting = (f"{option_string} {values}", FIELD_FLAGS[self.dest], values)
        namespace.fields = [*(namespace.fields or []), setting]


class _Once(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        previous = getattr(namespace, self.dest)
        if previous is not None:
            raise ConfigError(
                f"{option_string} is given twice: {option_string} {previous} and {option_string} {values}; "
                f"give it once (presets combine as {option_string} a,b)"
            )
        setattr(namespace, self.dest, values)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(fields=None)
    parser.add_argument(
        "--env",
        action=_Field,
        help="gymnax env id, e.g. CartPole-v1, craftax:<id> (craftax:Craftax-Classic-Symbolic-v1), or "
        "gymnasium:<id> for a Gymnasium env (the field env.name)",
    )
    parser.add_argument(
        "--preset",
        action=_Once,
        help=f"comma-separated presets, applied left to right; known: {', '.join(PRESETS)} "
        f"(default: {DEFAULT_PRESET} when neither --env nor a stored run gives the config)",
    )
    parser.add_argument("--seed", action=_Field, help="the field run.seed (0 to 2**32 - 1)")
    parser.add_argument(
        "--steps", action=_Field, help="the field run.steps: total env steps, prefill included"
    )
    parser.add_argument(
        "--seeds",
        action=_Once,
        help="a seed sweep in one compiled program: 0-7, 0,3,5 or 1-3,9 (instead of --seed)",
    )
    parser.add_argument(
        "--logdir", action=_Once, help="run directory (default: runs/<env>-<presets>-seed<seed>)"
    )
    parser.add_argument(
        "--new", action="store_true", help="start a fresh run in <logdir>-2 (-3, ...) if <logdir> holds one"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.add_argument(
        "--coordinator",
        help="multi-host: host:port of process 0, for jax.distributed (on a TPU pod slice: not needed)",
    )
    parser.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    parser.add_argument("--process-id", type=int, help="multi-host: this process's index, 0 to N-1")
    parser.add_argument(
        "--multi-host",
        action="store_true",
        help="join a multi-host run (implied by --coordinator; on a TPU pod slice the only flag needed)",
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config, each field with its meaning, and exit without running",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config field settings")
    return parser.parse_intermixed_args(argv)


def field_settings(args: argparse.Namespace) -> dict:
    """The --env/--seed/--steps flags and key=value pairs as {field: typed value}; each field once."""
    settings = list(args.fields or [])
    for pair in args.overrides:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        settings.append((pair, key.strip(), value))
    given: dict[str, str] = {}
    values = {}
    for text, key, value in settings:
        if key in given:
            raise ConfigError(f"{key} is given twice: {given[key]} and {text}; give it once")
        given[key] = text
        values[key] = coerce_value(key, value)
    return values


def _holds_run(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def _fresh(path: Path) -> Path:
    """`path`, or the first of path-2, path-3, ... that holds no run."""
    candidate, n = path, 1
    while _holds_run(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def split_presets(text: str | None) -> list[str]:
    """'a,b' -> ['a', 'b']; None -> []. An empty name ('' or 'a,,b') is refused: it names no preset."""
    if text is None:
        return []
    presets = [p.strip() for p in text.split(",")]
    if not all(presets):
        raise ConfigError(
            f"--preset {text!r} has an empty name; give presets as a,b (known: {', '.join(PRESETS)}), or "
            "leave --preset out"
        )
    return presets


def build_config(args: argparse.Namespace) -> tuple[Config, Path, list[int] | None]:
    """The config by the rule in the module docstring, the run directory, and the seeds of a sweep (None
    for a single run)."""
    values = field_settings(args)
    seeds = parse_seeds(args.seeds) if args.seeds is not None else None
    if seeds is not None and "run.seed" in values:
        raise ConfigError(f"--seed and --seeds {args.seeds} are both given; give one (a run or a sweep)")
    presets = split_presets(args.preset)
    given = Path(args.logdir).expanduser() if args.logdir else None
    base = None
    if given is not None and not args.preset and not args.new:
        from mbrl_jax.runner import stored_config  # late import: the runner pulls in jax

        base = stored_config(given)
        if seeds is None and "run.seed" not in values:
            seeds = stored_seeds(given)  # a stored sweep resumes as the sweep it is
    if not presets and "env.name" not in values and base is None:
        presets = [DEFAULT_PRESET]
    if seeds is not None:
        values["run.seed"] = seeds[0]
    config = make_config(*presets, base=base, **values)
    name = f"seed{config.run.seed}" if seeds is None else f"seeds{args.seeds or ','.join(map(str, seeds))}"
    logdir = given or Path("runs") / "-".join([config.env.name, *presets, name.replace(",", "_")])
    return config, (_fresh(logdir) if args.new else logdir), seeds


def resume_command(path: Path) -> str:
    """The command that resumes the run in `path`, runnable from any folder: this interpreter, this script
    and the run folder, all as absolute paths."""
    parts = [sys.executable, str(Path(__file__).resolve()), "--logdir", str(path.absolute())]
    return " ".join(map(shlex.quote, parts))


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
        if args.multi_host or args.coordinator:
            initialize_hosts(args.coordinator, args.num_processes, args.process_id)
        config, logdir, seeds = build_config(args)
        if args.show_config:
            print(describe_config(config))
            return 0
        from mbrl_jax.memory import check_memory, describe_replay
        from mbrl_jax.runner import check_logdir, check_resume

        check_devices(config, seeds)
        check_resume(config, logdir, seeds)
        check_memory(config, seeds=1 if seeds is None else len(seeds))
        path = check_logdir(logdir)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from mbrl_jax.logging import read_metrics
    from mbrl_jax.runner import (
        Interrupted,
        LogdirInUse,
        NonFiniteError,
        describe_budget,
        final_env_steps,
        latest_checkpoint,
        train,
        train_sweep,
    )

    resume = resume_command(path)
    point = latest_checkpoint(path)
    if point is not None and point[0] >= final_env_steps(config):
        print(f"{path}: finished at {point[0]} env steps; pass --steps M > {point[0]} to continue")
        return 0
    print(
        f"mbrl_jax: {config.agent} on {config.env.name}, "
        f"{'seed ' + str(config.run.seed) if seeds is None else 'seeds ' + ','.join(map(str, seeds))}, "
        f"{describe_budget(config)[0]}"
        f"{f' of {config.env.action_repeat} repeats' if config.env.action_repeat > 1 else ''} "
        f"(train ratio {config.effective_train_ratio:g}, {config.env.num_envs} envs) -> {path}",
        flush=True,
    )
    print(describe_replay(config, 1 if seeds is None else len(seeds)), flush=True)
    if point is not None:
        saved = datetime.fromtimestamp(point[1]).strftime("%Y-%m-%d %H:%M:%S")
        print(f"resuming from env step {point[0]} (checkpoint of {saved})", flush=True)
    elif read_metrics(path) or any(read_metrics(path / f"seed{s}") for s in seeds or []):
        print(
            "no checkpoint yet: starting from env step 0; the metrics written so far are replaced", flush=True
        )
    try:
        if seeds is None:
            _, records = train(config, path, progress=not args.no_progress, announce=False)
        else:
            _, by_seed = train_sweep(config, seeds, path, progress=not args.no_progress, announce=False)
    except (NonFiniteError, LogdirInUse) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except Interrupted as stop:
        print(f"{stop}; resume with: {resume}", file=sys.stderr, flush=True)
        return stop.exit_status
    if seeds is not None:
        finals = {s: r[-1]["eval_return"] for s, r in by_seed.items() if r and "eval_return" in r[-1]}
        print(
            "done: final eval return "
            + ", ".join(f"seed {s} {v:.1f}" for s, v in finals.items())
            + f"; per-seed metrics in {path}/seed<s>/, across seeds in {path}/aggregate.json"
        )
        return 0
    evals = [r["eval_return"] for r in records if "eval_return" in r]
    if evals:
        print(
            f"done: final eval return {evals[-1]:.1f} (best {max(evals):.1f}); "
            f"metrics in {path}/metrics.jsonl"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
