"""The host loop: training with envs stepped on the host (Gymnasium, envpool) by jitted pieces of trainer.py.

    trainer = make_host_train(config)          # env.name "gymnasium:CartPole-v1", "envpool:Pong-v5"
    state = trainer.init(key)                  # resets the envs, prefills the replay with random steps
    state, metrics = trainer.run_chunk(state)  # same chunk, same metrics as the compiled loop's

One iteration is what the compiled loop does, with the env step in Python: per env step one jitted call
acts for all N envs and stores the current step in the replay (`policy_action`, `store_step`), the action
comes back as one [N] (or [N, A]) array, the envs step on the host, and their `TimeStep` goes to the device
as one batched transfer; then one jitted call runs `updates_per_iteration` learner updates
(`make_learn_step`).
The train state is the same `TrainState` pytree (its `env_state` an unused placeholder), so the runner's
logging, checkpoints and non-finite guard work unchanged.

Resume: a host env's state (a Python object) is not in the checkpoint. A restored state restarts every env
with a reset seeded from the state's key and env-step count, drops the step each env was on (it was not yet
stored: the interrupted episodes end without `is_last` in the replay, which only needs `is_first` at starts),
and starts the policy carry afresh. Everything in the checkpoint (agent, optimiser, replay, keys, counters)
continues exactly, and resuming the same checkpoint twice gives the same run; the run equals an
uninterrupted one up to the checkpoint, not after it (the envs are in other episodes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mbrl_jax.agents import env_action, make_agent, random_action
from mbrl_jax.config import Config
from mbrl_jax.envs import HostVecEnv, TimeStep, make_host_env
from mbrl_jax.envs.base import obs_dtype
from mbrl_jax.trainer import (
    CUT_EVAL_KEY,
    ChunkPlan,
    TrainState,
    chunk_metrics,
    eval_due,
    fresh_episodes,
    initial_state,
    make_learn_step,
    policy_action,
    store_step,
)


def seed_from_key(key: jax.Array) -> int:
    """A reset seed for a host env (a non-negative int31) drawn from a JAX key."""
    return int(jax.random.randint(key, (), 0, 2**31 - 1))


def to_device(ts: TimeStep) -> TimeStep:
    """The host envs' numpy TimeStep as device arrays, in one transfer."""
    return jax.device_put(ts)


@dataclasses.dataclass
class HostTrainer:
    """`make_host_train`'s result: `init` and `run_chunk` as `Trainer`'s, but impure (they step the host
    envs held here), so not jittable or vmappable; `abstract_state(key)` is the state's shapes (what
    checkpoint restore needs)."""

    config: Config
    env: HostVecEnv
    eval_env: HostVecEnv
    init: Callable  # key -> TrainState
    run_chunk: Callable  # (TrainState, plan=None) -> (TrainState, metrics), as trainer.run_chunk
    evaluate: Callable  # (agent state, key) -> mean return of eval_episodes episodes, a Python float
    abstract_state: Callable  # key -> TrainState of jax.ShapeDtypeStruct


