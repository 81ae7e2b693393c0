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

A seed sweep (`make_host_train(config, seeds)`, `--seeds` with a host env): one set of host envs per seed
(an envpool pool or a Gymnasium vector env, and its own evaluation envs), each reset with the seed its single
run draws from that seed's key, so seed s's envs step as its single run's do. The jitted pieces are vmapped
over a leading seed axis ([S, ...] on every leaf of the state, as in a compiled sweep); per env step the
[S, N] actions come back in one transfer, each seed's envs step with their row, and the S `TimeStep`s go to
the device stacked, in one transfer. A sweep's resume restarts each seed's envs as that seed's single run
resumed from the same checkpoint would (`fold_in(key_s, env_steps_s)`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
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


def to_device(tree: Any) -> Any:
    """Host arrays (the envs' numpy TimeStep) as device arrays, in one transfer. Committed to the device,
    as the jitted pieces' outputs and a state restored from a checkpoint are: every call of a piece then has
    one signature, so a run compiles each piece once and a resumed run finds it in the compilation cache."""
    return jax.device_put(tree, jax.devices()[0])


@dataclasses.dataclass
class HostTrainer:
    """`make_host_train`'s result: `init` and `run_chunk` as `Trainer`'s, but impure (they step the host
    envs held here), so not jittable or vmappable; `abstract_state(key)` is the state's shapes (what
    checkpoint restore needs). `env` and `eval_env` are the (first seed's) envs; `envs` and `eval_envs` hold
    one of each per seed of a sweep."""

    config: Config
    env: HostVecEnv
    eval_env: HostVecEnv
    init: Callable  # key -> TrainState (a sweep: keys [S, 2] -> TrainState with [S, ...] leaves)
    run_chunk: Callable  # (TrainState, plan=None) -> (TrainState, metrics), as trainer.run_chunk
    evaluate: Callable  # (agent state, key) -> mean return of eval_episodes episodes: a float (sweep: [S])
    abstract_state: Callable  # key -> TrainState of jax.ShapeDtypeStruct
    envs: list = dataclasses.field(default_factory=list)  # the training envs of each seed
    eval_envs: list = dataclasses.field(default_factory=list)  # the evaluation envs of each seed


def make_host_train(config: Config, seeds: Sequence[int] | None = None) -> HostTrainer:
    """The training loop of `config` (a host env) as jitted pieces driven from Python; see the module
    docstring. `run_chunk` returns the same metrics as the compiled loop's (`make_train`). `seeds`: a sweep of
    `len(seeds)` seeds (the state and its keys with a leading seed axis; seed s's key is its single run's,
    `PRNGKey(seeds[s])`, which the caller passes to `init`), one set of host envs per seed."""
    c = config
    n = c.env.num_envs
    sweep = seeds is not None
    sets = len(seeds) if sweep else 1
    envs = [make_host_env(c.env.name, n, c.env.sticky_actions, c.env.action_repeat) for _ in range(sets)]
    eval_envs = [
        make_host_env(c.env.name, c.run.eval_episodes, c.env.sticky_actions, c.env.action_repeat)
        for _ in range(sets)
    ]
    spec = envs[0].spec
    agent = make_agent(c, spec)
    steps_per_env = c.env_steps_per_iteration // n
    no_context = agent.replay_context(agent.initial_carry(n))
    learn_step = make_learn_step(c, agent)
    placeholder = jnp.int32(0)  # TrainState.env_state: the host envs' state lives in `envs`
    current: dict[str, Any] = {"ts": None}  # the host envs' last TimeStep (numpy); None: not started
    over_seeds = jax.vmap if sweep else (lambda fn, **_: fn)  # a sweep's jitted pieces take [S, ...]
    lead = (sets,) if sweep else ()  # the seed axis of a sweep's arrays

    def members(x) -> list:
        """Each seed's slice of `x` (a key or an array with the seed axis); [x] for a single run."""
        return list(x) if sweep else [x]

    def join(parts: list, stack: Callable = np.stack):
        """The seeds' pytrees stacked on a leading seed axis; a single run's one pytree as it is."""
        return jax.tree.map(lambda *xs: stack(xs), *parts) if sweep else parts[0]

    def split_each(keys, num: int) -> tuple:
        """`jax.random.split(key, num)` of each seed's key: `num` keys ([S, 2] each for a sweep)."""
        parts = [jax.random.split(k, num) for k in members(keys)]
        return tuple(join([part[i] for part in parts], jnp.stack) for i in range(num))

    def host_reset(pools: list[HostVecEnv], keys) -> TimeStep:
        """Every seed's envs reset with a seed drawn from that seed's key (as its single run draws it)."""
        return join([pool.reset(seed_from_key(k)) for pool, k in zip(pools, members(keys), strict=True)])

    def host_step(pools: list[HostVecEnv], action: jax.Array) -> TimeStep:
        """Each seed's envs step with that seed's actions ([S, N, ...] for a sweep, in one transfer)."""
        action = np.asarray(action)
        return join([pool.step(a) for pool, a in zip(pools, members(action), strict=True)])

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

    def sweep_metrics(state, metrics, episodes, eval_return, evaluated):
        return chunk_metrics(c, state, metrics, episodes, {"eval_return": eval_return}, evaluated)

    start_jit = jax.jit(over_seeds(start))
    random_act_jit = jax.jit(over_seeds(random_act), donate_argnums=0)
    policy_act_jit = jax.jit(over_seeds(policy_act), donate_argnums=0)
    learn_jit = jax.jit(over_seeds(learn), donate_argnums=0)
    restart_jit = jax.jit(over_seeds(restart), donate_argnums=0)
    eval_act_jit = jax.jit(over_seeds(eval_act))
    sweep_metrics_jit = jax.jit(jax.vmap(sweep_metrics, in_axes=(0, 0, 0, 0, None)))

    def env_step(state: TrainState, action: jax.Array) -> TrainState:
        ts = host_step(envs, action)
        current["ts"] = ts
        return state.replace(timestep=to_device(ts))

    def init(key) -> TrainState:
        k_agent, k_env, k_loop = split_each(key, 3)
        ts = host_reset(envs, k_env)
        current["ts"] = ts
        state = to_device(start_jit(k_agent, k_loop, to_device(ts)))  # committed (`to_device`)
        for _ in range(c.prefill_steps_per_env):
            state, action = random_act_jit(state)
            state = env_step(state, action)
        return state

    def abstract_state(key) -> TrainState:
        obs = {
            k: jax.ShapeDtypeStruct((*lead, n, *shape), obs_dtype(shape))
            for k, shape in spec.obs_shapes.items()
        }
        flags = jax.ShapeDtypeStruct((*lead, n), jnp.bool_)
        ts = TimeStep(
            obs=obs,
            reward=jax.ShapeDtypeStruct((*lead, n), jnp.float32),
            is_first=flags,
            is_last=flags,
            is_terminal=flags,
            episode_return=jax.ShapeDtypeStruct((*lead, n), jnp.float32),
            episode_length=jax.ShapeDtypeStruct((*lead, n), jnp.int32),
        )
        k = jax.ShapeDtypeStruct(key.shape, key.dtype)
        return jax.eval_shape(over_seeds(start), k, k, ts)

    def evaluate(agent_state, key) -> float | np.ndarray:
        """Mean return of the first episode of each of `eval_episodes` host envs (as `episode_returns`); a
        sweep's [S] means, each seed's envs reset and acted on with that seed's keys."""
        k_reset, k_loop = split_each(key, 2)
        ts = host_reset(eval_envs, k_reset)
        m = c.run.eval_episodes
        carry, prev = agent.initial_carry(m), jnp.zeros((*lead, m, spec.action_dim))
        if sweep:
            carry = jax.tree.map(lambda x: jnp.broadcast_to(x, (*lead, *x.shape)), carry)
        carry, prev = to_device((carry, prev))
        step_key = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if sweep else jax.random.fold_in
        ret, finished = np.zeros((*lead, m), np.float32), np.zeros((*lead, m), bool)
        steps = eval_envs[0].spec.max_episode_steps + 1
        steps = min(steps, c.run.eval_steps) if c.run.eval_steps else steps
        for t in range(steps):  # a sweep runs until every seed's episodes ended: later steps do not count
            obs, is_first = to_device((ts.obs, ts.is_first))
            prev, carry, action = eval_act_jit(agent_state, carry, obs, prev, is_first, step_key(k_loop, t))
            ts = host_step(eval_envs, action)
            ret = np.where(finished, ret, ts.episode_return)
            finished |= ts.is_last
            if finished.all():
                break
        means = np.mean(np.where(finished, ret, ts.episode_return), axis=-1)
        return means.astype(np.float32) if sweep else float(means)

    def run_chunk(state: TrainState, plan: ChunkPlan | None = None) -> tuple[TrainState, dict]:
        if current["ts"] is None:  # a restored state: the envs start new episodes (module docstring)
            keys = [
                jax.random.fold_in(k, e)
                for k, e in zip(members(state.key), members(state.env_steps), strict=True)
            ]
            ts = host_reset(envs, join(keys, jnp.stack))
            current["ts"] = ts
            state = restart_jit(state, to_device(ts))
        count, ret_sum, len_sum = np.int32(0), np.float32(0.0), np.float32(0.0)
        per_iteration = []
        iterations = c.iterations_per_chunk if plan is None else int(plan.iterations)
        boundary = plan is None or bool(plan.boundary)
        for _ in range(iterations):
            for _ in range(steps_per_env):
                ts = current["ts"]  # episode statistics of the step acted on, as the compiled loop counts
                count = count + ts.is_last.sum(axis=-1, dtype=np.int32)  # [S] for a sweep
                ret_sum = ret_sum + np.sum(ts.episode_return * ts.is_last, axis=-1, dtype=np.float32)
                len_sum = len_sum + np.sum(ts.episode_length * ts.is_last, axis=-1, dtype=np.float32)
                state, action = policy_act_jit(state)
                state = env_step(state, action)
            state, metrics = learn_jit(state)
            per_iteration.append(metrics)
        # [I] per metric; a sweep's [S, I]
        metrics = jax.tree.map(lambda *xs: jnp.stack(xs, axis=len(lead)), *per_iteration)
        key, k_eval = split_each(state.key, 2)
        if not boundary:  # cut at the budget: the key stays as the uncut chunk leaves it (trainer.run_chunk)
            cut = [jax.random.fold_in(k, CUT_EVAL_KEY) for k in members(state.key)]
            key, k_eval = state.key, join(cut, jnp.stack)
        state = state.replace(key=key)
        if plan is None:  # whole chunks, as the compiled loop's
            env_steps = int(np.ravel(state.env_steps)[0])  # a sweep's seeds move in step
            final = (env_steps - c.prefill_steps_per_env * n) // c.env_steps_per_chunk >= c.num_chunks
            evaluated = bool(eval_due(c, env_steps, final))
        else:
            evaluated = bool(plan.evaluate)
        episodes = (np.asarray(count), np.asarray(ret_sum), np.asarray(len_sum))
        if not sweep:
            eval_return = jnp.float32(evaluate(state.agent, k_eval) if evaluated else 0.0)
            evaluation = {"eval_return": eval_return}
            return state, chunk_metrics(c, state, metrics, episodes, evaluation, jnp.bool_(evaluated))
        eval_return = evaluate(state.agent, k_eval) if evaluated else np.zeros(lead, np.float32)
        return state, sweep_metrics_jit(state, metrics, episodes, eval_return, jnp.bool_(evaluated))

    return HostTrainer(c, envs[0], eval_envs[0], init, run_chunk, evaluate, abstract_state, envs, eval_envs)
