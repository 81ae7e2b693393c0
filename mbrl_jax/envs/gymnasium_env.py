"""Gymnasium adapter: N Gymnasium envs stepped on the host, with the same `EnvSpec` and `TimeStep` (numpy
arrays) and the same DreamerV3 reset convention as the on-device adapters.

Names: `gymnasium:<id>`, e.g. "gymnasium:CartPole-v1", makes `gymnasium.make(<id>)` N times inside a
`gymnasium.vector.SyncVectorEnv`. Such envs run in Python, so training drives them from the host loop
(`mbrl_jax.host_loop`), never inside a compiled program.

Gymnasium >= 1.0 vector envs auto-reset in `AutoresetMode.NEXT_STEP` (set explicitly here): the step that
ends an episode returns the terminal observation, and the next `step` ignores that env's action and returns
the first observation of a new episode with reward 0 and terminated = truncated = False. That is exactly the
convention of `mbrl_jax.envs.base`; the adapter only marks that step `is_first` and restarts its episode
counters. Seeding: `reset(seed)` seeds env i with `seed + i` (Gymnasium's rule); later auto-resets draw from
each env's own generator, so a run is reproducible from its seed.

Observation spaces, as DreamerV3 takes observations: a Box image (H, W, C) of uint8 is an image; any other
Box goes flattened into a vector (a scalar as a vector of one; a 2-D board of n x m as n * m floats), a
MultiBinary too; a Discrete space of n values is one-hot (n floats); a Dict keeps its keys and a Tuple numbers
its members ("0", "1", ...; nested spaces join their keys with "/"). A lone Box or Discrete is "image" or
"vector". Other spaces (MultiDiscrete, Text, Graph, Sequence, non-uint8 H x W x C arrays) are refused, with
the reason, before anything compiles.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any

import numpy as np

from mbrl_jax.envs.base import EnvSpec, TimeStep, next_step_timestep, obs_dtype
from mbrl_jax.errors import ConfigError, did_you_mean

PREFIX = "gymnasium:"


def is_gymnasium(name: str) -> bool:
    return name.startswith(PREFIX)


def _gym_id(name: str) -> str:
    import gymnasium

    env_id = name.removeprefix(PREFIX)
    if env_id not in gymnasium.registry:
        ids = list(gymnasium.registry)
        raise ConfigError(
            f"env.name={name!r}: {env_id!r} is not a registered Gymnasium env"
            f"{did_you_mean(env_id, ids)} (names are '{PREFIX}' followed by a Gymnasium id, e.g. "
            f"'{PREFIX}CartPole-v1'; an env from another package needs that package imported)"
        )
    return env_id


def _spec(name: str, env: Any) -> EnvSpec:
    """EnvSpec of one (unbatched) Gymnasium env; ConfigError for spaces the agents cannot take."""
    steps = env.spec.max_episode_steps if env.spec is not None else None
    return spaces_spec(name, env.observation_space, env.action_space, steps)


@dataclasses.dataclass(frozen=True)
class ObsLeaf:
    """One observation key the agent sees, and where it comes from in the env's (batched) observation."""

    key: str
    path: tuple[str | int, ...]  # Dict keys and Tuple indices from the top of the observation to this leaf
    shape: tuple[int, ...]  # as the agent sees it: (H, W, C) for an image, (d,) for anything else
    onehot_start: int | None = None  # a Discrete space's first value: one-hot over shape[0] values


def _obs_leaves(name: str, obs_space: Any) -> list[ObsLeaf]:
    """The observation keys of one env's observation space (see the module docstring); ConfigError, naming
    the space and what is allowed, for a space the agents cannot take."""
    from gymnasium import spaces

    allowed = (
        "the adapter takes Box arrays (a uint8 (H, W, C) one as an image, any other flattened into a "
        "vector), MultiBinary, Discrete (one-hot), and Dict and Tuple spaces of those"
    )
    leaves = []

    def walk(space: Any, path: tuple) -> None:
        key = "/".join(map(str, path))
        where = f" (key {key!r})" if path else ""
        if isinstance(space, spaces.Dict | spaces.Tuple):
            items = space.spaces.items() if isinstance(space, spaces.Dict) else enumerate(space.spaces)
            for sub, member in items:
                walk(member, (*path, sub))
        elif isinstance(space, spaces.Discrete):
            leaves.append(ObsLeaf(key or "vector", path, (int(space.n),), int(space.start)))
        elif isinstance(space, spaces.Box | spaces.MultiBinary):
            shape = tuple(space.shape)
            if len(shape) == 3 and space.dtype != np.uint8:
                raise ConfigError(
                    f"env.name={name!r} has {space.dtype} images of shape {shape}{where}; the adapter takes "
                    "uint8 images (H, W, C), as DreamerV3's image encoder does"
                )
            if len(shape) != 3:
                shape = (math.prod(shape),)  # a scalar as a vector of one (DMC's way), a board flattened
            leaves.append(ObsLeaf(key or ("image" if len(shape) == 3 else "vector"), path, shape))
        else:
            raise ConfigError(f"env.name={name!r} has observation space {obs_space}{where}; {allowed}")

    walk(obs_space, ())
    return leaves


