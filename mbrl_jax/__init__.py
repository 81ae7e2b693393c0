"""mbrl_jax: model-based RL in JAX."""
