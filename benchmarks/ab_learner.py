"""Learner update time of two commits, measured alternately in one command (an A/B comparison).

    python benchmarks/ab_learner.py --base b20bdc7 --head HEAD --name gru-layout --profile \
        --out benchmarks/results/ab-gru-layout.json

Each commit is exported with `git archive` to a temporary directory. Each round runs base, then head, each
in a fresh Python process that imports that tree's `mbrl_jax`, builds the preset's trainer and agent, samples
one batch from the prefilled replay and times `updates` learner updates in one jitted lax.scan, best of
`repeats` calls after a warm-up (as `throughput.py`'s learner figure, without the training chunks).
Alternating rounds spread the slow phases of a shared machine over both commits; the JSON keeps every round,
the load average before and after, and (with `--profile`) each commit's top XLA ops of one update.
`benchmarks/learning.py` turns `benchmarks/results/ab-*.json` into a section of RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runnable from a checkout without install

from benchmarks.report import emit  # noqa: E402

# Runs inside the exported tree; uses only APIs that both sides of a comparison have.
CHILD = r"""
import json, sys, time
import jax
from mbrl_jax.agents.dreamer import make_dreamer
from mbrl_jax.config import make_config, parse_overrides
from mbrl_jax.envs import env_spec
from mbrl_jax.replay import replay_sample
from mbrl_jax.trainer import make_train

preset, updates, repeats, profile = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
config = make_config(*preset.split(","), **parse_overrides(sys.argv[5:]))
# mbrl_jax 0.1 has a flat config, later versions a grouped one with dotted names
flat = config.flat() if hasattr(config, "flat") else config.to_dict()
get = lambda grouped, old: flat[grouped] if grouped in flat else flat[old]
trainer = make_train(config)
agent = make_dreamer(config, env_spec(get("env.name", "env")))
state = jax.jit(trainer.init)(jax.random.PRNGKey(get("run.seed", "seed")))
batch_size = get("replay.batch_size", "batch_size")
batch = replay_sample(state.replay, jax.random.PRNGKey(1), batch_size, config.sample_length)[0]

def many(agent_state, keys):
    def update(agent_state, k):
        agent_state, metrics, _ = agent.learn(agent_state, batch, k)
        return agent_state, metrics["loss_model"]
    return jax.lax.scan(update, agent_state, keys)

keys = jax.random.split(jax.random.PRNGKey(2), updates)
start = time.perf_counter()
run = jax.jit(many).lower(state.agent, keys).compile()
compile_s = time.perf_counter() - start
jax.block_until_ready(run(state.agent, keys))
times = []
for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run(state.agent, keys))
    times.append(time.perf_counter() - start)
out = {"learner_update_ms": 1e3 * min(times) / updates, "compile_s": compile_s}
if profile:
    from benchmarks.profile_ops import profile_markdown, profile_ops
    table = profile_ops(jax.jit(agent.learn), state.agent, batch, jax.random.PRNGKey(3), top=8)
    out["profile"] = profile_markdown(table)
print(json.dumps(out))
"""


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, check=True, capture_output=True, text=True).stdout.strip()


def export(rev: str, folder: Path) -> dict:
    """Writes the tree of `rev` into `folder`; returns {"rev", "commit", "subject"}."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    archive = folder.with_suffix(".tar")
    subprocess.run(["git", "archive", "-o", str(archive), commit], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(folder, filter="data")
    return {"rev": rev, "commit": commit, "subject": git("log", "-1", "--format=%s", commit)}


def measure(tree: Path, preset: str, updates: int, repeats: int, profile: bool, overrides: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tree)
    args = [preset, str(updates), str(repeats), "1" if profile else "0", *overrides]
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *args], cwd=tree, env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement in {tree} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--base", required=True, help="the commit compared against (A)")
    parser.add_argument("--head", default="HEAD", help="the commit measured (B)")
    parser.add_argument("--name", required=True, help="what the comparison is about, e.g. gru-layout")
    parser.add_argument("--preset", default="cartpole", help="comma-separated presets, left to right")
    parser.add_argument("--updates", type=int, default=5, help="learner updates per timed call")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per measurement (best kept)")
    parser.add_argument("--rounds", type=int, default=2, help="base-then-head rounds")
    parser.add_argument("--profile", action="store_true", help="add each commit's top XLA ops (last round)")
    parser.add_argument("--out", help="write the JSON object here too")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for both")
    args = parser.parse_args(argv)
    if min(args.updates, args.repeats, args.rounds) < 1:
        print("error: --updates, --repeats and --rounds must be >= 1", file=sys.stderr)
        return 2
    command = "python benchmarks/ab_learner.py " + " ".join(argv if argv is not None else sys.argv[1:])
    load_before = os.getloadavg()
    rounds, profiles = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        sides = {side: Path(tmp) / side for side in ("base", "head")}
        commits = {side: export(getattr(args, side), folder) for side, folder in sides.items()}
        for i in range(args.rounds):
            row = {}
            for side, tree in sides.items():
                profile = args.profile and i == args.rounds - 1
                result = measure(tree, args.preset, args.updates, args.repeats, profile, args.overrides)
                row[f"{side}_ms"] = result["learner_update_ms"]
                row[f"{side}_compile_s"] = result["compile_s"]
                if "profile" in result:
                    profiles[side] = result["profile"]
                print(
                    f"round {i + 1} {side}: {result['learner_update_ms']:.1f} ms", file=sys.stderr, flush=True
                )
            row["ratio"] = row["head_ms"] / row["base_ms"]
            rounds.append(row)
    import jax

    base_ms, head_ms = min(r["base_ms"] for r in rounds), min(r["head_ms"] for r in rounds)
    report = {
        "name": args.name,
        "command": command,
        "machine": {
            "device_kind": jax.devices()[0].device_kind,
            "cpu_count": os.cpu_count(),
            "jax_version": jax.__version__,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "settings": {
            "preset": args.preset,
            "updates": args.updates,
            "repeats": args.repeats,
            "rounds": args.rounds,
            "overrides": args.overrides,
        },
        "base": commits["base"],
        "head": commits["head"],
        "rounds": rounds,
        "base_ms": base_ms,
        "head_ms": head_ms,
        "ratio": head_ms / base_ms,
        "profiles": profiles,
    }
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
