"""envpool adapters: `envpool:<task_id>` ("envpool:CartPole-v1", "envpool:Pong-v5") makes
`envpool.make(task_id, env_type="gymnasium", num_envs=N, batch_size=N)`, stepped synchronously, in one of
two ways (`env.loop`):

- `EnvpoolXlaVecEnv` (the compiled loop): a `VecEnv` whose `step` is envpool's XLA interface (`pool.xla()`:
  send and receive as XLA custom calls), so the pool steps inside the compiled chunk, between acting and
  learning, with no Python per step. The pool itself lives in C++ on the host: its address is bound into
  the compiled program, and the train state holds only a small token array that orders the calls. So the
  env state is not in a checkpoint: a restored run restarts every env (`Trainer.restart`).
- `EnvpoolVecEnv` (the host loop): the same pool stepped from Python (`mbrl_jax.host_loop`), for platforms
  without the XLA interface (TPU) and tasks whose arrays are float64 (MuJoCo, DMC), which a float32 JAX
  program cannot exchange with the pool.

envpool auto-resets the NEXT_STEP way (the call after an episode's end returns the reset observation with
reward 0 and both flags False), the convention of `mbrl_jax.envs.base`, so both adapters keep the same
episode bookkeeping. envpool seeds its envs at construction (env i with seed + i): the host loop's
`reset(seed)` builds the pool again; the XLA adapter's pool is seeded once, when it is made, and its
`reset` starts new episodes from where each env's generator stands.

DMC tasks ("envpool:WalkerWalk-v1") keep their Dict observations, keyed as the suite names them, as float32
(scalars as vectors of one), and take the host loop. envpool's own `frame_skip` repeats an action in DMC but
keeps only the last reward and counts its time limit in agent steps, so action repeat (`env.action_repeat`,
DreamerV3's 2 for DMC) is done here instead: rewards summed, 1,000 env steps per episode.

Atari tasks take DreamerV3's settings: 64 x 64 RGB frames (one, no stacking), action repeat 4 (envpool's
default frame_skip), sticky actions with probability `env.sticky_actions` (0.25, DreamerV3's Atari setting;
0 in its Atari 100k setting), no reward clipping, no life-loss episodes, and envpool's default minimal action
set, 30 no-op starts and 27,000-step (108k-frame) limit. Frames come channel-first from envpool and are
transposed to H x W x C.

Requires envpool >= 1.2 (0.8.x wheels are built for NumPy 1 and return corrupted arrays under NumPy 2).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.experimental import io_callback

from mbrl_jax.envs.base import (
    EnvSpec,
    TimeStep,
    VecEnv,
    first_timestep,
    next_step_timestep,
    obs_dtype,
    rescale_action,
)
from mbrl_jax.envs.gymnasium_env import HostVecEnv, spaces_spec
from mbrl_jax.errors import ConfigError, did_you_mean

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


def is_envpool_dmc(name: str) -> bool:
    """Whether `name` is a DeepMind Control Suite task on envpool ("envpool:CheetahRun-v1")."""
    return is_envpool(name) and type(_envpool().make_spec(_task(name)[0])).__name__.startswith("Dmc")


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


def _spec(name: str, pool: Any, action_repeat: int = 1) -> EnvSpec:
    """The task's spec; with an action repeat, its time limit in agent steps (envpool's is in env steps)."""
    steps = pool.spec.config.max_episode_steps
    if steps % action_repeat:
        raise ConfigError(
            f"env.action_repeat={action_repeat} with env.name={name!r}: its episodes last {steps} env steps, "
            "not a multiple of the repeat"
        )
    obs_space = _channels_last(pool.observation_space)
    return spaces_spec(name, obs_space, pool.action_space, steps // action_repeat)


def env_spec(name: str, action_repeat: int = 1) -> EnvSpec:
    """Spec of the envpool task `name` ("envpool:<task_id>"); ConfigError for an unknown task, a missing
    envpool or spaces the agents cannot take."""
    task, options = _task(name)
    pool = _make(task, options, 1, 0)
    try:
        return _spec(name, pool, action_repeat)
    finally:
        pool.close()


class EnvpoolVecEnv(HostVecEnv):
    """`num_envs` envs of one envpool task, stepped all at once (synchronous: batch_size = num_envs).
    Dict observations (DMC's) keep their keys; `action_repeat` is `HostVecEnv`'s (DMC only)."""

    def __init__(self, name: str, num_envs: int, sticky_actions: float = 0.25, action_repeat: int = 1):
        self._task, self._options = _task(name, sticky_actions)
        self._n = num_envs
        self.pool = _make(self._task, self._options, num_envs, 0)
        space = self.pool.observation_space
        self._image = space.shape is not None and len(space.shape) == 3
        spec = _spec(name, self.pool, action_repeat)
        self._start(name, num_envs, spec, self.pool.action_space, action_repeat)
        self._ids = np.arange(num_envs, dtype=np.int32)

    def _layout(self, obs: np.ndarray | dict, order: np.ndarray) -> np.ndarray | dict:
        """Rows back in env order (`order`); frames as H x W x C."""
        if isinstance(obs, dict):
            return {key: value[order] for key, value in obs.items()}
        return np.transpose(obs[order], (0, 2, 3, 1)) if self._image else obs[order]

    def _reset(self, seed: int) -> np.ndarray | dict:
        self.pool.close()
        self.pool = _make(self._task, self._options, self._n, seed)
        obs, info = self.pool.reset(self._ids)
        return self._layout(obs, np.argsort(info["env_id"]))

    def _step(self, action: np.ndarray) -> tuple[np.ndarray | dict, np.ndarray, np.ndarray, np.ndarray]:
        obs, reward, terminated, truncated, info = self.pool.step(action, self._ids)
        order = np.argsort(info["env_id"])
        return self._layout(obs, order), reward[order], terminated[order], truncated[order]

    def close(self) -> None:
        self.pool.close()


def xla_unsupported(name: str) -> str | None:
    """Why the envpool task `name` cannot step inside a compiled program here (None if it can): envpool has
    no XLA interface on TPU, macOS or Windows; the XLA adapter takes one observation array, not a Dict (DMC);
    and a float64 array (MuJoCo observations and actions) cannot cross into a JAX program without
    `jax_enable_x64`."""
    import sys

    if jax.default_backend() == "tpu":
        return "envpool has no XLA interface on TPU"
    if sys.platform != "linux":
        return f"envpool's XLA interface is Linux-only (this is {sys.platform})"
    spec = _envpool().make_spec(_task(name)[0])
    if spec.observation_space.shape is None:
        return "its observations are a Dict, which (with DMC's action repeat) only the host adapter takes"
    if jax.config.jax_enable_x64:
        return None
    wide = [
        key
        for key, array in (*spec.state_array_spec.items(), *spec.action_array_spec.items())
        if np.dtype(array.dtype).itemsize == 8
    ]
    if wide:
        return f"its arrays {', '.join(wide)} are 64-bit, and this JAX runs without jax_enable_x64"
    return None


@struct.dataclass
class EnvpoolState:
    """`EnvpoolXlaVecEnv`'s state: the token that orders the pool's XLA calls, and the episode counters."""

    token: jax.Array  # uint8 [8]: passes through every call (the pool's address is bound in the program)
    is_last: jax.Array  # [N] bool, the last TimeStep's is_last: those envs reset on the next step
    episode_return: jax.Array  # [N] float32
    episode_length: jax.Array  # [N] int32


class EnvpoolXlaVecEnv(VecEnv):
    """`num_envs` envs of one envpool task stepped through envpool's XLA interface (module docstring).

    `reset` and `step` are jittable and scannable, but not vmappable (one pool, one program), and they are
    not pure: they advance the pool. The pool is seeded with `seed` when made (env i with seed + i); `reset`'s
    key is unused. A program that calls them runs only in this process, with this object alive.
    """

    host_state = True  # the envs' state is in the pool, not in `EnvpoolState`: a restore must `reset`

    def __init__(self, name: str, num_envs: int, seed: int = 0, sticky_actions: float = 0.25):
        if not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs must be a positive int, got {num_envs!r}")
        reason = xla_unsupported(name)
        if reason is not None:
            raise ConfigError(
                f"env.name={name!r} cannot step inside the compiled loop: {reason}; use env.loop=host"
            )
        task, options = _task(name, sticky_actions)
        self.pool = _make(task, options, num_envs, seed)
        self.num_envs, self.spec = num_envs, _spec(name, self.pool)
        token, self._recv, self._send, _ = self.pool.xla()
        self._token = np.array(token)
        self._key = next(iter(self.spec.obs_shapes))
        self._dtype = obs_dtype(self.spec.obs_shapes[self._key])
        self._image = len(self.pool.observation_space.shape) == 3
        self._ids = np.arange(num_envs, dtype=np.int32)
        space = self.pool.action_space
        if not self.spec.discrete:
            self._low = np.asarray(space.low, np.float32).reshape(-1)
            self._high = np.asarray(space.high, np.float32).reshape(-1)
            self._shape, self._action_dtype = space.shape, space.dtype

    def _start_reset(self, token: np.ndarray) -> np.ndarray:
        """Host side of `reset`: every env starts a new episode; `recv` then returns the observations."""
        self.pool.async_reset()
        return np.asarray(token)

    def _receive(self, token: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
        token, (obs, reward, terminated, truncated, info) = self._recv(token)
        order = jnp.argsort(info["env_id"])  # rows back in env order
        obs = obs[order]
        if self._image:
            obs = jnp.transpose(obs, (0, 2, 3, 1))  # envpool's C x H x W frames as H x W x C
        return token, obs.astype(self._dtype), reward[order], terminated[order], truncated[order]

    def reset(self, key: jax.Array) -> tuple[EnvpoolState, TimeStep]:
        token = jnp.asarray(self._token)
        token = io_callback(self._start_reset, jax.ShapeDtypeStruct(token.shape, token.dtype), token)
        token, obs, *_ = self._receive(token)
        ts = first_timestep({self._key: obs})
        return EnvpoolState(token, ts.is_last, ts.episode_return, ts.episode_length), ts

    def _env_action(self, action: jax.Array) -> jax.Array:
        if self.spec.discrete:
            return action.astype(jnp.int32).reshape(self.num_envs)
        action = rescale_action(action.reshape(self.num_envs, -1), self._low, self._high)
        return action.reshape(self.num_envs, *self._shape).astype(self._action_dtype)

    def step(self, state: EnvpoolState, action: jax.Array, key: jax.Array) -> tuple[EnvpoolState, TimeStep]:
        """Envs whose last TimeStep had is_last=True ignore their action and start a new episode (envpool's
        NEXT_STEP auto-reset): is_first=True, reward 0 (`next_step_timestep`, as `HostVecEnv.step`)."""
        token = self._send(state.token, self._env_action(action), self._ids)
        token, obs, reward, terminated, truncated = self._receive(token)
        ts = next_step_timestep(
            jnp,
            {self._key: obs},
            state.is_last,
            reward,
            terminated,
            truncated,
            state.episode_return,
            state.episode_length,
        )
        return EnvpoolState(token, ts.is_last, ts.episode_return, ts.episode_length), ts

    def close(self) -> None:
        self.pool.close()


def per_seed(fns: list, when: bool = False):
    """One function of a program vmapped over `len(fns)` seeds whose seed s must run `fns[s]`, such as
    stepping seed s's envpool pool, which no batching rule can do: under `jax.vmap` over the seeds it calls
    `fns[s]` on seed s's slice of the arguments (unbatched arguments as they are) and stacks the results
    along the seed axis (`jax.custom_batching.custom_vmap`); outside vmap it is `fns[0]`.

    `when`: the first argument is a bool, the same for every seed, and the calls run only where it is true
    (one `lax.cond` around them all; zeros otherwise). JAX refuses a `lax.cond` whose branches have side
    effects (envpool's resets) under vmap; here the cond is taken outside the vmap."""

    def pick(tree, tree_batched, s):
        return jax.tree.map(lambda x, b: x[s] if b else x, tree, tree_batched)

    def each(size, batched, *args):
        if size != len(fns):
            raise ValueError(f"a per-seed function of {len(fns)} seeds vmapped over {size}")
        outs = [fn(*(pick(a, b, s) for a, b in zip(args, batched, strict=True))) for s, fn in enumerate(fns)]
        return jax.tree.map(lambda *xs: jnp.stack(xs), *outs)

    if not when:

        @jax.custom_batching.custom_vmap
        def call(*args):
            return fns[0](*args)

        @call.def_vmap
        def call_per_seed(size, batched, *args):
            out = each(size, batched, *args)
            return out, jax.tree.map(lambda _: True, out)

        return call

    def skip(fn):
        return lambda *args: jax.tree.map(jnp.zeros_like, jax.eval_shape(fn, *args))

    @jax.custom_batching.custom_vmap
    def call_when(flag, *args):
        return jax.lax.cond(flag, fns[0], skip(fns[0]), *args)

    @call_when.def_vmap
    def call_when_per_seed(size, batched, flag, *args):
        if batched[0]:
            raise ValueError("per_seed(when=True): the condition must be the same for every seed (unbatched)")

        def run(*args):
            return each(size, batched[1:], *args)

        out = jax.lax.cond(flag, run, skip(run), *args)
        return out, jax.tree.map(lambda _: True, out)

    return call_when


class EnvpoolXlaSweep(VecEnv):
    """The envs of a seed sweep on envpool's XLA interface: one `EnvpoolXlaVecEnv` pool per seed, each seeded
    as that seed's single run seeds its pool (`seeds[s] + i` for env i), for a program vmapped over the
    sweep's leading seed axis (`mbrl_jax.parallel`). A pool is C++ on the host and cannot be vmapped, so
    `reset` and `step` are `per_seed` functions: under vmap, pool s takes seed s's slice (one XLA custom call
    per pool) and the results are stacked along the seed axis, while the agent, the replay and the learner
    around them are vmapped as in a gymnax sweep. Called outside vmap they step the first seed's pool alone.
    """

    host_state = True

    def __init__(self, name: str, num_envs: int, seeds: list[int], sticky_actions: float = 0.25):
        self.pools = [EnvpoolXlaVecEnv(name, num_envs, seed, sticky_actions) for seed in seeds]
        self.num_envs, self.spec = num_envs, self.pools[0].spec
        self._reset = per_seed([pool.reset for pool in self.pools])
        self._step = per_seed(
            [lambda state, action, pool=pool: pool.step(state, action, None) for pool in self.pools]
        )

    def reset(self, key: jax.Array) -> tuple[EnvpoolState, TimeStep]:
        return self._reset(key)

    def step(self, state: EnvpoolState, action: jax.Array, key: jax.Array) -> tuple[EnvpoolState, TimeStep]:
        return self._step(state, action)

    def close(self) -> None:
        for pool in self.pools:
            pool.close()
