"""Metric sinks (JSONL, CSV, TensorBoard) and a console progress display.

`<logdir>/metrics.jsonl` is the source of truth: one JSON object per line, each written with a single
`write(2)` on an O_APPEND descriptor and fsynced, so a SIGKILL keeps every line already written. A partial
last line (power loss, or a writer other than this class) is cut off when the file is next opened by a
`MetricLogger`, and skipped by `read_metrics`. `<logdir>/metrics.csv` is a view derived from it: rows are
appended while the columns (the union of keys, in order of first appearance, `env_steps` first) stay the same,
and the whole file is regenerated from the JSONL (temp file + os.replace) when a new key appears, on open, and
after `truncate_after`. TensorBoard scalars go to `<logdir>/tb/` with step = env_steps; `truncate_after`
rebuilds them from the JSONL too.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from mbrl_jax.fileio import atomic_write_bytes, to_plain

Metrics = Mapping[str, Any]
JSONL = "metrics.jsonl"
CSV = "metrics.csv"
TB = "tb"


def _parse_lines(data: bytes) -> list[dict[str, Any]]:
    """Records of the complete (newline-terminated) lines in `data`; a partial tail is ignored."""
    end = data.rfind(b"\n")
    return [json.loads(line) for line in data[: end + 1].splitlines() if line.strip()]


def read_metrics(logdir: str | Path) -> list[dict[str, Any]]:
    """All complete records of `<logdir>/metrics.jsonl` in file order ([] if the file is missing)."""
    path = Path(logdir) / JSONL
    return _parse_lines(path.read_bytes()) if path.exists() else []


def _csv_cell(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)  # shortest string that round-trips: float(cell) == value
    if isinstance(value, bool):
        return str(int(value))
    return "" if value is None else str(value)


def _csv_text(columns: list[str], rows: list[Metrics], header: bool = True) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if header and columns:
        writer.writerow(columns)
    writer.writerows([_csv_cell(row.get(c)) for c in columns] for row in rows)
    return out.getvalue()


def _columns(records: list[Metrics]) -> list[str]:
    seen = {"env_steps": None}
    for record in records:
        seen.update(dict.fromkeys(record))
    return list(seen) if records else []


class MetricLogger:
    """Append-only metric records for one run; every record needs an integer `env_steps`.

    Args:
      logdir: run folder (created if missing); reopening an existing one appends to it.
      tensorboard: also write TensorBoard scalars under `<logdir>/tb/`.
    """

    def __init__(self, logdir: str | Path, *, tensorboard: bool = True) -> None:
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.logdir / JSONL
        self.csv_path = self.logdir / CSV
        self._tensorboard = tensorboard
        self._tb: Any = None  # SummaryWriter, made on first write
        self._fd = os.open(self.jsonl_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        self._repair_tail()
        self._rewrite_csv()

    def _repair_tail(self) -> None:
        """Cut a partial last line (no trailing newline) left by a crash mid-write."""
        data = self.jsonl_path.read_bytes()
        if data and not data.endswith(b"\n"):
            os.ftruncate(self._fd, data.rfind(b"\n") + 1)
            os.fsync(self._fd)

    def _rewrite_csv(self) -> None:
        records = read_metrics(self.logdir)
        self._columns = _columns(records)
        atomic_write_bytes(self.csv_path, _csv_text(self._columns, records).encode(), durable=False)

    def write(self, metrics: Metrics) -> None:
        """Append one record: a flat dict of scalars (numpy/jax scalars are converted) with `env_steps`."""
        if "env_steps" not in metrics:
            raise KeyError("every metrics record needs an 'env_steps' key")
        record = {k: to_plain(v) for k, v in metrics.items()}
        nested = sorted(k for k, v in record.items() if isinstance(v, list | dict))
        if nested:
            raise TypeError(f"metric values must be scalars; not so for {nested}")
        if isinstance(record["env_steps"], float) and record["env_steps"].is_integer():
            record["env_steps"] = int(record["env_steps"])
        if not isinstance(record["env_steps"], int) or isinstance(record["env_steps"], bool):
            raise TypeError(f"env_steps must be an int, got {metrics['env_steps']!r}")
        line = (json.dumps(record) + "\n").encode()
        view = memoryview(line)
        while view:  # one write(2) in practice; loop only guards against short writes
            view = view[os.write(self._fd, view) :]
        os.fsync(self._fd)
        if set(record) <= set(self._columns):
            with self.csv_path.open("a", encoding="utf-8") as f:
                f.write(_csv_text(self._columns, [record], header=False))
        else:
            self._rewrite_csv()
        self._write_tensorboard(record)

    def _write_tensorboard(self, record: Metrics, directory: Path | None = None) -> None:
        if not self._tensorboard:
            return
        if self._tb is None:
            from tensorboardX import SummaryWriter  # slow import, only when used

            # tensorboardX names a file by the second and the host only: a writer opened in the same second
            # would overwrite the last one's file. The first step in the name keeps them apart, in step order
            # (TensorBoard reads a folder's files in name order).
            suffix = f".from{record['env_steps']:012d}"
            self._tb = SummaryWriter(str(directory or self.logdir / TB), filename_suffix=suffix)
        step = record["env_steps"]
        for key, value in record.items():
            if key != "env_steps" and isinstance(value, int | float) and not isinstance(value, bool):
                self._tb.add_scalar(key, value, global_step=step)
        self._tb.flush()

    def truncate_after(self, env_steps: int) -> int:
        """Drop records with env_steps > `env_steps` (resuming from a checkpoint; -1 empties the files);
        returns how many were dropped. The JSONL is replaced atomically and the CSV and TensorBoard files are
        rebuilt from it, so every sink holds each kept record exactly once."""
        records = read_metrics(self.logdir)
        kept = [r for r in records if r["env_steps"] <= env_steps]
        if len(kept) < len(records):
            text = "".join(json.dumps(r) + "\n" for r in kept)
            os.close(self._fd)
            atomic_write_bytes(self.jsonl_path, text.encode(), durable=True)
            self._fd = os.open(self.jsonl_path, os.O_RDWR | os.O_APPEND)
            self._rewrite_csv()
        if self._tensorboard:
            self._rebuild_tensorboard(kept)
        return len(records) - len(kept)

    def _rebuild_tensorboard(self, records: list[Metrics]) -> None:
        """Replace `tb/` by event files holding exactly `records` (written beside it, then swapped in)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        tb, fresh, old = (self.logdir / name for name in (TB, TB + ".new", TB + ".old"))
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        for record in records:
            self._write_tensorboard(record, directory=fresh)
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if tb.exists():
            os.replace(tb, old)
        if fresh.exists():
            os.replace(fresh, tb)
        shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        """Flush and close every sink; the CSV is regenerated from the JSONL one last time."""
        if self._fd < 0:
            return
        os.close(self._fd)
        self._fd = -1
        self._rewrite_csv()
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _fmt_num(value: Any, spec: str) -> str:
    return format(value, spec) if isinstance(value, int | float) else str(value)


