"""One process of a two-process run joined by jax.distributed on 127.0.0.1 (2 virtual CPU devices each),
started by tests/test_multihost.py: `multihost_run.py PROCESS_ID PORT LOGDIR[:STOP_AFTER_CHUNKS] ...`
trains one run into each LOGDIR in turn (stopping after STOP_AFTER_CHUNKS chunks where given) and prints one
JSON line per run: the process, its env steps and a digest of its (replicated) parameters."""

import hashlib
import json
import os
import sys
from pathlib import Path

os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mbrl_jax.parallel import initialize_hosts  # noqa: E402

process_id, port, runs = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
initialize_hosts(f"127.0.0.1:{port}", 2, process_id)
cache = os.environ.get("MBRL_JAX_TEST_CACHE")
if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

from mbrl_jax.config import make_config  # noqa: E402
from mbrl_jax.runner import train  # noqa: E402

config = make_config(
    "debug",
    **{
        "env.num_envs": 4,
        "replay.batch_size": 8,
        "run.devices": 4,
        "run.steps": 208,
        "run.chunk_steps": 40,
        "run.checkpoint_every": 40,
        "replay.prefill": 128,
        "replay.batch_length": 16,
    },
)
for run in runs:
    logdir, _, stop = run.partition(":")
    stop_after = int(stop) if stop else None
    state, records = train(config, Path(logdir), progress=False, stop_after_chunks=stop_after)
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(state.agent.params):
        digest.update(np.asarray(leaf).tobytes())
    local_envs = [shard.data.shape[0] for shard in state.prev_action.addressable_shards]
    print(
        json.dumps(
            {
                "process": jax.process_index(),
                "processes": jax.process_count(),
                "devices": jax.device_count(),
                "local_envs": local_envs,
                "env_steps": int(np.asarray(state.env_steps)),
                "params": digest.hexdigest(),
                "records": len(records),
            }
        ),
        flush=True,
    )
jax.distributed.shutdown()
