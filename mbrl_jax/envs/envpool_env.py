"""envpool adapter on the host loop: `envpool:<task_id>` ("envpool:CartPole-v1", "envpool:Pong-v5") makes
`envpool.make(task_id, env_type="gymnasium", num_envs=N, batch_size=N)`, stepped synchronously from Python.

envpool auto-resets the NEXT_STEP way (the call after an episode's end returns the reset observation with
reward 0 and both flags False), the convention of `mbrl_jax.envs.base`, so `HostVecEnv` does the
bookkeeping. envpool seeds its envs at construction, so `reset(seed)` builds the pool again with that seed.

Atari tasks take DreamerV3's settings: 64 x 64 RGB frames (one, no stacking), action repeat 4 (envpool's
default frame_skip), sticky actions with probability `env.sticky_actions` (0.25, DreamerV3's Atari setting;
0 in its Atari 100k setting), no reward clipping, no life-loss episodes, and envpool's default minimal action
set, 30 no-op starts and 27,000-step (108k-frame) limit. Frames come channel-first from envpool and are
transposed to H x W x C.

Requires envpool >= 1.2 (0.8.x wheels are built for NumPy 1 and return corrupted arrays under NumPy 2).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mbrl_jax.config import ConfigError, did_you_mean
from mbrl_jax.envs.base import EnvSpec
from mbrl_jax.envs.gymnasium_env import HostVecEnv, spaces_spec

PREFIX = "envpool:"
ATARI_OPTIONS = {
    "img_height": 64,
    "img_width": 64,
    "gray_scale": False,
    "stack_num": 1,
    "reward_clip": False,
    "episodic_life": False,
}


def is_envpool(name: str) -> bool:
    return name.startswith(PREFIX)


def _envpool() -> Any:
    try:
        import envpool
    except ImportError as err:
        raise ConfigError(
            f"envpool names need the envpool package (>= 1.2): pip install 'envpool>=1.2' ({err})"
        ) from None
    return envpool


def _task(name: str, sticky_actions: float = 0.25) -> tuple[str, dict]:
    """The envpool task id of `name` and the options it is made with."""
    envpool = _envpool()
    task = name.removeprefix(PREFIX)
    tasks = envpool.list_all_envs()
    if task not in tasks:
        raise ConfigError(
            f"env.name={name!r}: {task!r} is not an envpool task{did_you_mean(task, tasks)} "
            f"(names are '{PREFIX}' followed by an envpool task id, e.g. '{PREFIX}CartPole-v1')"
        )
    if not _atari(envpool, task):
        return task, {}
    return task, {**ATARI_OPTIONS, "repeat_action_probability": sticky_actions}


def _atari(envpool: Any, task: str) -> bool:
    config = envpool.make_spec(task).config
    return hasattr(config, "img_height") and hasattr(config, "repeat_action_probability")


def is_envpool_atari(name: str) -> bool:
    """Whether `name` is an Atari task on envpool ("envpool:Pong-v5"); ConfigError for an unknown task."""
    return is_envpool(name) and _atari(_envpool(), _task(name)[0])


def _channels_last(space: Any) -> Any:
    """envpool's C x H x W image space as H x W x C (other spaces unchanged)."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box) and len(space.shape) == 3:
        return spaces.Box(0, 255, (space.shape[1], space.shape[2], space.shape[0]), np.uint8)
    return space


def _make(task: str, options: dict, num_envs: int, seed: int) -> Any:
    return _envpool().make(
        task, env_type="gymnasium", num_envs=num_envs, batch_size=num_envs, seed=seed, **options
    )


def _spec(name: str, pool: Any) -> EnvSpec:
    steps = pool.spec.config.max_episode_steps
    return spaces_spec(name, _channels_last(pool.observation_space), pool.action_space, steps)


def env_spec(name: str) -> EnvSpec:
    """Spec of the envpool task `name` ("envpool:<task_id>"); ConfigError for an unknown task, a missing
    envpool or spaces the agents cannot take."""
    task, options = _task(name)
    pool = _make(task, options, 1, 0)
    try:
        return _spec(name, pool)
    finally:
        pool.close()


class EnvpoolVecEnv(HostVecEnv):
    """`num_envs` envs of one envpool task, stepped all at once (synchronous: batch_size = num_envs)."""

    def __init__(self, name: str, num_envs: int, sticky_actions: float = 0.25):
        self._task, self._options = _task(name, sticky_actions)
        self._n = num_envs
        self.pool = _make(self._task, self._options, num_envs, 0)
        self._image = len(self.pool.observation_space.shape) == 3
        self._start(name, num_envs, _spec(name, self.pool), self.pool.action_space)
        self._ids = np.arange(num_envs, dtype=np.int32)

    def _layout(self, obs: np.ndarray) -> np.ndarray:
        return np.transpose(obs, (0, 2, 3, 1)) if self._image else obs

    def _reset(self, seed: int) -> np.ndarray:
        self.pool.close()
        self.pool = _make(self._task, self._options, self._n, seed)
        obs, info = self.pool.reset(self._ids)
        return self._layout(obs[np.argsort(info["env_id"])])

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated, info = self.pool.step(action, self._ids)
        order = np.argsort(info["env_id"])  # rows back in env order
        return self._layout(obs[order]), reward[order], terminated[order], truncated[order]

    def close(self) -> None:
        self.pool.close()
