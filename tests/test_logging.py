"""MetricLogger (JSONL/CSV/TensorBoard), crash behaviour of the JSONL, and the Progress display."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from mbrl_jax.logging import MetricLogger, Progress, read_metrics

RECORDS = [
    {"env_steps": 100, "episode_return": 1.5, "updates": 3},
    {"env_steps": 200, "episode_return": 2.25, "updates": 6, "loss_model": 0.1 + 0.2},
    {"env_steps": 300, "eval_return": -7.0, "updates": 9},  # a new key, and a missing one
    {"env_steps": 400, "episode_return": np.float32(3.5), "updates": np.int64(12), "loss_model": 1e-12},
]
PLAIN = [{k: (v.item() if isinstance(v, np.generic) else v) for k, v in r.items()} for r in RECORDS]


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def tb_scalars(tb_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars in tensorboardX event files, read by parsing the TFRecord framing by hand."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4  # u64 length, u32 crc, payload, u32 crc
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_jsonl_csv_and_tensorboard_hold_the_records(tmp_path: Path) -> None:
    with MetricLogger(tmp_path) as logger:
        for record in RECORDS:
            logger.write(record)
    assert read_metrics(tmp_path) == PLAIN
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == PLAIN

    columns, rows = read_csv(tmp_path / "metrics.csv")
    assert columns == ["env_steps", "episode_return", "updates", "loss_model", "eval_return"]
    assert len(rows) == len(PLAIN)
    for row, record in zip(rows, PLAIN, strict=True):
        for column in columns:
            if column in record:
                assert type(record[column])(row[column]) == record[column], (column, row)
            else:
                assert row[column] == ""

    scalars = tb_scalars(tmp_path / "tb")
    assert scalars["episode_return"] == [(100, 1.5), (200, 2.25), (400, 3.5)]
    assert scalars["eval_return"] == [(300, -7.0)]
    assert "env_steps" not in scalars


def test_reopen_appends_and_csv_matches(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        logger.write(RECORDS[0])
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        for record in RECORDS[1:]:
            logger.write(record)
    assert read_metrics(tmp_path) == PLAIN
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert [int(r["env_steps"]) for r in rows] == [100, 200, 300, 400]


def test_write_rejects_records_without_int_env_steps(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        with pytest.raises(KeyError, match="env_steps"):
            logger.write({"loss": 1.0})
        with pytest.raises(TypeError, match="env_steps"):
            logger.write({"env_steps": 1.5})
    assert read_metrics(tmp_path) == []


def test_truncate_after_makes_the_resumed_file_equal_the_uninterrupted_one(tmp_path: Path) -> None:
    full = [{"env_steps": s, "loss": s / 7} for s in range(100, 600, 100)]
    with MetricLogger(tmp_path / "uninterrupted", tensorboard=False) as logger:
        for record in full:
            logger.write(record)
    resumed = tmp_path / "resumed"
    with MetricLogger(resumed) as logger:  # crashed after 500, last checkpoint at 300
        for record in full:
            logger.write(record)
    with MetricLogger(resumed) as logger:
        assert logger.truncate_after(300) == 2
        assert [r["env_steps"] for r in read_metrics(resumed)] == [100, 200, 300]
        for record in full[3:]:
            logger.write(record)
    assert (resumed / "metrics.jsonl").read_bytes() == (tmp_path / "uninterrupted/metrics.jsonl").read_bytes()
    assert (resumed / "metrics.csv").read_bytes() == (tmp_path / "uninterrupted/metrics.csv").read_bytes()
    assert not [p for p in resumed.iterdir() if p.name.endswith(".tmp")]


def test_partial_trailing_line_is_repaired(tmp_path: Path) -> None:
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        logger.write(RECORDS[0])
        logger.write(RECORDS[1])
    with (tmp_path / "metrics.jsonl").open("ab") as f:
        f.write(b'{"env_steps": 300, "episode_re')  # a crash mid-line
    assert read_metrics(tmp_path) == PLAIN[:2]  # readers skip the partial tail
    with MetricLogger(tmp_path, tensorboard=False) as logger:
        assert (tmp_path / "metrics.jsonl").read_bytes().endswith(b"\n")
        logger.write(RECORDS[2])
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == PLAIN[:3]


CHILD = textwrap.dedent(
    """
    import sys
    from mbrl_jax.logging import MetricLogger
    logger = MetricLogger(sys.argv[1], tensorboard=False)
    step = 0
    while True:
        logger.write({"env_steps": step, "loss_model": step * 0.5, "note": "x" * (step % 97)})
        step += 1
    """
)


def test_sigkill_while_writing_keeps_every_complete_line(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)])
    path = tmp_path / "metrics.jsonl"
    try:
        deadline = time.monotonic() + 30
        while not (path.exists() and path.read_bytes().count(b"\n") >= 50):
            assert time.monotonic() < deadline and proc.poll() is None, "writer did not start"
            time.sleep(0.01)
        seen = path.read_bytes().count(b"\n")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    data = path.read_bytes()
    assert data.endswith(b"\n"), "a partial line is visible after SIGKILL"
    records = [json.loads(line) for line in data.splitlines()]  # every line parses
    assert len(records) >= seen
    assert [r["env_steps"] for r in records] == list(range(len(records)))
    assert all(r["loss_model"] == r["env_steps"] * 0.5 for r in records)
    with MetricLogger(tmp_path, tensorboard=False):  # reopening keeps them all
        pass
    assert read_metrics(tmp_path) == records
    assert os.path.getsize(tmp_path / "metrics.csv") > 0


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_plain_line_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress(30000, initial_steps=2000, stream=stream) as progress:
        progress.update(3000, {"updates": 10})
        progress.update(
            4000,
            {"updates": 35, "episode_return": 23.5, "eval_return": 41.2, "loss_model": 3.1234, "other": 9},
        )
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    assert " upd/s" not in lines[0]  # resumed run: no updates baseline yet
    line = lines[1]
    assert line.startswith("env_steps 4000/30000 | eta ")
    for part in (" steps/s", " upd/s", "return 23.5", "eval 41.2", "loss_model 3.12"):
        assert part in line, (part, line)
    assert "other" not in line and "\n" not in line


def test_progress_bar_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "160")
    stream = FakeTerminal()
    with Progress(1000, stream=stream) as progress:
        assert progress.is_terminal
        progress.update(500, {"episode_return": 12.0, "loss_actor": 0.5})
    out = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", stream.getvalue())  # drop ANSI escapes
    assert "500/1000" in out and "return 12.0" in out and "loss_actor 0.5" in out and "eta" in out
    assert progress.last_line == ""  # no plain lines on a terminal


def test_tensorboard_reads_each_step_once_after_truncation(tmp_path: Path) -> None:
    """The viewer installed by `make setup` (tensorboard, a dependency) reads the event files, and after a
    resume's truncation every step appears exactly once, the dropped ones not at all."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricLogger(tmp_path) as logger:
        for step in (100, 200, 300, 400):
            logger.write({"env_steps": step, "loss": step / 10})
    with MetricLogger(tmp_path) as logger:  # resumed from the checkpoint at 200
        assert logger.truncate_after(200) == 2
        for step in (300, 400, 500):
            logger.write({"env_steps": step, "loss": step / 100})
    accumulator = EventAccumulator(str(tmp_path / "tb"))
    accumulator.Reload()
    seen = [(e.step, e.value) for e in accumulator.Scalars("loss")]
    assert seen == [(100, 10.0), (200, 20.0), (300, 3.0), (400, 4.0), (500, 5.0)]
    assert tb_scalars(tmp_path / "tb")["loss"] == seen  # the raw files too, not only the viewer's purge


def test_truncate_to_nothing_empties_every_sink(tmp_path: Path) -> None:
    with MetricLogger(tmp_path) as logger:
        logger.write(RECORDS[0])
        logger.write(RECORDS[1])
    with MetricLogger(tmp_path) as logger:
        assert logger.truncate_after(-1) == 2
    assert read_metrics(tmp_path) == []
    assert read_csv(tmp_path / "metrics.csv") == ([], [])
    assert tb_scalars(tmp_path / "tb") == {}
