"""Train an agent from the command line.

    python experiments/run.py                                   # DreamerV3 on gymnax CartPole-v1
    python experiments/run.py --env Pendulum-v1 --preset pendulum --steps 30000 --logdir runs/pendulum
    python experiments/run.py --preset cartpole,size1m --seed 3 lr=1e-4 batch_size=32

Presets apply left to right, then --env/--seed/--steps, then trailing key=value overrides; the result is
validated before anything compiles. Running again with the same --logdir resumes that run.
Exit status 2 means bad input (nothing was compiled and nothing in the logdir changed).
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from mbrl_jax.config import PRESETS, ConfigError, make_config, parse_overrides  # noqa: E402

DEFAULT_PRESET = "cartpole"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", help="gymnax env id, e.g. CartPole-v1, Pendulum-v1")
    parser.add_argument(
        "--preset",
        default=None,
        help=f"comma-separated presets, applied left to right; known: {', '.join(PRESETS)} "
        f"(default: {DEFAULT_PRESET} when --env is not given)",
    )
    parser.add_argument("--seed", type=int)
    parser.add_argument("--steps", type=int, help="total env steps")
    parser.add_argument("--logdir", help="run directory (default: runs/<env>-<preset>-seed<seed>-<time>)")
    parser.add_argument("--no-progress", action="store_true", help="no progress output")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config field overrides")
    return parser.parse_args(argv)


def build_config(args: argparse.Namespace):
    presets = [p for p in (args.preset or "").split(",") if p]
    if not presets and args.env is None:
        presets = [DEFAULT_PRESET]
    overrides = parse_overrides(args.overrides)
    for name in ("env", "seed", "steps"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return make_config(*presets, **overrides)


def enable_compilation_cache() -> None:
    """Keeps compiled programs on disk, so a second run (or a resume) of the same config starts in seconds.
    MBRL_JAX_CACHE_DIR picks the folder; set it to an empty string to turn the cache off."""
    import os

    folder = os.environ.get("MBRL_JAX_CACHE_DIR", str(Path.home() / ".cache" / "mbrl_jax" / "xla"))
    if folder:
        import jax

        jax.config.update("jax_compilation_cache_dir", folder)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = build_config(args)
        from mbrl_jax.runner import check_logdir, check_resume

        logdir = args.logdir or (
            f"runs/{config.env}-seed{config.seed}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        )
        path = check_logdir(logdir)
        check_resume(config, path)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    enable_compilation_cache()
    from mbrl_jax.runner import NonFiniteError, train

    print(
        f"mbrl_jax: {config.agent} on {config.env}, seed {config.seed}, {config.steps} env steps "
        f"(train ratio {config.effective_train_ratio:g}, {config.num_envs} envs) -> {path}",
        flush=True,
    )
    try:
        _, records = train(config, path, progress=not args.no_progress)
    except NonFiniteError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    evals = [r["eval_return"] for r in records if "eval_return" in r]
    if evals:
        print(
            f"done: final eval return {evals[-1]:.1f} (best {max(evals):.1f}); "
            f"metrics in {path}/metrics.jsonl"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
