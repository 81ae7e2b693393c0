"""Multi-host: two real processes joined by jax.distributed on 127.0.0.1 (2 virtual CPU devices each, gloo
collectives) train one run over the 4 global devices, end with the same parameters, checkpoint through
orbax's multi-host saving, and resume exactly from that checkpoint; only process 0 writes the logs."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mbrl_jax.logging import read_metrics

SCRIPT = Path(__file__).resolve().parent / "scripts" / "multihost_run.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(tmp_path: Path, runs: list[str]) -> list[list[dict]]:
    """Both processes of one launch, each training `runs` (LOGDIR[:STOP_AFTER_CHUNKS]) in turn; their JSON
    reports by run, process 0 first."""
    env = {
        **os.environ,
        "MBRL_JAX_TEST_CACHE": os.environ.get("MBRL_JAX_TEST_CACHE", "/tmp/mbrl_jax_test_xla_cache"),
    }
    port = str(_free_port())
    logs = [(tmp_path / f"process{i}.out", tmp_path / f"process{i}.err") for i in range(2)]
    procs = []  # output to files, not pipes: a full pipe would stall one process at a barrier
    for i, (out, err) in enumerate(logs):
        with open(out, "w") as stdout, open(err, "w") as stderr:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(SCRIPT), str(i), port, *runs], stdout=stdout, stderr=stderr, env=env
                )
            )
    reports = []
    for proc, (out, err) in zip(procs, logs, strict=True):
        proc.wait(timeout=1200)
        assert proc.returncode == 0, err.read_text()[-3000:]
        lines = [line for line in out.read_text().splitlines() if line.startswith("{")]
        reports.append([json.loads(line) for line in lines])
    assert all(len(r) == len(runs) for r in reports)
    return [sorted(by_run, key=lambda r: r["process"]) for by_run in zip(*reports, strict=True)]


@pytest.mark.slow  # two processes compile the run
def test_two_processes_train_one_run_checkpoint_and_resume_exactly(tmp_path):
    # one launch trains a run straight through, then a second one that checkpoints after its first chunk and
    # stops, then resumes that one: the resume restores the multi-host checkpoint from disk as a new launch
    # would, and runs the programs already compiled (a new launch's process 1 would compile them again: JAX
    # writes the compilation cache from process 0 only, and process 1's cache keys differ from process 0's)
    runs = [str(tmp_path / "straight"), f"{tmp_path / 'resumed'}:1", str(tmp_path / "resumed")]
    straight, partial, resumed = _launch(tmp_path, runs)
    assert [r["processes"] for r in straight] == [2, 2] and [r["devices"] for r in straight] == [4, 4]
    assert [r["local_envs"] for r in straight] == [[1, 1], [1, 1]]  # each device steps its own env
    assert straight[0]["params"] == straight[1]["params"]
    assert straight[0]["env_steps"] == straight[1]["env_steps"] == 208
    records = read_metrics(tmp_path / "straight")
    assert [r["env_steps"] for r in records] == [168, 208]  # one writer: no row twice

    assert [r["records"] for r in partial] == [1, 1] and partial[0]["params"] != straight[0]["params"]
    assert resumed[0]["params"] == resumed[1]["params"] == straight[0]["params"]
    assert [r["records"] for r in resumed] == [1, 1]  # the resume ran only the chunk after its checkpoint
    assert read_metrics(tmp_path / "resumed") == records