def _obs_shapes(name: str, obs_space: Any) -> dict[str, tuple[int, ...]]:
    """{key: shape} of one env's observation space, as the agent sees it (`_obs_leaves`)."""
    return {leaf.key: leaf.shape for leaf in _obs_leaves(name, obs_space)}


def gather_obs(leaves: list[ObsLeaf], obs: Any, n: int) -> dict[str, np.ndarray]:
    """A vector env's batched observation (an array, or dicts / tuples of them, each [n, ...]) -> {key: [n,
    ...]} per leaf, Discrete values one-hot (float32 [n, values])."""
    out = {}
    for leaf in leaves:
        value = obs
        for step in leaf.path:
            value = value[step]
        if leaf.onehot_start is not None:
            index = np.asarray(value, np.int64).reshape(n) - leaf.onehot_start
            value = np.eye(leaf.shape[0], dtype=np.float32)[index]
        out[leaf.key] = np.asarray(value)
    return out


def spaces_spec(name: str, obs_space: Any, act_space: Any, steps: int | None) -> EnvSpec:
    """EnvSpec from Gymnasium spaces of one env (images as H x W x C) and its time limit; ConfigError for
    spaces the agents cannot take."""
    from gymnasium import spaces

    obs_shapes = _obs_shapes(name, obs_space)
    if isinstance(act_space, spaces.Discrete):
        discrete, action_dim = True, int(act_space.n)
    elif (
        isinstance(act_space, spaces.Box)
        and np.all(np.isfinite(act_space.low))
        and np.all(np.isfinite(act_space.high))
    ):
        discrete, action_dim = False, math.prod(act_space.shape)
    else:
        raise ConfigError(
            f"env.name={name!r} has action space {act_space}; the adapter takes Discrete or a bounded Box"
        )
    if steps is None:
        raise ConfigError(
            f"env.name={name!r} has no time limit (spec.max_episode_steps is None); register it with "
            "max_episode_steps: evaluation needs episodes that end"
        )
    return EnvSpec(name, obs_shapes, discrete, action_dim, int(steps))


def env_spec(name: str) -> EnvSpec:
    """Spec of the Gymnasium env `name` ("gymnasium:<id>"); ConfigError for an unknown id or a space the
    adapter cannot take."""
    import gymnasium

    env = gymnasium.make(_gym_id(name))
    try:
        return _spec(name, env)
    finally:
        env.close()


