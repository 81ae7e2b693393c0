"""The step budget: a run does the env steps it was asked for (the last chunk cut at the budget), says so
before it starts, warns where the envs' lockstep cannot meet it, and runs of every length share one compiled
chunk."""

import warnings

import jax
import numpy as np
import pytest

from experiments import run as run_cli
from mbrl_jax.config import make_config
from mbrl_jax.logging import read_metrics
from mbrl_jax.runner import describe_budget, make_programs, train
from mbrl_jax.trainer import plan_chunk

# runs its compiled programs more than it compiles them: optimized (tests/conftest.py)
pytestmark = pytest.mark.optimized

# debug preset: 2 envs, iterations of 4 env steps (2 per env, then one update); prefill 64, chunks of 100
SMALL = {"run.chunk_steps": 100, "replay.prefill": 64, "replay.batch_length": 16, "run.checkpoint_every": 100}


def _config(steps: int, **more):
    return make_config("debug", **{**SMALL, "run.steps": steps, **more})


def _budget_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "the run does" in str(w.message)]


def test_describe_budget_counts_prefill_whole_chunks_and_the_cut_one():
    assert describe_budget(_config(364)) == ("364 env steps = 64 prefill + 3 chunks of 100", True)
    assert describe_budget(_config(400)) == (
        "400 env steps = 64 prefill + 3 chunks of 100 + a last chunk of 36",
        True,
    )
    assert describe_budget(_config(100)) == ("100 env steps = 64 prefill + one chunk of 36", True)
    text, exact = describe_budget(_config(402))  # iterations of 4 env steps: 402 is out of reach
    assert not exact
    assert text.startswith("404 env steps = 64 prefill + 3 chunks of 100 + a last chunk of 40 (")
    assert "run.steps=402 rounded up to whole iterations of 4 env steps (2 envs x 2 steps)" in text
    text, exact = describe_budget(_config(400, **{"replay.prefill": 67}))
    assert text.startswith("400 env steps = 68 prefill + 3 chunks of 100 + a last chunk of 32 (")
    assert "replay.prefill=67 taken as 68 (whole steps of 2 envs)" in text and exact


@pytest.mark.parametrize("steps", [364, 400])  # a multiple of the chunk, and one that is not
def test_library_run_does_exactly_the_steps_asked(tmp_path, steps, capsys):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, records = train(_config(steps), tmp_path, progress=True)
    assert _budget_warnings(caught) == []  # a budget that is met is not warned about
    assert f"mbrl_jax: {describe_budget(_config(steps))[0]}" in capsys.readouterr().out
    assert records[-1]["env_steps"] == steps
    assert [r["env_steps"] for r in read_metrics(tmp_path)] == [r["env_steps"] for r in records]
    assert "eval_return" in records[-1]  # the last chunk, whole or cut, evaluates
    config = _config(steps)
    iterations = (steps - 64) // config.env_steps_per_iteration
    assert records[-1]["updates"] == iterations * config.updates_per_iteration


def test_a_budget_the_envs_cannot_meet_is_warned_and_the_steps_done_are_reported(tmp_path):
    with pytest.warns(UserWarning, match=r"the run does 304 env steps = 64 prefill .*run\.steps=302 rounded"):
        _, records = train(_config(302), tmp_path, progress=False)
    assert records[-1]["env_steps"] == 304


def test_cli_states_the_budget_and_does_it(tmp_path, capsys):
    args = ["--preset", "debug", "--logdir", str(tmp_path), "--no-progress", "--steps", "400"]
    args += [f"{k}={v}" for k, v in SMALL.items()]
    assert run_cli.main(args) == 0
    out = capsys.readouterr().out
    assert "400 env steps = 64 prefill + 3 chunks of 100 + a last chunk of 36 (train ratio" in out
    assert read_metrics(tmp_path)[-1]["env_steps"] == 400
    assert run_cli.main(["--logdir", str(tmp_path)]) == 0
    assert "finished at 400 env steps; pass --steps M > 400 to continue" in capsys.readouterr().out


def test_runs_of_every_length_share_one_chunk_program():
    """The chunk's plan is an argument of the compiled chunk, not a constant in it: a resume with a raised
    budget, and every test or user run of another length, hit the compilation cache."""
    texts = []
    for steps in (364, 400, 5_000):
        programs = make_programs(_config(steps))
        target = jax.eval_shape(programs.init, programs.key)
        texts.append(programs.chunk.lower(target, plan_chunk(_config(steps), 64, steps)).as_text())
    assert texts[0] == texts[1] == texts[2]


def test_raising_the_budget_of_a_run_cut_inside_a_chunk_continues_its_state_exactly(tmp_path):
    """A run cut at 400 (inside the chunk 364-464), then continued to 564, passes through the same states as a
    straight 564 run: the cut chunk leaves the key as the whole chunk's first iterations would. Only the rows
    differ: the continued run has one more (at 400), and its row at 464 covers the 64 steps after the cut."""
    straight, straight_records = train(_config(564), tmp_path / "straight", progress=False)
    train(_config(400), tmp_path / "cut", progress=False)
    state, records = train(_config(564), tmp_path / "cut", progress=False)
    for a, b in zip(
        jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(jax.device_get(straight)), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    rows = read_metrics(tmp_path / "cut")
    assert [r["env_steps"] for r in rows] == [164, 264, 364, 400, 464, 564]
    # the last chunk is whole in both: the same metrics, its evaluation too
    assert rows[-1] == straight_records[-1]
    assert rows[:3] == read_metrics(tmp_path / "straight")[:3]
