"""Run by tests/test_sweep.py in a fresh process that it starts with XLA's default CPU emitter (the suite's
processes compile with the older one, tests/conftest.py): trains a sweep and each of its seeds' single runs.
Writes under OUT_DIR the sweep's run folder (`sweep/`), the records that the sweep and the single runs
returned (`records.json`: {"sweep": {seed: rows}, "single": {seed: rows}}) and their parameters
(`params.npz`: `sweep/<leaf>` with the seed axis first, `single/<seed>/<leaf>`).

Usage: sweep_against_single_runs.py OUT_DIR SEEDS_JSON OVERRIDES_JSON"""

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from mbrl_jax.config import make_config  # noqa: E402
from mbrl_jax.runner import train, train_sweep  # noqa: E402

cache = os.environ.get("MBRL_JAX_TEST_CACHE")
if cache:
    jax.config.update("jax_compilation_cache_dir", cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)

out_dir, seeds, overrides = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
config = make_config("debug", **overrides)
sweep_state, swept = train_sweep(config, seeds, out_dir / "sweep", progress=False)
params = {f"sweep/{j}": leaf for j, leaf in enumerate(jax.device_get(jax.tree.leaves(sweep_state.agent)))}
singles = {}
for seed in seeds:
    state, singles[seed] = train(config.replace(**{"run.seed": seed}), None, progress=False)
    for j, leaf in enumerate(jax.device_get(jax.tree.leaves(state.agent))):
        params[f"single/{seed}/{j}"] = leaf
np.savez(out_dir / "params.npz", **params)
(out_dir / "records.json").write_text(json.dumps({"sweep": swept, "single": singles}))
