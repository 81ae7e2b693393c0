"""The whole training loop as pure functions: `make_train(config) -> Trainer(init, run_chunk, evaluate)`.

    trainer = make_train(config)
    state = jax.jit(trainer.init)(key)            # networks, optimiser, envs, replay prefilled at random
    state, metrics = jax.jit(trainer.run_chunk)(state)   # one compiled lax.scan over a chunk of iterations

One iteration = act in `num_envs` envs for `env_steps_per_iteration` steps (each step's transition goes to the
on-device replay) and then `updates_per_iteration` learner updates on sampled windows, so the replayed steps
per env step match `train_ratio`. Both functions are pure and work under `jax.vmap` over a leading seed axis.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mbrl_jax.agents import env_action, make_agent, random_action
from mbrl_jax.config import Config, ReplayConfig
from mbrl_jax.envs import TimeStep, VecEnv, crafter_score, is_envpool, make_env
from mbrl_jax.envs.envpool_env import per_seed
from mbrl_jax.replay import (
    Replay,
    ReplayIndex,
    replay_add,
    replay_init,
    replay_sample,
    replay_sample_imagination,
    replay_update,
    reward_context,
)
from mbrl_jax.returns import smooth_rewards, smoothing_margins


@struct.dataclass
class TrainState:
    key: jax.Array
    env_steps: jax.Array  # int32, env steps taken over all envs (prefill included)
    updates: jax.Array  # int32, learner updates so far
    env_state: object
    timestep: TimeStep  # the last timestep of each env, [num_envs, ...]
    prev_action: jax.Array  # [num_envs, A] the action that led to `timestep` (agent format)
    policy: Any  # the agent's policy carry
    replay: Replay
    agent: Any  # the agent's state


@dataclasses.dataclass(frozen=True)
class Trainer:
    config: Config
    init: Callable  # key -> TrainState
    run_chunk: Callable  # TrainState -> (TrainState, metrics)
    evaluate: Callable  # (agent state, key) -> mean return of config.run.eval_episodes episodes
    # TrainState -> TrainState, for a state restored from a checkpoint where the envs' state is not in it
    # (envpool's pool): every env starts a new episode. None where the checkpoint holds the envs (gymnax).
    restart: Callable | None = None


def replay_row(ts: TimeStep, prev_action: jax.Array, context: dict) -> dict:
    """What the replay stores for one step: the observation, the action that led to it (zero at episode
    starts), the reward received on arriving, the episode flags, and the agent's replay context (its latent
    after this observation; zeros where no policy ran)."""
    keep = 1.0 - ts.is_first.astype(jnp.float32)
    return {
        **context,
        "obs": ts.obs,
        "action": prev_action * keep[:, None],
        "reward": ts.reward,
        "is_first": ts.is_first,
        "is_last": ts.is_last,
        "is_terminal": ts.is_terminal,
    }


def episode_returns(
    env: VecEnv, act: Callable, carry: Any, key: jax.Array, max_steps: int | None = None
) -> jax.Array:
    """The return of the first episode in each of `env`'s N envs, all run in parallel from a reset: the
    first output of `episode_outcomes`, whose docstring says more."""
    return episode_outcomes(env, act, carry, key, max_steps)[0]


def episode_outcomes(
    env: VecEnv, act: Callable, carry: Any, key: jax.Array, max_steps: int | None = None
) -> tuple[jax.Array, jax.Array]:
    """The return of the first episode in each of `env`'s N envs, all run in parallel from a reset, and the
    achievements it unlocked (`env.achievements`; none for most envs).

    Args:
      env: N batched envs.
      act: `(carry, obs [N, *obs_shape], prev_action [N, A], is_first [N], key) -> (action, carry)`, the
        action in the agent's format (one-hot [N, A] or [-1, 1]^A; `env_action` maps it to the env's).
      carry: the policy's state for N envs (None for a memoryless policy).
      key: split into a reset key and, per step, one key for `act` and one for the env.
      max_steps: env steps to run at most; None runs `max_episode_steps + 1` steps, so every episode ends.
    Returns:
      [N] float32 returns and [N, K] bool achievements (K = len(env.achievement_names), often 0). Steps
      after an env's first episode ends do not count; an episode cut by `max_steps` counts the rewards it
      got and the achievements it unlocked so far.
    """
    spec = env.spec
    k_reset, k_loop = jax.random.split(key)
    env_state, ts = env.reset(k_reset)
    n = env.num_envs
    tracked = bool(env.achievement_names)  # else the loop stays as it was before achievements existed

    def step(loop, key_t):
        env_state, ts, carry, prev_action, ret, finished, *unlocked = loop
        k_act, k_env = jax.random.split(key_t)
        action, carry = act(carry, ts.obs, prev_action, ts.is_first, k_act)
        env_state, ts = env.step(env_state, env_action(spec, action), k_env)
        ret = jnp.where(finished, ret, ts.episode_return)
        if tracked:  # kept from the step that ends the episode: the next one resets the env's state
            unlocked = [jnp.where(finished[:, None], unlocked[0], env.achievements(env_state))]
        finished = finished | ts.is_last
        return (env_state, ts, carry, action, ret, finished, *unlocked), None

    init = (env_state, ts, carry, jnp.zeros((n, spec.action_dim)), jnp.zeros(n), jnp.zeros(n, bool))
    if tracked:
        init = (*init, env.achievements(env_state))
    steps = spec.max_episode_steps + 1 if max_steps is None else min(max_steps, spec.max_episode_steps + 1)
    (_, ts, _, _, ret, finished, *unlocked), _ = jax.lax.scan(step, init, jax.random.split(k_loop, steps))
    achievements = unlocked[0] if tracked else jnp.zeros((n, 0), bool)
    return jnp.where(finished, ret, ts.episode_return), achievements


def smoothed_window_rewards(replay: Replay, index: ReplayIndex, r: ReplayConfig) -> jax.Array:
    """DreamSmooth's reward target [B, L] for the windows `index` points at (`r.reward_smoothing`).

    DreamSmooth smooths a whole episode when it ends and stores the result in the replay. Here each window is
    smoothed when sampled, from the rewards around it (the filter's reach on each side, read from the
    replay): a finished episode's steps get exactly the whole-episode value, and the ring buffer needs no
    second reward column kept in step with overwrites. Where the reach leaves the valid data (the oldest
    step, or the newest step of an episode still running) the boundary is 'nearest', as at an episode's
    ends; an EMA reads back until alpha**n < 1e-7.
    """
    left, right = smoothing_margins(r.reward_smoothing, r.smooth_sigma, r.smooth_delta, r.smooth_alpha)
    reward, starts = reward_context(replay, index, left, right)
    method = r.reward_smoothing
    smooth = smooth_rewards(reward, starts, method, r.smooth_sigma, r.smooth_delta, r.smooth_alpha)
    return smooth[:, left : smooth.shape[1] - right]


def sample_learner_batch(c: Config, replay: Replay, key: jax.Array) -> tuple[dict, ReplayIndex, Replay]:
    """The batch one learner update trains on, as the training loop samples it: windows from `replay`
    (`c.replay.sampler`), DreamSmooth's reward target where it is on, and the frequency sampler's imagination
    windows (`batch["imag"]`, Drama). Returns the batch, the windows' index, and the replay with the
    sampler's counts updated."""
    r = c.replay
    batch, index, replay = replay_sample(
        replay,
        key,
        r.batch_size,
        c.sample_length,
        r.online,
        stride=r.batch_length,
        sampler=r.sampler,
        tau=r.dfs_tau,
    )
    if r.reward_smoothing != "none":
        smooth = smoothed_window_rewards(replay, index, r)
        batch = {**batch, "reward": smooth, "reward_raw": batch["reward"]}
    if r.sampler == "frequency":
        # Imagination starts come from their own windows (Drama); fold_in keeps the uniform path's keys.
        imag, replay = replay_sample_imagination(
            replay,
            jax.random.fold_in(key, 1),
            r.imag_batch,
            c.imag_sample_length,
            r.dfs_imag_tau,
            r.dfs_alpha,
            r.dfs_beta,
            r.imag_batch / r.batch_size,
        )
        batch = {**batch, "imag": imag}
    return batch, index, replay


