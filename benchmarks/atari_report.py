"""Atari 100k scores as the field reports them, from a folder of runs.

    python benchmarks/atari_report.py runs/atari100k --md scores.md --png scores.png --out scores.json

Every run directory under the folder (one holding `config.yaml` and `metrics.jsonl`, as `experiments/run.py`
and `benchmarks/learning.py` write them) whose env is one of the 26 Atari 100k games counts with its final
evaluation return (the last `eval_return` of the run). Per game: runs, mean raw score, the published random
and human scores, and the human-normalised score (`mbrl_jax.atari_scores`). Over games: mean, median and
IQM of the human-normalised scores with 95% stratified-bootstrap confidence intervals (`mbrl_jax.stats`, after
Agarwal et al., 2021), which need the same number of runs for every game. The table goes to stderr (and
`--md`), the JSON object is the last line of stdout (and `--out`), the figure to `--png`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.report import emit  # noqa: E402
from mbrl_jax.atari_scores import SCORES, game_of, human_normalized  # noqa: E402
from mbrl_jax.checkpoint import load_config  # noqa: E402
from mbrl_jax.logging import read_metrics  # noqa: E402
from mbrl_jax.stats import aggregate_with_ci  # noqa: E402


def final_scores(folder: Path) -> tuple[dict[str, list[float]], list[str]]:
    """{game: [final evaluation return per run]} of the Atari runs under `folder`, and the run directories
    that were left out (not an Atari 100k game, or no evaluation yet), each with the reason."""
    scores: dict[str, list[float]] = {}
    skipped = []
    for metrics in sorted(folder.rglob("metrics.jsonl")):
        run = metrics.parent
        config = load_config(run)
        env = (config or {}).get("env", {}).get("name", "")
        game = game_of(env)
        evals = [r["eval_return"] for r in read_metrics(run) if "eval_return" in r]
        if game is None:
            skipped.append(f"{run} (env {env!r} is not an Atari 100k game)")
        elif not evals:
            skipped.append(f"{run} (no evaluation yet)")
        else:
            scores.setdefault(game, []).append(float(evals[-1]))
    return scores, skipped


def atari_report(folder: Path, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
    scores, skipped = final_scores(folder)
    if not scores:
        raise ValueError(f"no run of an Atari 100k game with an evaluation under {folder}")
    counts = {game: len(runs) for game, runs in scores.items()}
    if len(set(counts.values())) > 1:
        raise ValueError(f"the stratified bootstrap needs the same number of runs per game; found {counts}")
    games = sorted(scores)
    normalized = np.array([[human_normalized(g, s) for s in scores[g]] for g in games]).T  # [runs, games]
    per_game = [
        {
            "game": g,
            "runs": counts[g],
            "score": float(np.mean(scores[g])),
            "scores": scores[g],
            "random": SCORES[g][0],
            "human": SCORES[g][1],
            "hns": float(normalized[:, i].mean()),
        }
        for i, g in enumerate(games)
    ]
    aggregates = aggregate_with_ci(normalized, resamples=resamples, seed=seed)
    return {
        "games": len(games),
        "of_games": len(SCORES),
        "runs_per_game": normalized.shape[0],
        "per_game": per_game,
        "aggregate": {k: {"value": v, "low": lo, "high": hi} for k, (v, lo, hi) in aggregates.items()},
        "resamples": resamples,
        "skipped": skipped,
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Human-normalised scores over {report['games']} of the {report['of_games']} Atari 100k games, "
        f"{report['runs_per_game']} run(s) per game; 95% stratified-bootstrap CIs ({report['resamples']} "
        "resamples).",
        "",
        "| aggregate | value | 95% CI |",
        "| --- | --- | --- |",
    ]
    for name, a in report["aggregate"].items():
        lines.append(f"| {name} | {a['value']:.3f} | [{a['low']:.3f}, {a['high']:.3f}] |")
    lines += [
        "",
        "| game | runs | mean score | random | human | human-normalised |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for g in report["per_game"]:
        lines.append(
            f"| {g['game']} | {g['runs']} | {g['score']:.1f} | {g['random']:.1f} | {g['human']:.1f} | "
            f"{g['hns']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    games_ax, agg_ax = fig.subplots(1, 2, width_ratios=[3, 1])
    rows = sorted(report["per_game"], key=lambda g: g["hns"])
    games_ax.barh([g["game"] for g in rows], [g["hns"] for g in rows], color="tab:blue")
    games_ax.axvline(1.0, color="gray", linestyle="--", linewidth=1)
    games_ax.set_xlabel("human-normalised score (mean over runs)")
    names = list(report["aggregate"])
    values = [report["aggregate"][n]["value"] for n in names]
    errors = [
        [v - report["aggregate"][n]["low"] for n, v in zip(names, values, strict=True)],
        [report["aggregate"][n]["high"] - v for n, v in zip(names, values, strict=True)],
    ]
    agg_ax.errorbar(values, names, xerr=errors, fmt="o", capsize=4, color="tab:red")
    agg_ax.set_xlabel("human-normalised score, 95% CI")
    fig.suptitle(f"Atari 100k: {report['games']} games, {report['runs_per_game']} run(s) each")
    FigureCanvasAgg(fig).print_png(str(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", type=Path, help="a folder of run directories")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--md", type=Path, help="also write the table here")
    parser.add_argument("--png", type=Path, help="write the figure here")
    parser.add_argument("--out", help="also write the JSON object here")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        print(f"error: {args.folder} is not a directory", file=sys.stderr)
        return 2
    if args.resamples < 1:
        print(f"error: --resamples must be >= 1, got {args.resamples}", file=sys.stderr)
        return 2
    try:
        report = atari_report(args.folder, args.resamples)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    table = markdown(report)
    print(table, file=sys.stderr)
    if args.md:
        args.md.write_text(table)
    if args.png:
        plot(report, args.png)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
