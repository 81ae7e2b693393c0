"""mbrl_jax: model-based reinforcement learning in JAX (DreamerV3 with the whole loop compiled)."""

from mbrl_jax.config import Config, ConfigError, make_config
from mbrl_jax.runner import train, train_sweep
from mbrl_jax.trainer import TrainState, make_train

__all__ = ["Config", "ConfigError", "make_config", "make_train", "train", "train_sweep", "TrainState"]
__version__ = "0.1.0"