def make_learn_step(c: Config, agent: Any, mesh: jax.sharding.Mesh | None = None) -> Callable:
    """`learn_step(state, _) -> (state, metrics)`: one learner update of `agent` on windows sampled from the
    state's replay (shared by the compiled loop and the host loop)."""

    def learn_step(state: TrainState, _):
        """One learner update on a sampled batch: `lax.scan`-shaped (carry, None) -> (carry, metrics)."""
        key, k_sample, k_learn = jax.random.split(state.key, 3)
        batch, index, replay = sample_learner_batch(c, state.replay, k_sample)
        if mesh is not None:
            split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
            batch = jax.lax.with_sharding_constraint(batch, jax.tree.map(lambda _: split, batch))
        agent_state, metrics, writes = agent.learn(state.agent, batch, k_learn)
        if writes:
            replay = replay_update(replay, index, writes)
        return state.replace(key=key, agent=agent_state, replay=replay, updates=state.updates + 1), metrics

    return learn_step


def initial_state(
    c: Config, agent: Any, action_dim: int, key_agent, key_loop, env_state, timestep: TimeStep
) -> TrainState:
    """The train state right after the envs' reset, before any step: an empty replay shaped by `timestep`,
    a fresh agent (from `key_agent`) and policy carry, no previous action."""
    n = timestep.is_first.shape[0]
    no_action = jnp.zeros((n, action_dim))
    no_context = agent.replay_context(agent.initial_carry(n))
    return TrainState(
        key=key_loop,
        env_steps=jnp.int32(0),
        updates=jnp.int32(0),
        env_state=env_state,
        timestep=timestep,
        prev_action=no_action,
        policy=agent.initial_carry(n),
        replay=replay_init(
            replay_row(timestep, no_action, no_context),
            c.capacity_per_env,
            counts=c.replay.sampler == "frequency",
        ),
        agent=agent.init(key_agent),
    )