class Progress:
    """Console progress for a training run: a rich bar on a terminal, one plain line per update otherwise.

    Rates are measured between consecutive `update` calls (so compile time only colours the first one);
    `upd/s` comes from the cumulative counter `metrics['updates']` when present (from the second update on
    for a resumed run). The ETA uses the average env-step rate since the start.

    Args:
      total_steps: env steps at which the run ends.
      initial_steps: env steps already done (a resumed run).
      stream: where to write (default sys.stdout); the bar is used only when it is a terminal.
    """

    def __init__(self, total_steps: int, initial_steps: int = 0, stream: TextIO | None = None) -> None:
        self.total_steps = int(total_steps)
        self.stream = stream if stream is not None else sys.stdout
        self.is_terminal = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start_steps = self._last_steps = int(initial_steps)
        # a fresh run starts from 0 updates; a resumed one has no baseline until its first update
        self._last_updates: float | None = 0.0 if initial_steps == 0 else None
        self._start_time = self._last_time = time.monotonic()
        self._bar: Any = None
        self._task: Any = None
        self.last_line = ""

    def __enter__(self) -> Progress:
        self._start_time = self._last_time = time.monotonic()
        if self.is_terminal:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as RichProgress
            from rich.table import Column

            self._bar = RichProgress(
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta {task.fields[eta]}"),
                # the stats wrap onto further lines rather than squeezing the bar on a narrow terminal
                TextColumn("{task.fields[stats]}", table_column=Column(overflow="fold")),
                console=Console(file=self.stream),
            )
            self._bar.start()
            self._task = self._bar.add_task(
                "train", total=self.total_steps, completed=self._start_steps, stats="", eta="?"
            )
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _stats(self, env_steps: int, metrics: Metrics) -> list[str]:
        now = time.monotonic()
        dt = max(now - self._last_time, 1e-9)
        parts = [f"{(env_steps - self._last_steps) / dt:.0f} steps/s"]
        updates = metrics.get("updates")
        if updates is not None:
            if self._last_updates is not None:
                parts.append(f"{(float(updates) - self._last_updates) / dt:.1f} upd/s")
            self._last_updates = float(updates)
        if "episode_return" in metrics:
            parts.append(f"return {_fmt_num(metrics['episode_return'], '.1f')}")
        if "eval_return" in metrics:
            parts.append(f"eval {_fmt_num(metrics['eval_return'], '.1f')}")
        parts += [f"{k} {_fmt_num(v, '.3g')}" for k, v in sorted(metrics.items()) if k.startswith("loss")]
        self._last_time, self._last_steps = now, env_steps
        return parts

    def eta_seconds(self, env_steps: int) -> float:
        """Remaining seconds at the average rate since the start (inf before any progress)."""
        done = env_steps - self._start_steps
        elapsed = time.monotonic() - self._start_time
        return (self.total_steps - env_steps) * elapsed / done if done > 0 else math.inf

    def update(self, env_steps: int, metrics: Metrics | None = None) -> None:
        """Show progress at `env_steps` with the rates and the return/loss entries of `metrics`."""
        env_steps = int(env_steps)
        metrics = metrics or {}
        eta = self.eta_seconds(env_steps)
        stats = self._stats(env_steps, metrics)
        if self._bar is not None:
            self._bar.update(self._task, completed=env_steps, stats=" | ".join(stats), eta=_fmt_duration(eta))
            return
        head = [f"env_steps {env_steps}/{self.total_steps}", f"eta {_fmt_duration(eta)}"]
        self.last_line = " | ".join(head + stats)
        print(self.last_line, file=self.stream, flush=True)
