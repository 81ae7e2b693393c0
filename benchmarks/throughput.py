"""Throughput of the compiled training loop and of its parts, per preset, as one JSON object, for any agent.

    python benchmarks/throughput.py                                   # the default config (cartpole)
    python benchmarks/throughput.py --preset cartpole --preset cartpole,size12m --updates 5 --chunks 2
    python benchmarks/throughput.py --preset debug chunk_steps=50 --out bench.json
    python benchmarks/throughput.py --preset tdmpc2 --preset tdmpc2,tdmpc2-1m --chunks 1 run.chunk_steps=20

Each `--preset` value is one configuration (comma-separated presets applied left to right); trailing
key=value overrides apply to every one. The JSON object is the last line of stdout (and the contents of
`--out`); a table goes to stderr. Each quantity is measured on its own jitted function, after a warm-up
call, with `block_until_ready` and `time.perf_counter`: training chunks as the mean over `--chunks`, the
parts (learner, imagination, acting, matmul peak) as the best of a few calls, as noise on a shared machine
only adds time.

The agent is whichever `agent=` names (`mbrl_jax.agents.make_agent`), the training loop `make_train` (or the
host loop's `make_host_train`), and every part is measured through the `Agent` interface: the learner is
`agent.learn` on a batch sampled from the replay the timed chunks filled; acting is `agent.act` with the env
step (`act_steps_per_s`) and `agent.act` alone on `--act-num-envs` batches of observations (`act_calls`, the
figure that matters for a planner: TD-MPC2's MPPI plans once per env and step); `num_params` counts the
agent state's `params` (every registered agent keeps its trained parameters there). A part that only some
agents have is measured for an agent that exposes what it needs, and its fields are absent (not null) from
the results of the others (`IMAGINATION_FIELDS`): imagination, for an agent that satisfies `Imagines`
(DreamerV3's `Dreamer`: its `world_model` and `policy`). TD-MPC2 (`--preset tdmpc2`, above: one update per
env step, so short chunks) has every other figure; its `act_calls` are MPPI plans.

A host env (`env.name` "gymnasium:<id>" or "envpool:<task_id>", e.g. `--preset atari100k`) is measured in
the loop it trains with (`env.loop`, recorded as `loop`): envpool through its XLA interface in the compiled
loop, or the host loop (`mbrl_jax.host_loop`), where acting is the jitted policy step plus the envs stepped
on the host. Both add `env_only_steps_per_s`, the envs alone under random actions (a jitted scan of XLA
steps, or a Python loop). A `--preset` value may carry overrides of its own, so one command measures
envpool's two loops side by side:

    python benchmarks/throughput.py --preset atari100k,env.loop=compiled --preset atari100k,env.loop=host

FLOPs come from XLA's cost analysis, which counts a while loop's body once whatever its trip count. A
`lax.scan` of length n is counted as n x its body, each body costed on its own (recursively, so nested scans
are counted too), in place of what XLA counted for the scan: one body when rolled, k bodies per loop plus
the remaining steps with `unroll=k`, n bodies when fully unrolled. `update_gflop_xla_rolled` is XLA's
uncorrected figure.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol, runtime_checkable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.extend import core as jcore  # noqa: E402

from benchmarks.profile_ops import profile_markdown, profile_ops  # noqa: E402
from benchmarks.report import emit, machine_info  # noqa: E402
from mbrl_jax.agents import env_action, make_agent, random_action  # noqa: E402
from mbrl_jax.config import PRESETS, Config, ConfigError, make_config, parse_overrides  # noqa: E402
from mbrl_jax.envs import (  # noqa: E402
    env_spec,
    is_host_env,
    make_env,
    make_host_env,
    resolve_loop,
)
from mbrl_jax.host_loop import make_host_train  # noqa: E402
from mbrl_jax.trainer import make_train, sample_learner_batch  # noqa: E402
from mbrl_jax.world_models.rssm import WorldModel, imagine  # noqa: E402

DEFAULT_PRESET = "cartpole"
DEFAULT_ACT_NUM_ENVS = (1, 8)

# Numbers in every result of `measure`, whatever the agent; all finite and > 0 on a working machine.
NUMERIC_FIELDS = (
    "init_s",
    "compile_s",
    "chunk_s",
    "env_steps_per_s",
    "updates_per_s",
    "learner_update_ms",
    "act_steps_per_s",
    "update_gflop",
    "update_gflop_xla_rolled",
    "update_gflops_per_s",
    "peak_gflops",
    "peak_fraction",
    "peak_rss_mb",
    "num_params",
)
# Fields of every result, whatever the agent. `act_calls`: one record per `act_num_envs` value n,
# {"num_envs": n, "compile_s", "act_ms" (one jitted agent.act on n observations), "steps_per_s" (n / act)}.
RESULT_FIELDS = (
    "agent",
    "env",
    "num_envs",
    "batch_size",
    "batch_length",
    "env_steps_per_chunk",
    "updates_per_chunk",
    *NUMERIC_FIELDS,
    "act_calls",
)
ACT_CALL_FIELDS = ("num_envs", "compile_s", "act_ms", "steps_per_s")
# Agent-specific: only for an agent that imagines (satisfies `Imagines`, as DreamerV3 does); absent otherwise.
# `imagination_steps_per_s` is then finite and > 0 as NUMERIC_FIELDS are.
IMAGINATION_FIELDS = ("imag_horizon", "imagination_steps_per_s", "imagination_note")
# Only for a host env (gymnasium:, envpool:): the loop that drove it, and its envs stepped alone.
HOST_FIELDS = ("loop", "env_only_steps_per_s")
MACHINE_FIELDS = ("device_kind", "platform", "cpu_count", "jax_version", "jaxlib_version", "python")

IMAGINATION_NOTE = (
    "separately jitted rssm.imagine from B*T zero latents for imag_horizon steps with actions sampled from "
    "the agent's actor; forward only (no reward/continue heads, no gradients); lax.scan of `updates` "
    "rollouts in one jit (best of 3 calls), divided"
)


@runtime_checkable
class Imagines(Protocol):
    """The optional hook of the imagination figures (IMAGINATION_FIELDS): an agent that learns in imagination
    exposes its world model and its policy, and keeps their parameters in its state as `params.wm` and
    `params.actor`; the rollout's length is `config.dreamer.imag_horizon`. DreamerV3's `Dreamer` does; an
    agent without them (TD-MPC2) has no imagination figures, rather than a made-up one."""

    @property
    def world_model(self) -> WorldModel: ...

    def policy(self, actor_params: Any, feat: jax.Array) -> Any:
        """Action distribution (with `.sample(seed=key)`) at features feat [N, F]."""
        ...


# ---- timing and machine ----------------------------------------------------------------------------------


def timed(fn: Callable, *args) -> tuple[Any, float]:
    """(fn(*args), wall seconds until every output is ready)."""
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return out, time.perf_counter() - start


def first_and_best_time(fn: Callable, *args, repeats: int = 3) -> tuple[float, float]:
    """(the first call, compilation included; the shortest of `repeats` calls after it), in seconds. The
    shortest, since on a shared machine the noise only ever adds time."""
    first = timed(fn, *args)[1]
    return first, min(timed(fn, *args)[1] for _ in range(repeats))


def best_time(fn: Callable, *args, repeats: int = 3) -> float:
    """Shortest of `repeats` timed calls after one warm-up call, in seconds."""
    return first_and_best_time(fn, *args, repeats=repeats)[1]


def peak_rss_mb() -> float:
    """Largest resident set of this process so far, in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def measure_peak_gflops(size: int = 2048, repeats: int = 5) -> float:
    """float32 matmul rate of the default device: a jitted [size, size] @ [size, size], best of `repeats`
    calls after a warm-up, in GFLOP/s (2 size^3 FLOPs per product)."""
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (size, size), jnp.float32)
    b = jax.random.normal(kb, (size, size), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    return 2.0 * size**3 / best_time(matmul, a, b, repeats=repeats) / 1e9


# ---- FLOPs ----------------------------------------------------------------------------------------------


def xla_flops(compiled) -> float:
    """FLOPs from XLA's cost analysis of a compiled executable (a dict, or a list of dicts on older jax)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        return float(sum((a or {}).get("flops", 0.0) for a in analysis))
    return float((analysis or {}).get("flops", 0.0))


def _jaxpr_xla_flops(closed: jcore.ClosedJaxpr) -> float:
    args = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in closed.in_avals]
    return xla_flops(jax.jit(jcore.jaxpr_as_fun(closed)).lower(*args).compile())


def _scan_xla_flops(eqn: jcore.JaxprEqn) -> float:
    """XLA's count of one scan equation compiled on its own: its loop as JAX lowers it (with `unroll`, a
    loop over unrolled blocks and the remaining steps in line, or no loop at all)."""
    is_literal = [isinstance(v, jcore.Literal) for v in eqn.invars]
    args = [
        jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype)
        for v, literal in zip(eqn.invars, is_literal, strict=True)
        if not literal
    ]

    def fn(*xs):
        it = iter(xs)
        ins = [v.val if literal else next(it) for v, literal in zip(eqn.invars, is_literal, strict=True)]
        return eqn.primitive.bind(*ins, **eqn.params)  # a scan's params bind as they are

    return xla_flops(jax.jit(fn).lower(*args).compile())


def _scan_correction(jaxpr: jcore.Jaxpr) -> float:
    """FLOPs that XLA's rolled count misses: for each scan (also inside nested calls), length x the body's
    true FLOPs minus what XLA counted for the scan. That is measured, not assumed (one body, or `unroll`
    bodies, or all of them), by compiling the scan alone, so every lowering of `unroll` is counted right."""
    missing = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "scan":
            body = eqn.params["jaxpr"]
            body_true = _jaxpr_xla_flops(body) + _scan_correction(body.jaxpr)
            missing += eqn.params["length"] * body_true - _scan_xla_flops(eqn)
        else:
            for sub in jcore.jaxprs_in_params(eqn.params):
                missing += _scan_correction(sub)
    return missing


def program_flops(fn: Callable, *args) -> tuple[float, float]:
    """(FLOPs of one call of fn(*args) with every lax.scan counted length times, XLA's rolled count).
    The rolled count is `jax.jit(fn).lower(*args).compile().cost_analysis()`."""
    rolled = xla_flops(jax.jit(fn).lower(*args).compile())
    return rolled + _scan_correction(jax.make_jaxpr(fn)(*args).jaxpr), rolled


# ---- the measurements ------------------------------------------------------------------------------------


def measure_training(trainer, key: jax.Array, chunks: int) -> tuple[Any, dict[str, float]]:
    """init (with its compile), run_chunk's lower+compile, one warm-up chunk, then `chunks` timed chunks.
    Returns the state after them and the timings."""
    state, init_s = timed(jax.jit(trainer.init), key)
    start = time.perf_counter()
    run_chunk = jax.jit(trainer.run_chunk, donate_argnums=0).lower(state).compile()
    compile_s = time.perf_counter() - start
    (state, _), _ = timed(run_chunk, state)  # warm-up
    steps0, updates0 = int(state.env_steps), int(state.updates)
    start = time.perf_counter()
    for _ in range(chunks):
        state, _ = run_chunk(state)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return state, {
        "init_s": init_s,
        "compile_s": compile_s,
        "chunk_s": seconds / chunks,
        "env_steps_per_s": (int(state.env_steps) - steps0) / seconds,
        "updates_per_s": (int(state.updates) - updates0) / seconds,
    }


def measure_learner(agent, agent_state, batch: dict, key: jax.Array, updates: int) -> dict[str, float]:
    """`updates` learner updates on one fixed batch ([B, T, ...] leaves), as a lax.scan in one jit (best of
    3 calls after a warm-up); FLOPs of one update from its own compiled function. Any agent: `agent.learn`
    of the `Agent` interface, its metrics (scalars) kept as outputs."""
    flops, rolled = program_flops(agent.learn, agent_state, batch, key)

    def many(agent_state, batch, keys):  # a closed-over batch would be constant-folded
        def update(agent_state, k):
            agent_state, metrics, _ = agent.learn(agent_state, batch, k)
            return agent_state, metrics

        return jax.lax.scan(update, agent_state, keys)

    keys = jax.random.split(key, updates)
    seconds = best_time(jax.jit(many), agent_state, batch, keys)
    return {
        "learner_update_ms": 1e3 * seconds / updates,
        "update_gflop": flops / 1e9,
        "update_gflop_xla_rolled": rolled / 1e9,
        "update_gflops_per_s": flops / 1e9 / (seconds / updates),
    }


def measure_imagination(config: Config, agent: Imagines, params: Any, key: jax.Array, repeats: int) -> float:
    """Imagined latent steps per second: B*T starts x imag_horizon steps per rollout. Only for an agent with
    the `Imagines` hook; `params` is its state's `params`."""
    c = config
    starts = c.replay.batch_size * c.replay.batch_length
    start = agent.world_model.zeros((starts,))  # with the backbone's zero state, if it has one

    def rollouts(params, start, keys):
        def one(total, k):
            policy = lambda feat, k_act: agent.policy(params.actor, feat).sample(seed=k_act)
            states, _ = imagine(agent.world_model, params.wm, policy, start, c.dreamer.imag_horizon, k)
            return total + states.feat.sum(), None  # the sum keeps every state alive

        return jax.lax.scan(one, jnp.float32(0), keys)[0]

    keys = jax.random.split(key, repeats)
    seconds = best_time(jax.jit(rollouts), params, start, keys)
    return repeats * starts * c.dreamer.imag_horizon / seconds


def measure_act_calls(
    agent, agent_state, obs: dict, action_dim: int, key: jax.Array, num_envs: Sequence[int]
) -> list[dict[str, float]]:
    """`agent.act` alone, jitted, on a batch of n observations for each n in `num_envs` (first steps of
    their episodes, fresh policy carries): one record per n (ACT_CALL_FIELDS) with the first call's time
    beyond the best (compilation), the best of 3 calls in ms, and n / that in steps/s. `obs`: one
    observation {key: [1, ...]}, repeated n times."""
    act = jax.jit(agent.act)
    calls = []
    for n in num_envs:
        batch = jax.tree.map(lambda x, n=n: jnp.repeat(x, n, axis=0), obs)
        carry, prev_action, is_first = agent.initial_carry(n), jnp.zeros((n, action_dim)), jnp.ones(n, bool)
        first, best = first_and_best_time(act, agent_state, carry, batch, prev_action, is_first, key)
        calls.append(
            dict(num_envs=n, compile_s=max(first - best, 0.0), act_ms=1e3 * best, steps_per_s=n / best)
        )
    return calls


def measure_acting(config: Config, agent, agent_state, key: jax.Array, steps: int) -> float:
    """Env steps per second (over num_envs envs) of policy forward + env step, no learning, no replay."""
    env = make_env(config.env.name, config.env.num_envs, config.run.seed, config.env.sticky_actions)
    k_reset, k_loop = jax.random.split(key)
    env_state, ts = env.reset(k_reset)

    def rollout(agent_state, env_state, ts, keys):
        def step(carry, k):
            env_state, ts, policy, prev_action = carry
            k_act, k_env = jax.random.split(k)
            action, policy = agent.act(agent_state, policy, ts.obs, prev_action, ts.is_first, k_act)
            env_state, ts = env.step(env_state, env_action(env.spec, action), k_env)
            return (env_state, ts, policy, action), None

        n = config.env.num_envs
        start = (env_state, ts, agent.initial_carry(n), jnp.zeros((n, env.spec.action_dim)))
        return jax.lax.scan(step, start, keys)[0]

    keys = jax.random.split(k_loop, steps)
    seconds = best_time(jax.jit(rollout), agent_state, env_state, ts, keys)
    return steps * config.env.num_envs / seconds


def measure_training_host(trainer, key: jax.Array, chunks: int) -> tuple[Any, dict[str, float]]:
    """`measure_training` for the host loop (`mbrl_jax.host_loop`): its pieces compile lazily on first use, so
    `compile_s` is the warm-up chunk's time beyond a steady chunk's."""
    start = time.perf_counter()
    state = jax.block_until_ready(trainer.init(key))
    init_s = time.perf_counter() - start
    start = time.perf_counter()
    state, _ = trainer.run_chunk(state)
    jax.block_until_ready(state)
    warm_s = time.perf_counter() - start
    steps0, updates0 = int(state.env_steps), int(state.updates)
    start = time.perf_counter()
    for _ in range(chunks):
        state, _ = trainer.run_chunk(state)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    return state, {
        "init_s": init_s,
        "compile_s": max(warm_s - seconds / chunks, 1e-6),
        "chunk_s": seconds / chunks,
        "env_steps_per_s": (int(state.env_steps) - steps0) / seconds,
        "updates_per_s": (int(state.updates) - updates0) / seconds,
    }


def measure_acting_host(config: Config, agent, agent_state, key: jax.Array, steps: int) -> float:
    """`measure_acting` for a host env: the jitted policy step, one transfer, the envs stepped on the host."""
    env = make_host_env(
        config.env.name, config.env.num_envs, config.env.sticky_actions, config.env.action_repeat
    )
    n = config.env.num_envs
    act = jax.jit(agent.act)
    ts = env.reset(0)
    carry, prev = agent.initial_carry(n), jnp.zeros((n, env.spec.action_dim))
    keys = jax.random.split(key, steps + 1)
    for i in range(steps + 1):  # the first step compiles
        if i == 1:
            start = time.perf_counter()
        obs, first = jax.device_put((ts.obs, ts.is_first))
        prev, carry = act(agent_state, carry, obs, prev, first, keys[i])
        ts = env.step(np.asarray(env_action(env.spec, prev)))
    seconds = time.perf_counter() - start
    env.close()
    return steps * n / seconds


def measure_host_env(config: Config, steps: int) -> float:
    """Env steps/s of the host envs alone (uniformly random actions; no policy, no transfer to the device)."""
    env = make_host_env(
        config.env.name, config.env.num_envs, config.env.sticky_actions, config.env.action_repeat
    )
    rng = np.random.default_rng(0)
    env.reset(0)
    start = time.perf_counter()
    for _ in range(steps):
        env.step(env.random_actions(rng))
    seconds = time.perf_counter() - start
    env.close()
    return steps * env.num_envs / seconds


def measure_xla_env(config: Config, steps: int) -> float:
    """Env steps/s of envpool's envs alone on its XLA interface: a jitted scan of `steps` steps with
    uniformly random actions (no policy)."""
    env = make_env(config.env.name, config.env.num_envs, config.run.seed, config.env.sticky_actions)

    def rollout(keys):
        def step(env_state, k):
            action = env_action(env.spec, random_action(env.spec, env.num_envs, k))
            return env.step(env_state, action, k)[0], None

        return jax.lax.scan(step, env.reset(keys[0])[0], keys)[0].episode_length

    seconds = best_time(jax.jit(rollout), jax.random.split(jax.random.PRNGKey(0), steps))
    env.close()
    return steps * env.num_envs / seconds


def measure(
    config: Config,
    updates: int = 5,
    chunks: int = 2,
    act_steps: int = 100,
    peak_gflops: float | None = None,
    peak_size: int = 2048,
    act_num_envs: Sequence[int] = DEFAULT_ACT_NUM_ENVS,
) -> dict[str, Any]:
    """Every throughput figure of one config, for the agent `config.agent` names: RESULT_FIELDS, plus
    IMAGINATION_FIELDS for an agent with the `Imagines` hook and HOST_FIELDS for a host env. `peak_gflops` is
    measured here with a `peak_size` matmul unless given (a run over several presets measures it once);
    `act_num_envs`: the batch sizes of `act_calls`."""
    if updates < 1 or chunks < 1 or act_steps < 1 or not act_num_envs or min(act_num_envs) < 1:
        raise ValueError(
            f"updates, chunks, act_steps and every act_num_envs must be >= 1, got {updates}, {chunks}, "
            f"{act_steps}, {list(act_num_envs)}"
        )
    c = config
    if peak_gflops is None:
        peak_gflops = measure_peak_gflops(peak_size)
    loop = resolve_loop(c.env.name, c.env.loop)
    host = loop == "host"
    spec = env_spec(c.env.name, c.env.action_repeat)
    agent = make_agent(c, spec)
    k_train, k_batch, k_learn, k_imag, k_act = jax.random.split(jax.random.PRNGKey(c.run.seed), 5)

    if host:
        state, result = measure_training_host(make_host_train(c), k_train, chunks)
    else:
        state, result = measure_training(make_train(c), k_train, chunks)
    batch = jax.jit(sample_learner_batch, static_argnums=0)(c, state.replay, k_batch)[0]
    result.update(measure_learner(agent, state.agent, batch, k_learn, updates))
    if isinstance(agent, Imagines):
        result.update(
            imag_horizon=c.dreamer.imag_horizon,
            imagination_steps_per_s=measure_imagination(c, agent, state.agent.params, k_imag, updates),
            imagination_note=IMAGINATION_NOTE,
        )
    if host:
        result["act_steps_per_s"] = measure_acting_host(c, agent, state.agent, k_act, act_steps)
        result["env_only_steps_per_s"] = measure_host_env(c, act_steps)
    else:
        result["act_steps_per_s"] = measure_acting(c, agent, state.agent, k_act, act_steps)
        if is_host_env(c.env.name):
            result["env_only_steps_per_s"] = measure_xla_env(c, act_steps)
    one_obs = jax.tree.map(lambda x: x[:1], state.timestep.obs)
    result["act_calls"] = measure_act_calls(
        agent, state.agent, one_obs, spec.action_dim, jax.random.fold_in(k_act, 1), act_num_envs
    )
    result["peak_gflops"] = peak_gflops
    result["peak_fraction"] = result["update_gflops_per_s"] / peak_gflops
    result["num_params"] = sum(x.size for x in jax.tree.leaves(state.agent.params))
    result["peak_rss_mb"] = peak_rss_mb()
    result.update(
        agent=c.agent,
        env=c.env.name,
        loop=loop,
        num_envs=c.env.num_envs,
        batch_size=c.replay.batch_size,
        batch_length=c.replay.batch_length,
        env_steps_per_chunk=c.env_steps_per_chunk,
        updates_per_chunk=c.iterations_per_chunk * c.updates_per_iteration,
    )
    fields = (
        RESULT_FIELDS
        + (IMAGINATION_FIELDS if isinstance(agent, Imagines) else ())
        + (HOST_FIELDS if is_host_env(c.env.name) else ())
    )
    return {k: result[k] for k in fields}


def profile_update(config: Config, top: int = 15) -> dict[str, Any]:
    """XLA ops of one learner update ranked by measured time (benchmarks/profile_ops.py), for any agent."""
    trainer = make_train(config)
    agent = make_agent(config, env_spec(config.env.name, config.env.action_repeat))
    state = jax.jit(trainer.init)(jax.random.PRNGKey(config.run.seed))
    batch = sample_learner_batch(config, state.replay, jax.random.PRNGKey(1))[0]
    return profile_ops(jax.jit(agent.learn), state.agent, batch, jax.random.PRNGKey(2), top=top)


# ---- command line ----------------------------------------------------------------------------------------


class PerNumEnvs(NamedTuple):
    """The format of the `act_calls` rows: each call's `field` as "n=<num_envs>: <value by fmt>", joined by
    "; ". It has a format string's `.format(value)`, so every row of ROWS is formatted alike."""

    field: str
    fmt: str

    def format(self, calls: list[dict[str, float]]) -> str:
        return "; ".join(f"n={call['num_envs']}: {self.fmt.format(call[self.field])}" for call in calls)


ROWS = (  # (field, label, format: a format string or a PerNumEnvs); a field a result lacks shows as "–"
    ("agent", "agent", "{}"),
    ("compile_s", "run_chunk compile (s)", "{:.1f}"),
    ("init_s", "init incl. compile (s)", "{:.1f}"),
    ("chunk_s", "chunk (s)", "{:.2f}"),
    ("env_steps_per_s", "env steps/s (training)", "{:,.0f}"),
    ("updates_per_s", "updates/s (training)", "{:.2f}"),
    ("learner_update_ms", "learner update (ms)", "{:.1f}"),
    ("imagination_steps_per_s", "imagined steps/s", "{:,.0f}"),
    ("act_steps_per_s", "env steps/s (acting only)", "{:,.0f}"),
    ("act_calls", "agent.act alone, ms per call (n envs)", PerNumEnvs("act_ms", "{:,.1f}")),
    ("act_calls", "agent.act alone, env steps/s (n envs)", PerNumEnvs("steps_per_s", "{:,.1f}")),
    ("loop", "loop", "{}"),
    ("env_only_steps_per_s", "env steps/s (envs only, random actions)", "{:,.0f}"),
    ("update_gflop", "GFLOP per update", "{:.3f}"),
    ("update_gflops_per_s", "update GFLOP/s", "{:.2f}"),
    ("peak_gflops", "f32 matmul peak GFLOP/s", "{:.1f}"),
    ("peak_fraction", "fraction of peak", "{:.2%}"),
    ("num_params", "parameters", "{:,}"),
    ("peak_rss_mb", "peak RSS (MiB)", "{:,.0f}"),
)


def print_preset_table(title: str, report: dict[str, Any], rows) -> None:
    """A table on stderr, one column per preset of `report["results"]`: `rows` are (label, value of a
    result or None, format); None shows as '–'. Shared by the benchmarks that compare presets."""
    from rich.console import Console
    from rich.table import Table

    m = report["machine"]
    table = Table(
        title=title,
        caption=f"{m['device_kind']} ({m['platform']}), {m['cpu_count']} CPUs, jax {m['jax_version']}",
    )
    table.add_column("")
    for result in report["results"]:
        table.add_column(result["preset"], justify="right")
    for label, value, fmt in rows:
        cells = (value(r) for r in report["results"])
        table.add_row(label, *("–" if v is None else fmt.format(v) for v in cells))
    Console(stderr=True).print(table)


def print_table(report: dict[str, Any]) -> None:
    rows = [(label, lambda r, f=field: r.get(f), fmt) for field, label, fmt in ROWS]
    print_preset_table("mbrl_jax throughput", report, rows)


def split_preset(value: str) -> tuple[list[str], dict[str, Any]]:
    """A `--preset` value, "atari100k,size1m,env.loop=host", as its presets and its own overrides."""
    items = [item for item in value.split(",") if item]
    return [i for i in items if "=" not in i], parse_overrides([i for i in items if "=" in i])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset",
        action="append",
        default=None,
        help=f"a configuration: comma-separated presets applied left to right, then its own key=value "
        f"overrides; repeat the flag to measure several (default: {DEFAULT_PRESET}); known: "
        f"{', '.join(PRESETS)}",
    )
    parser.add_argument(
        "--updates", type=int, default=5, help="learner updates (and imagination rollouts) timed in one jit"
    )
    parser.add_argument("--chunks", type=int, default=2, help="training chunks timed after one warm-up chunk")
    parser.add_argument(
        "--act-steps", type=int, default=100, help="steps of policy and env timed in one jit (acting only)"
    )
    parser.add_argument(
        "--act-num-envs",
        default=",".join(map(str, DEFAULT_ACT_NUM_ENVS)),
        help="comma-separated batch sizes n at which agent.act alone is timed (act_calls)",
    )
    parser.add_argument("--peak-size", type=int, default=2048, help="matmul size for the f32 peak")
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument(
        "--note",
        help="stored as given with each result, e.g. whether the machine was shared (RESULTS.md shows it)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="add a profile of one learner update: XLA ops ranked by time"
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every preset")
    return parser.parse_args(argv)


def parse_num_envs(value: str) -> list[int]:
    """'1,8' -> [1, 8]; ConfigError naming --act-num-envs unless every item is an int >= 1."""
    try:
        num_envs = [int(item) for item in value.split(",")]
    except ValueError:
        num_envs = []
    if not num_envs or min(num_envs) < 1:
        raise ConfigError(f"--act-num-envs must be comma-separated ints >= 1, got {value!r}")
    return num_envs


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.preset or [DEFAULT_PRESET]
    try:
        if min(args.updates, args.chunks, args.act_steps, args.peak_size) < 1:
            raise ConfigError(
                f"--updates, --chunks, --act-steps and --peak-size must be >= 1, got {args.updates}, "
                f"{args.chunks}, {args.act_steps}, {args.peak_size}"
            )
        act_num_envs = parse_num_envs(args.act_num_envs)
        overrides = parse_overrides(args.overrides)
        configs = [make_config(*presets, **{**overrides, **own}) for presets, own in map(split_preset, names)]
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    peak = measure_peak_gflops(args.peak_size)
    results = []
    for name, config in zip(names, configs, strict=True):
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        figures = measure(config, args.updates, args.chunks, args.act_steps, peak, act_num_envs=act_num_envs)
        result = {"preset": name, **figures}
        if args.note:
            result["note"] = args.note
        if args.profile:
            result["profile"] = profile_markdown(profile_update(config))
            print(result["profile"], file=sys.stderr)
        results.append(result)
    report = {
        "machine": machine_info(),
        "settings": {
            "updates": args.updates,
            "chunks": args.chunks,
            "act_steps": args.act_steps,
            "act_num_envs": act_num_envs,
            "peak_size": args.peak_size,
            "overrides": overrides,
        },
        "results": results,
    }
    print_table(report)
    emit(report, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