def store_step(state: TrainState, action: jax.Array, context: dict) -> TrainState:
    """Stores the current step with the action that led to it and counts `action` as taken: what both loops
    do just before the envs step with `action`. The caller then sets the envs' new timestep."""
    row = replay_row(state.timestep, state.prev_action, context)
    n = state.timestep.is_first.shape[0]
    replay = replay_add(state.replay, row)
    return state.replace(prev_action=action, replay=replay, env_steps=state.env_steps + n)


def fresh_episodes(agent: Any, state: TrainState, env_state: Any, timestep: TimeStep) -> TrainState:
    """`state` with envs that were just reset (`timestep` all is_first): no previous action, a fresh policy
    carry. For a restored run whose envs' state was not in the checkpoint: the step each env was on was not
    yet stored, so the interrupted episodes end without `is_last` in the replay, which needs only `is_first`
    at starts. Everything else (agent, optimiser, replay, keys, counters) continues exactly."""
    n = timestep.is_first.shape[0]
    return state.replace(
        env_state=env_state,
        timestep=timestep,
        prev_action=jnp.zeros_like(state.prev_action),
        policy=agent.initial_carry(n),
    )


def policy_action(agent: Any, state: TrainState) -> tuple[TrainState, jax.Array, Any, jax.Array]:
    """The agent's action for the current timestep of every env. Returns the state with its key advanced,
    the action [N, A] (agent format), the new policy carry and a key for the env step."""
    key, k_act, k_env = jax.random.split(state.key, 3)
    ts = state.timestep
    action, policy = agent.act(state.agent, state.policy, ts.obs, state.prev_action, ts.is_first, k_act)
    return state.replace(key=key), action, policy, k_env


def chunk_metrics(
    c: Config, state: TrainState, metrics: dict, episodes: tuple, evaluation: dict, evaluated
) -> dict:
    """A chunk's metrics dict (see `make_train`) from per-iteration learner metrics [I] (or their means, []),
    episode statistics (count, return sum, length sum) and the evaluation's metrics (`eval_return`, and on
    envs with achievements their success rates, `evaluation_metrics`)."""
    count, ret_sum, len_sum = episodes
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics.update(
        env_steps=state.env_steps,
        updates=state.updates,
        episodes=count.sum(),
        episode_return_sum=ret_sum.sum(),
        episode_length_sum=len_sum.sum().astype(jnp.float32),
        **evaluation,
        evaluated=evaluated,
    )
    return metrics


ACHIEVEMENT_PREFIX = "eval_achievement/"