def make_host_train(config: Config) -> HostTrainer:
    """The training loop of `config` (a host env) as jitted pieces driven from Python; see the module
    docstring. `run_chunk` returns the same metrics as the compiled loop's (`make_train`)."""
    c = config
    n = c.env.num_envs
    env = make_host_env(c.env.name, n, c.env.sticky_actions, c.env.action_repeat)
    eval_env = make_host_env(c.env.name, c.run.eval_episodes, c.env.sticky_actions, c.env.action_repeat)
    spec = env.spec
    agent = make_agent(c, spec)
    steps_per_env = c.env_steps_per_iteration // n
    no_context = agent.replay_context(agent.initial_carry(n))
    learn_step = make_learn_step(c, agent)
    placeholder = jnp.int32(0)  # TrainState.env_state: the host envs' state lives in `env`
    current: dict[str, Any] = {"ts": None}  # the host envs' last TimeStep (numpy); None: not started

    def start(k_agent, k_loop, ts: TimeStep) -> TrainState:
        return initial_state(c, agent, spec.action_dim, k_agent, k_loop, placeholder, ts)

    def random_act(state: TrainState) -> tuple[TrainState, jax.Array]:
        key, k_act, _ = jax.random.split(state.key, 3)  # the compiled loop's split; its env key is unused
        action = random_action(spec, n, k_act)
        return store_step(state.replace(key=key), action, no_context), env_action(spec, action)

    def policy_act(state: TrainState) -> tuple[TrainState, jax.Array]:
        state, action, policy, _ = policy_action(agent, state)
        state = store_step(state, action, agent.replay_context(policy)).replace(policy=policy)
        return state, env_action(spec, action)

    def learn(state: TrainState) -> tuple[TrainState, dict]:
        state, metrics = jax.lax.scan(learn_step, state, None, length=c.updates_per_iteration)
        return state, jax.tree.map(jnp.mean, metrics)

    def restart(state: TrainState, ts: TimeStep) -> TrainState:
        return fresh_episodes(agent, state, state.env_state, ts)

    def eval_act(agent_state, carry, obs, prev_action, is_first, key):
        mode = c.run.eval_policy == "mode"
        action, carry = agent.act(agent_state, carry, obs, prev_action, is_first, key, mode=mode)
        return action, carry, env_action(spec, action)

    start_jit = jax.jit(start)
    random_act_jit = jax.jit(random_act, donate_argnums=0)
    policy_act_jit = jax.jit(policy_act, donate_argnums=0)
    learn_jit = jax.jit(learn, donate_argnums=0)
    restart_jit = jax.jit(restart, donate_argnums=0)
    eval_act_jit = jax.jit(eval_act)

    def env_step(state: TrainState, action: jax.Array) -> TrainState:
        ts = env.step(np.asarray(action))
        current["ts"] = ts
        return state.replace(timestep=to_device(ts))

    def init(key) -> TrainState:
        k_agent, k_env, k_loop = jax.random.split(key, 3)
        ts = env.reset(seed_from_key(k_env))
        current["ts"] = ts
        state = start_jit(k_agent, k_loop, to_device(ts))
        for _ in range(c.prefill_steps_per_env):
            state, action = random_act_jit(state)
            state = env_step(state, action)
        return state

    def abstract_state(key) -> TrainState:
        obs = {k: jax.ShapeDtypeStruct((n, *shape), obs_dtype(shape)) for k, shape in spec.obs_shapes.items()}
        flags = jax.ShapeDtypeStruct((n,), jnp.bool_)
        ts = TimeStep(
            obs=obs,
            reward=jax.ShapeDtypeStruct((n,), jnp.float32),
            is_first=flags,
            is_last=flags,
            is_terminal=flags,
            episode_return=jax.ShapeDtypeStruct((n,), jnp.float32),
            episode_length=jax.ShapeDtypeStruct((n,), jnp.int32),
        )
        k = jax.ShapeDtypeStruct(key.shape, key.dtype)
        return jax.eval_shape(start, k, k, ts)

    def evaluate(agent_state, key) -> float:
        """Mean return of the first episode of each of `eval_episodes` host envs (as `episode_returns`)."""
        k_reset, k_loop = jax.random.split(key)
        ts = eval_env.reset(seed_from_key(k_reset))
        m = c.run.eval_episodes
        carry, prev = agent.initial_carry(m), jnp.zeros((m, spec.action_dim))
        ret, finished = np.zeros(m, np.float32), np.zeros(m, bool)
        steps = eval_env.spec.max_episode_steps + 1
        steps = min(steps, c.run.eval_steps) if c.run.eval_steps else steps
        for t in range(steps):
            obs, is_first = jax.device_put((ts.obs, ts.is_first))
            prev, carry, action = eval_act_jit(
                agent_state, carry, obs, prev, is_first, jax.random.fold_in(k_loop, t)
            )
            ts = eval_env.step(np.asarray(action))
            ret = np.where(finished, ret, ts.episode_return)
            finished |= ts.is_last
            if finished.all():
                break
        return float(np.mean(np.where(finished, ret, ts.episode_return)))

    def run_chunk(state: TrainState, plan: ChunkPlan | None = None) -> tuple[TrainState, dict]:
        if current["ts"] is None:  # a restored state: the envs start new episodes (module docstring)
            key = jax.random.fold_in(state.key, state.env_steps)
            ts = env.reset(seed_from_key(key))
            current["ts"] = ts
            state = restart_jit(state, to_device(ts))
        count, ret_sum, len_sum = np.int32(0), np.float32(0.0), np.float32(0.0)
        per_iteration = []
        iterations = c.iterations_per_chunk if plan is None else int(plan.iterations)
        boundary = plan is None or bool(plan.boundary)
        for _ in range(iterations):
            for _ in range(steps_per_env):
                ts = current["ts"]  # episode statistics of the step acted on, as the compiled loop counts
                count += ts.is_last.sum(dtype=np.int32)
                ret_sum += np.sum(ts.episode_return * ts.is_last, dtype=np.float32)
                len_sum += np.sum(ts.episode_length * ts.is_last, dtype=np.float32)
                state, action = policy_act_jit(state)
                state = env_step(state, action)
            state, metrics = learn_jit(state)
            per_iteration.append(metrics)
        metrics = jax.tree.map(lambda *xs: jnp.stack(xs), *per_iteration)
        key, k_eval = jax.random.split(state.key)
        if not boundary:  # cut at the budget: the key stays as the uncut chunk leaves it (trainer.run_chunk)
            key, k_eval = state.key, jax.random.fold_in(state.key, CUT_EVAL_KEY)
        state = state.replace(key=key)
        if plan is None:  # whole chunks, as the compiled loop's
            env_steps = int(state.env_steps)
            final = (env_steps - c.prefill_steps_per_env * n) // c.env_steps_per_chunk >= c.num_chunks
            evaluated = bool(eval_due(c, env_steps, final))
        else:
            evaluated = bool(plan.evaluate)
        eval_return = jnp.float32(evaluate(state.agent, k_eval) if evaluated else 0.0)
        episodes = (np.asarray(count), np.asarray(ret_sum), np.asarray(len_sum))
        evaluation = {"eval_return": eval_return}
        return state, chunk_metrics(c, state, metrics, episodes, evaluation, jnp.bool_(evaluated))

    return HostTrainer(c, env, eval_env, init, run_chunk, evaluate, abstract_state)
