"""A third agent in one file, outside the package: random-shooting MPC on a learned model.

The model is an MLP f(obs, action) -> (next obs - obs, reward), fitted by Adam to replayed transitions.
To act, the agent draws `shooting.candidates` random action sequences of `shooting.horizon` steps per env,
rolls each out through the model, and takes the first action of the sequence with the highest predicted
return. Its settings are the group `shooting`, its preset `shooting`; it reads no other group than run, env
and replay.

`register()` is all it takes to use it (`agent=shooting`); tests call it from a fixture.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from mbrl_jax.agents import AGENTS, Agent, random_action, register_agent
from mbrl_jax.errors import ConfigError
from mbrl_jax.settings import AT_LEAST_ONE, POSITIVE, setting


@dataclasses.dataclass(frozen=True)
class ShootingConfig:
    candidates: int = setting(64, "random action sequences scored per env step", AT_LEAST_ONE)
    horizon: int = setting(4, "steps each sequence is rolled out through the model", AT_LEAST_ONE)
    units: int = setting(32, "hidden width of the model MLP", POSITIVE)
    lr: float = setting(3e-3, "Adam learning rate of the model", POSITIVE)


PRESETS = {
    "shooting": {
        "agent": "shooting",
        "run.steps": 600,
        "run.chunk_steps": 100,
        "run.eval_episodes": 2,
        "env.num_envs": 2,
        "replay.prefill": 64,
        "replay.batch_size": 8,
        "replay.batch_length": 8,
        "replay.train_ratio": 64.0,
        "replay.capacity": 2_000,
        "replay.context": False,
    }
}


@struct.dataclass
class ShootingState:
    params: dict  # the agent interface's one requirement on its state: the trained parameters as `params`
    opt: optax.OptState


class Model(nn.Module):
    obs_dim: int
    units: int

    @nn.compact
    def __call__(self, obs, action):
        x = nn.relu(nn.Dense(self.units)(jnp.concatenate([obs, action], -1)))
        out = nn.Dense(self.obs_dim + 1)(x)
        return obs + out[..., :-1], out[..., -1]


def check_shooting(config, spec) -> None:
    if set(spec.obs_shapes) != {"vector"}:
        raise ConfigError(f"env.name={spec.name!r}: agent='shooting' takes one vector observation")


def make_shooting(config, spec) -> Agent:
    c, (obs_dim,) = config.shooting, spec.obs_shapes["vector"]
    model, optimiser = Model(obs_dim, c.units), optax.adam(c.lr)

    def init(key):
        params = model.init(key, jnp.zeros((1, obs_dim)), jnp.zeros((1, spec.action_dim)))
        return ShootingState(params, optimiser.init(params))

    def act(state, carry, obs, prev_action, is_first, key, mode=False):
        n = obs["vector"].shape[0]
        keys = jax.random.split(key, c.horizon)
        plans = jnp.stack([random_action(spec, n * c.candidates, k) for k in keys])  # [H, n*C, A]

        def step(x, action):
            x, reward = model.apply(state.params, x, action)
            return x, reward

        start = jnp.repeat(obs["vector"], c.candidates, axis=0)
        _, rewards = jax.lax.scan(step, start, plans)
        best = jnp.argmax(rewards.sum(0).reshape(n, c.candidates), -1)
        first = plans[0].reshape(n, c.candidates, -1)
        return first[jnp.arange(n), best], carry

    def learn(state, batch, key):
        # replay convention: action[t + 1] was taken at obs[t] and led to obs[t + 1] and reward[t + 1]
        obs, nxt = batch["obs"]["vector"][:, :-1], batch["obs"]["vector"][:, 1:]
        action, reward = batch["action"][:, 1:], batch["reward"][:, 1:]
        valid = 1.0 - batch["is_first"][:, 1:].astype(jnp.float32)  # no transition across an episode start

        def loss_fn(params):
            pred_obs, pred_reward = model.apply(params, obs, action)
            per_step = ((pred_obs - nxt) ** 2).mean(-1) + (pred_reward - reward) ** 2
            return (per_step * valid).sum() / jnp.maximum(valid.sum(), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(state.params)
        updates, opt = optimiser.update(grads, state.opt)
        return ShootingState(optax.apply_updates(state.params, updates), opt), {"loss_model": loss}, {}

    return Agent(init, lambda n: jnp.zeros((n,)), act, learn, replay_context=lambda carry: {})


def memory(config, obs_shapes) -> int:
    """float32 values an update keeps per replayed step: the MLP's hidden layer and outputs, about twice."""
    (obs_dim,) = obs_shapes["vector"]
    return 2 * (config.shooting.units + obs_dim + 1)


def register() -> str:
    register_agent(
        "shooting",
        make_shooting,
        config=ShootingConfig,
        help="random-shooting MPC on a learned model (tests/toy_agent.py)",
        check=check_shooting,
        memory=memory,
        presets=PRESETS,
    )
    return "shooting"


__all__ = ["AGENTS", "ShootingConfig", "register"]