def evaluation_metrics(names: tuple[str, ...], returns: jax.Array, achievements: jax.Array) -> dict:
    """An evaluation's metrics from its episodes' returns [N] and achievements [N, K] (K = len(names)):
    `eval_return`, the mean return, and per achievement `eval_achievement/<name>`, the percentage of the
    episodes that unlocked it (Crafter's success rate; only where the env has achievements)."""
    rates = 100.0 * jnp.mean(achievements.astype(jnp.float32), axis=0)
    return {"eval_return": returns.mean(), **{ACHIEVEMENT_PREFIX + k: rates[i] for i, k in enumerate(names)}}


# Folded into the key that would have been split at a chunk's end when the chunk is cut short of the chunk
# boundary: its evaluation draws from that key, and the state's key stays as an uncut chunk would leave it.
CUT_EVAL_KEY = 0x0C07


@struct.dataclass
class ChunkPlan:
    """What one chunk does, decided on the host by `plan_chunk` and passed to the compiled chunk as values,
    so that one program serves runs of every length. In a sweep it is one plan for every seed (unbatched:
    the seeds move in step), so the evaluation's `lax.cond` stays a branch under vmap."""

    iterations: jax.Array  # int32: iterations to run, 1 to iterations_per_chunk
    evaluate: jax.Array  # bool: the chunk ends with an evaluation
    boundary: jax.Array  # bool: the chunk ends on a chunk boundary (else the run's budget cuts it)


