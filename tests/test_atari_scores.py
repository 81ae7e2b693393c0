"""Atari 100k scores (#14): human normalisation, the aggregates over games, their stratified bootstrap, and
the report script, each against numbers worked out by hand."""

import itertools
import json

import numpy as np
import pytest

from benchmarks.atari_report import main as report_main
from mbrl_jax.atari_scores import GAMES, game_of, human_normalized
from mbrl_jax.checkpoint import save_config
from mbrl_jax.stats import aggregate_scores, aggregate_with_ci, stratified_bootstrap


def test_human_normalized_scores():
    assert len(GAMES) == 26
    assert human_normalized("Pong", -20.7) == pytest.approx(0.0)
    assert human_normalized("Pong", 14.6) == pytest.approx(1.0)
    assert human_normalized("Breakout", 16.1) == pytest.approx(0.5)  # (16.1 - 1.7) / (30.5 - 1.7)
    with pytest.raises(ValueError, match="'Breakout-MinAtar' is not an Atari 100k game.*Alien"):
        human_normalized("Breakout-MinAtar", 1.0)
    assert game_of("envpool:Pong-v5") == "Pong"
    assert game_of("gymnasium:ALE/MsPacman-v5") == "MsPacman"
    assert game_of("envpool:CartPole-v1") is None and game_of("Breakout-MinAtar") is None


def test_aggregates_of_a_score_matrix():
    scores = np.array([[0.0, 1.0, 2.0, 10.0], [2.0, 3.0, 4.0, 30.0]])  # [runs, tasks]
    # task means 1, 2, 3, 20: mean 6.5, median 2.5; IQM: the middle four of 0,1,2,2,3,4,10,30 -> 2.75
    assert aggregate_scores(scores) == pytest.approx({"mean": 6.5, "median": 2.5, "iqm": 2.75})


def test_stratified_bootstrap_resamples_runs_within_each_task():
    # Tasks differ, runs of a task agree: resampling within tasks never changes anything (resampling the
    # flattened matrix would).
    same_runs = np.tile(np.arange(5.0), (3, 1))
    for name, (value, low, high) in aggregate_with_ci(same_runs, resamples=200).items():
        assert value == low == high, name
    # Two runs, two tasks: each task's mean of two draws with replacement is (a, (a+b)/2, b) with
    # probabilities (1/4, 1/2, 1/4), independently per task; the bootstrap's mean follows that exactly.
    scores = np.array([[0.0, 10.0], [1.0, 30.0]])
    exact: dict[float, float] = {}
    weights = {0: 0.25, 1: 0.5, 2: 0.25}
    for (i, pi), (j, pj) in itertools.product(weights.items(), weights.items()):
        task0 = (0.0 * (2 - i) + 1.0 * i) / 2
        task1 = (10.0 * (2 - j) + 30.0 * j) / 2
        value = (task0 + task1) / 2
        exact[value] = exact.get(value, 0.0) + pi * pj
    drawn = stratified_bootstrap(scores, resamples=20000, seed=1)["mean"]
    for value, p in exact.items():
        assert np.mean(np.isclose(drawn, value)) == pytest.approx(p, abs=0.015), value
    assert set(np.round(drawn, 6)) <= set(np.round(list(exact), 6))


def _run(folder, name, env, evals):
    run = folder / name
    run.mkdir(parents=True)
    save_config(run, {"env": {"name": env}})
    rows = [{"env_steps": 1000 * (i + 1), "eval_return": v} for i, v in enumerate(evals)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_turns_a_folder_of_runs_into_the_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    _run(runs, "pong-s0", "envpool:Pong-v5", [-21.0, 14.6])  # the last evaluation counts: HNS 1
    _run(runs, "pong-s1", "envpool:Pong-v5", [-20.7])  # 0
    _run(runs, "breakout-s0", "envpool:Breakout-v5", [16.1])  # 0.5
    _run(runs, "breakout-s1", "gymnasium:ALE/Breakout-v5", [1.7])  # 0
    _run(runs, "cartpole-s0", "CartPole-v1", [500.0])  # not an Atari game: left out
    png = tmp_path / "scores.png"
    assert report_main([str(runs), "--png", str(png), "--resamples", "500"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    hns = {g["game"]: g["hns"] for g in report["per_game"]}
    assert hns == pytest.approx({"Breakout": 0.25, "Pong": 0.5})
    # over runs x games: 1, 0, 0.5, 0 -> IQM 0.25 (middle two of 0, 0, 0.5, 1); game means 0.5, 0.25
    values = {k: a["value"] for k, a in report["aggregate"].items()}
    assert values == pytest.approx({"mean": 0.375, "median": 0.375, "iqm": 0.25})
    assert all(a["low"] <= a["value"] <= a["high"] for a in report["aggregate"].values())
    assert len(report["skipped"]) == 1 and "CartPole-v1" in report["skipped"][0]
    assert png.stat().st_size > 0

    _run(runs, "pong-s2", "envpool:Pong-v5", [0.0])
    assert report_main([str(runs)]) == 2
    assert "same number of runs per game" in capsys.readouterr().err