class HostVecEnv(abc.ABC):
    """N envs on the host behind the `VecEnv` conventions (reset rule, `TimeStep` fields), but impure:
    `reset(seed)` and `step(action)` change the envs and return numpy arrays. A backend that auto-resets
    in the NEXT_STEP way (Gymnasium's vector envs, envpool) implements `_reset(seed) -> obs` and
    `_step(env_action) -> (obs, reward, terminated, truncated)`; this class keeps the episode counters.

    Actions in the env format of `VecEnv`: discrete -> int [N]; continuous -> float [N, action_dim] in
    [-1, 1], rescaled to the Box's bounds (`_low`, `_high`, `_shape`, set by the backend).

    Action repeat (`repeat` > 1, DreamerV3's DMC setting): each `step` applies the action `repeat` times and
    sums the rewards. It is for tasks whose episodes all last the same number of env steps, a multiple of
    `repeat` (DMC): the envs then stay in lockstep and every episode ends on a repeat's last step. An episode
    that ends anywhere else raises RuntimeError rather than silently step into the next episode.
    """

    name: str
    num_envs: int
    spec: EnvSpec

    def _start(self, name: str, num_envs: int, spec: EnvSpec, action_space: Any, repeat: int = 1) -> None:
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        if not isinstance(repeat, int) or repeat < 1:
            raise ValueError(f"repeat must be a positive int, got {repeat!r}")
        self.name, self.num_envs, self.spec, self._repeat = name, num_envs, spec, repeat
        if not spec.discrete:
            self._low = np.asarray(action_space.low, np.float32).reshape(-1)
            self._high = np.asarray(action_space.high, np.float32).reshape(-1)
            self._shape = action_space.shape
        self._is_last = np.zeros(num_envs, bool)
        self._return = np.zeros(num_envs, np.float32)
        self._length = np.zeros(num_envs, np.int32)

    @abc.abstractmethod
    def _reset(self, seed: int) -> np.ndarray:
        """Resets every env (seeded) and returns the first observations."""

    @abc.abstractmethod
    def _step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Steps every env with env-format actions: (obs, reward, terminated, truncated)."""

    def random_actions(self, rng: np.random.Generator) -> np.ndarray:
        """Uniformly random actions for all N envs in the env format `step` takes."""
        if self.spec.discrete:
            return rng.integers(0, self.spec.action_dim, self.num_envs)
        return rng.uniform(-1.0, 1.0, (self.num_envs, self.spec.action_dim))

    def _obs(self, obs: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The backend's batched observations (an array, or a dict of arrays) as the spec's dict, in the
        dtypes of `obs_dtype` (DMC's float64 as float32, its scalars as vectors of one)."""
        if not isinstance(obs, dict):
            obs = {next(iter(self.spec.obs_shapes)): obs}
        return {
            key: np.asarray(obs[key], obs_dtype(shape)).reshape(self.num_envs, *shape)
            for key, shape in self.spec.obs_shapes.items()
        }

    def reset(self, seed: int) -> TimeStep:
        """Start all N envs from `seed`. Returns a TimeStep with is_first all True."""
        obs = self._reset(int(seed))
        n = self.num_envs
        self._is_last[:] = False
        self._return[:] = 0.0
        self._length[:] = 0
        false = np.zeros(n, bool)
        return TimeStep(
            obs=self._obs(obs),
            reward=np.zeros(n, np.float32),
            is_first=np.ones(n, bool),
            is_last=false,
            is_terminal=false.copy(),
            episode_return=self._return.copy(),
            episode_length=self._length.copy(),
        )

    def _env_action(self, action: np.ndarray) -> np.ndarray:
        if self.spec.discrete:
            return np.asarray(action).astype(np.int64).reshape(self.num_envs)
        action = np.clip(np.asarray(action, np.float32).reshape(self.num_envs, -1), -1.0, 1.0)
        action = self._low + (action + 1.0) * 0.5 * (self._high - self._low)
        return action.reshape(self.num_envs, *self._shape)

    def step(self, action: np.ndarray) -> TimeStep:
        """One call for all envs. Envs whose last TimeStep had is_last=True ignore their action and start a
        new episode (is_first=True, reward 0): the backends' NEXT_STEP auto-reset."""
        was_last = self._is_last.copy()
        obs, reward, terminated, truncated = self._repeat_step(self._env_action(action), was_last)
        ts = next_step_timestep(
            np, self._obs(obs), was_last, reward, terminated, truncated, self._return, self._length
        )
        # copies: `reset` overwrites the counters in place, and the returned TimeStep must not change
        self._is_last, self._return, self._length = (
            ts.is_last.copy(),
            ts.episode_return.copy(),
            ts.episode_length.copy(),
        )
        return ts

    def _repeat_step(self, action: np.ndarray, was_last: np.ndarray) -> tuple[np.ndarray, ...]:
        """`_step` `repeat` times with the same action, rewards summed; once on the call that restarts
        episodes (the backend's reset step, where the action is ignored)."""
        obs, reward, terminated, truncated = self._step(action)
        if self._repeat == 1 or was_last.all():
            return obs, reward, terminated, truncated
        if was_last.any():  # some envs restart on this call while the others step on
            self._out_of_step(np.flatnonzero(was_last), "restarted", 1)
        reward = np.asarray(reward, np.float64)
        for sub_step in range(1, self._repeat):
            ended = np.asarray(terminated, bool) | np.asarray(truncated, bool)
            if ended.any():
                self._out_of_step(np.flatnonzero(ended), "ended", sub_step)
            obs, step_reward, terminated, truncated = self._step(action)
            reward = reward + step_reward
        return obs, reward, terminated, truncated

    def _out_of_step(self, envs: np.ndarray, what: str, sub_step: int) -> None:
        raise RuntimeError(
            f"{self.name}: env(s) {envs.tolist()} {what} out of step with the others (at step {sub_step} "
            f"of an action repeat of {self._repeat}); action repeat takes tasks whose episodes all last the "
            "same number of env steps, a multiple of the repeat (DMC)"
        )

    def close(self) -> None:  # noqa: B027 (a backend with nothing to release keeps this no-op)
        pass


class GymnasiumVecEnv(HostVecEnv):
    """`num_envs` Gymnasium envs in a `SyncVectorEnv` (auto-reset NEXT_STEP); env i is seeded with
    `seed + i` (Gymnasium's rule)."""

    def __init__(self, name: str, num_envs: int):
        import gymnasium
        from gymnasium.vector import AutoresetMode, SyncVectorEnv

        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        env_id = _gym_id(name)
        self.envs = SyncVectorEnv(
            [lambda: gymnasium.make(env_id) for _ in range(num_envs)], autoreset_mode=AutoresetMode.NEXT_STEP
        )
        self._start(name, num_envs, _spec(name, self.envs.envs[0]), self.envs.single_action_space)
        self._leaves = _obs_leaves(name, self.envs.single_observation_space)

    def _obs(self, obs: Any) -> dict[str, np.ndarray]:
        """Dict and Tuple members by their keys, Discrete values one-hot, then `HostVecEnv._obs`."""
        return super()._obs(gather_obs(self._leaves, obs, self.num_envs))

    def _reset(self, seed: int) -> np.ndarray:
        return self.envs.reset(seed=seed)[0]

    def _step(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated, _ = self.envs.step(action)
        return obs, reward, terminated, truncated

    def close(self) -> None:
        self.envs.close()