def plan_chunk(c: Config, env_steps: int, budget: int) -> ChunkPlan:
    """The plan of the chunk that starts at `env_steps` in a run of `budget` env steps
    (`Config.total_env_steps`). Chunks end on the fixed boundaries prefill + k x `env_steps_per_chunk`,
    except the run's last, which stops at `budget` and evaluates. A chunk cut by the budget leaves the
    state's key as the whole chunk's first iterations would (`run_chunk`), so a run's state passes through
    the same iterations whatever its budget, and raising the budget continues a finished run as if it had
    been given from the start."""
    prefill = c.prefill_steps_per_env * c.env.num_envs
    next_boundary = prefill + ((env_steps - prefill) // c.env_steps_per_chunk + 1) * c.env_steps_per_chunk
    end = min(next_boundary, budget)
    boundary = end == next_boundary
    return ChunkPlan(
        iterations=np.int32((end - env_steps) // c.env_steps_per_iteration),
        evaluate=np.bool_(eval_due(c, end, end >= budget, boundary)),
        boundary=np.bool_(boundary),
    )


def eval_due(c: Config, env_steps, final, boundary=True) -> jax.Array:
    """Whether the chunk that just ended at `env_steps` evaluates: every `chunks_per_eval`-th chunk boundary,
    and the run's last chunk (`final`), so that its final return is measured at the end of the budget."""
    chunks_done = (env_steps - c.prefill_steps_per_env * c.env.num_envs) // c.env_steps_per_chunk
    return (boundary & (chunks_done % c.chunks_per_eval == 0)) | final


def make_train(
    config: Config, mesh: jax.sharding.Mesh | None = None, seeds: list[int] | None = None
) -> Trainer:
    """The whole training loop of `config` as pure functions of arrays (the static work happens here:
    env, networks, optimiser, shapes).

    Returns a `Trainer` with
      init: `key -> TrainState`. Builds the agent, resets `num_envs` envs and prefills the replay with
        `prefill` random steps, all on device.
      run_chunk: `(TrainState, plan=None) -> (TrainState, metrics)`. One `lax.scan` of
        `iterations_per_chunk` iterations (`env_steps_per_iteration` env steps with the policy, then
        `updates_per_iteration` learner updates), then one evaluation. With a `ChunkPlan` (`plan_chunk`:
        values, not constants of the program, so runs of every length share it) the chunk runs the plan's
        iterations and evaluates where it says, so the run's last chunk stops at the budget; without one
        every chunk is whole and the `num_chunks`-th is the last. `metrics` is a dict of scalar arrays:
        the learner's losses and statistics averaged over the chunk's iterations, `env_steps` and
        `updates` (totals so far), `episodes` (episodes ended in the chunk) with `episode_return_sum` and
        `episode_length_sum` over them, `eval_return` (and `eval_achievement/<name>` on envs with
        achievements, `evaluation_metrics`) and `evaluated` (whether this chunk ended with an
        evaluation: every `chunks_per_eval`-th chunk, and the last); `summarize_chunk` turns it into plain
        numbers.
      evaluate: `(AgentState, key) -> []` float32, the mean return of `eval_episodes` episodes with the
        policy's mode (`run.eval_policy="mode"`) or sampled actions ("sample", as the reference evaluates).
    All three work under `jax.jit` and `jax.vmap`: with a leading seed axis on the key (and so on the state,
    [S, ...] on every leaf, and on metrics, [S]) one program trains S seeds.

    `mesh`: a mesh with a 'data' axis (`mbrl_jax.parallel.make_mesh`) on which the caller lays the state out
    (`state_shardings`); each update's sampled batch is then split along that axis, so the learner runs
    data-parallel. The functions compute the same with or without it.

    `seeds`: the seeds of the sweep the functions will be vmapped over, for envs whose state lives outside
    the program (envpool: one pool per seed, seeded as each seed's single run seeds its pool).
    """
    c = config
    n = c.env.num_envs
    # envpool's pools are seeded here (env i of the training pool with run.seed + i, the evaluation pool's
    # after them); gymnax envs draw from the state's keys
    pooled = seeds is not None and is_envpool(c.env.name)
    env = make_env(c.env.name, n, c.run.seed, c.env.sticky_actions, list(seeds) if pooled else None)
    eval_seeds = [s + n for s in seeds] if pooled else None
    eval_env = make_env(c.env.name, c.run.eval_episodes, c.run.seed + n, c.env.sticky_actions, eval_seeds)
    spec = env.spec
    agent = make_agent(c, spec)
    steps_per_env = c.env_steps_per_iteration // n
    no_context = agent.replay_context(agent.initial_carry(n))  # zeros: random steps have no latent

    def env_step(state: TrainState, action: jax.Array, key, context: dict) -> TrainState:
        """Stores the current step with the action that led to it, then steps the envs with `action`."""
        env_state, timestep = env.step(state.env_state, env_action(spec, action), key)
        return store_step(state, action, context).replace(env_state=env_state, timestep=timestep)

    def policy_step(state: TrainState, _):
        ts = state.timestep
        state, action, policy, k_env = policy_action(agent, state)
        state = env_step(state, action, k_env, agent.replay_context(policy))
        state = state.replace(policy=policy)
        return state, (ts.is_last, ts.episode_return, ts.episode_length)

    def random_step(state: TrainState, _):
        key, k_act, k_env = jax.random.split(state.key, 3)
        action = random_action(spec, n, k_act)
        return env_step(state.replace(key=key), action, k_env, no_context), None

    def init(key) -> TrainState:
        k_agent, k_env, k_loop = jax.random.split(key, 3)
        env_state, timestep = env.reset(k_env)
        state = initial_state(c, agent, spec.action_dim, k_agent, k_loop, env_state, timestep)
        state, _ = jax.lax.scan(random_step, state, None, length=c.prefill_steps_per_env)
        # The policy's carry has not seen the prefill steps, so it starts afresh; the last random action is
        # kept: it led to the current observation, and the replay stores it with that step.
        return state

    learn_step = make_learn_step(c, agent, mesh)

    def iteration(state: TrainState, _):
        state, (done, ep_return, ep_length) = jax.lax.scan(policy_step, state, None, length=steps_per_env)
        state, metrics = jax.lax.scan(learn_step, state, None, length=c.updates_per_iteration)
        episodes = (done.sum(), jnp.sum(ep_return * done), jnp.sum(ep_length * done))
        return state, (jax.tree.map(jnp.mean, metrics), episodes)

    def evaluator(eval_env: VecEnv) -> Callable:
        def evaluate_all(agent_state, key) -> dict:
            """`evaluation_metrics` of `eval_episodes` episodes run in parallel (actions by
            `run.eval_policy`)."""
            use_mode = c.run.eval_policy == "mode"

            def act(policy, obs, prev_action, is_first, key_t):
                return agent.act(agent_state, policy, obs, prev_action, is_first, key_t, mode=use_mode)

            carry = agent.initial_carry(c.run.eval_episodes)
            returns, achievements = episode_outcomes(eval_env, act, carry, key, c.run.eval_steps or None)
            return evaluation_metrics(eval_env.achievement_names, returns, achievements)

        return evaluate_all

    evaluate_all = evaluator(eval_env)

    def evaluate(agent_state, key) -> jax.Array:
        """Mean return of `eval_episodes` episodes run in parallel (actions by `run.eval_policy`)."""
        return evaluate_all(agent_state, key)["eval_return"]

    if pooled:  # each seed's evaluation steps its own pool, inside one cond taken outside the seed vmap
        evaluate_when = per_seed([evaluator(pool) for pool in eval_env.pools], when=True)
    else:

        def evaluate_when(evaluated, agent_state, key):
            def skip(*_):
                return jax.tree.map(jnp.zeros_like, jax.eval_shape(evaluate_all, agent_state, key))

            return jax.lax.cond(evaluated, evaluate_all, skip, agent_state, key)

    def skipped_iteration(state: TrainState, _):
        out = jax.eval_shape(iteration, state, None)[1]
        return state, jax.tree.map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), out)

    def run_chunk(state: TrainState, plan: ChunkPlan | None = None) -> tuple[TrainState, dict]:
        if plan is None:  # a whole chunk; the run ends after `num_chunks` of them
            state, (metrics, episodes) = jax.lax.scan(iteration, state, None, length=c.iterations_per_chunk)
            chunks_done = (state.env_steps - c.prefill_steps_per_env * n) // c.env_steps_per_chunk
            key, k_eval = jax.random.split(state.key)
            evaluated = eval_due(c, state.env_steps, chunks_done >= c.num_chunks)
        else:  # the plan's iterations; those past them pass the state through
            whole = plan.iterations == c.iterations_per_chunk

            def maybe_iteration(state, i):
                return jax.lax.cond(i < plan.iterations, iteration, skipped_iteration, state, None)

            steps = jnp.arange(c.iterations_per_chunk)
            state, (per_iteration, episodes) = jax.lax.scan(maybe_iteration, state, steps)
            ran = (steps < plan.iterations).astype(jnp.float32)
            metrics = jax.tree.map(
                lambda m: jnp.where(  # a whole chunk's mean bit for bit, else the mean of the iterations run
                    whole, jnp.mean(m), jnp.sum(m * ran) / jnp.maximum(plan.iterations, 1).astype(m.dtype)
                ),
                per_iteration,
            )
            split, k_eval = jax.random.split(state.key)
            key = jnp.where(plan.boundary, split, state.key)
            k_eval = jnp.where(plan.boundary, k_eval, jax.random.fold_in(state.key, CUT_EVAL_KEY))
            evaluated = plan.evaluate
        state = state.replace(key=key)
        evaluation = evaluate_when(evaluated, state.agent, k_eval)
        return state, chunk_metrics(c, state, metrics, episodes, evaluation, evaluated)

    def restart(state: TrainState) -> TrainState:
        env_state, timestep = env.reset(jax.random.fold_in(state.key, state.env_steps))
        return fresh_episodes(agent, state, env_state, timestep)

    return Trainer(
        config=c,
        init=init,
        run_chunk=run_chunk,
        evaluate=evaluate,
        restart=restart if env.host_state else None,
    )


