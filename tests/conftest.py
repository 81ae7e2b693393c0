import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

# Tests compile the same small programs many times (each run, each resume): a persistent compilation cache
# shared by the whole session turns the repeats into cache hits.
jax.config.update(
    "jax_compilation_cache_dir", os.environ.get("MBRL_JAX_TEST_CACHE", "/tmp/mbrl_jax_test_xla_cache")
)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
