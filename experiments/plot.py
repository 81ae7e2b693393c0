"""Plot a metric against env steps for one or more runs (mean and 95% bootstrap band over several).

python experiments/plot.py runs/cartpole_s0 runs/cartpole_s1 --key eval_return --out curves.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mbrl_jax.logging import JSONL
from mbrl_jax.parallel import seed_logdir, stored_seeds
from mbrl_jax.plotting import plot_curves


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="run folders holding metrics.jsonl")
    parser.add_argument("--key", default="eval_return", help="metric to plot (default: eval_return)")
    parser.add_argument(
        "--out", type=Path, default=Path("curves.png"), help="PNG to write (default: curves.png)"
    )
    parser.add_argument("--label", default=None, help="legend label of the curve")
    args = parser.parse_args(argv)
    for d in args.dirs:
        if not (d / JSONL).is_file():
            seeds = stored_seeds(d)
            where = (
                f"; it is a sweep: each seed's run is in its seed<s>/ folder, e.g. "
                f"{' '.join(str(seed_logdir(d, s)) for s in seeds[:3])}{' ...' if len(seeds) > 3 else ''} "
                f"(the sweep's own curves are in {d / 'curves.png'})"
                if seeds
                else ""
            )
            print(f"plot.py: error: {d} has no {JSONL}{where}", file=sys.stderr)
            return 2
    try:
        out = plot_curves(args.dirs, args.out, key=args.key, label=args.label)
    except ValueError as e:
        print(f"plot.py: error: {e}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