def summarize_chunk(raw: dict) -> dict:
    """Host side: the compiled chunk's metrics (scalar arrays) -> plain Python numbers for logging.

    Episode statistics come out of the chunk as sums and a count; their means are defined only when an
    episode ended in the chunk, so `episode_return` / `episode_length` are absent otherwise (never NaN);
    `eval_return` (and on envs with achievements `eval_achievement/<name>`, with `eval_crafter_score` from
    them) is absent after chunks without an evaluation (`run.eval_every`).
    """
    out = {k: np.asarray(v).item() for k, v in jax.device_get(raw).items()}
    ret_sum, len_sum = out.pop("episode_return_sum"), out.pop("episode_length_sum")
    rates = [k for k in out if k.startswith(ACHIEVEMENT_PREFIX)]
    if not out.pop("evaluated", True):  # no evaluation after this chunk (run.eval_every)
        out.pop("eval_return")
        for k in rates:
            out.pop(k)
    elif rates:
        out["eval_crafter_score"] = crafter_score([out[k] for k in rates])
    for key in ("env_steps", "updates", "episodes"):
        out[key] = int(out[key])
    if out["episodes"] > 0:
        out["episode_return"] = ret_sum / out["episodes"]
        out["episode_length"] = len_sum / out["episodes"]
    return out
