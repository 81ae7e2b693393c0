"""Does a Breakout-MinAtar world model see the ball being missed, and would it see the catch?

    python experiments/breakout_terminations.py runs/Breakout-MinAtar-minatar-seed0

Reads the latest checkpoint of a `--preset minatar` run (Breakout, the GRU backbone) and its replay. Each
env's replayed stream is observed with the posterior; from the posterior k steps before a step, the prior
rolls forward open-loop and the continue head gives P(terminal) = 1 - cont / discount at that step:
1. with the actions the agent took, before terminal steps (the ball missed) and before other steps;
2. before the terminal steps whose landing column the paddle could still reach, with the paddle sent there
   instead (move toward the column the ball lands in, then stay): what the actor would learn in imagination
   if it tried those actions.
Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import numpy as np

from mbrl_jax.agents.dreamer import make_dreamer
from mbrl_jax.checkpoint import Checkpointer, load_config
from mbrl_jax.config import config_from_dict
from mbrl_jax.envs import env_spec
from mbrl_jax.trainer import make_train
from mbrl_jax.world_models.rssm import WorldModel, observe

AHEAD = (1, 2, 4, 6, 8, 10)
SAMPLES = 8  # prior samples averaged per roll-out
NOOP, LEFT, RIGHT = 0, 1, 2  # gymnax Breakout-MinAtar's action indices
PADDLE, BALL = 0, 1  # its observation channels; the paddle moves along row 9, where the ball is missed


def load_run(logdir: Path):
    """The run's config, world model, world-model parameters, replay data (numpy) and checkpoint step."""
    stored = load_config(logdir)
    if stored is None:
        raise SystemExit(f"{logdir}: holds no run (no config.yaml)")
    config = config_from_dict(stored)
    if config.agent != "dreamer" or config.env.name != "Breakout-MinAtar" or config.wm.backbone != "gru":
        raise SystemExit(f"{logdir}: needs a DreamerV3 GRU run on Breakout-MinAtar")
    abstract = jax.eval_shape(make_train(config).init, jax.random.PRNGKey(0))
    with Checkpointer(logdir / "checkpoints") as ckpt:
        step = ckpt.latest_step()
        if step is None:
            raise SystemExit(f"{logdir}: no checkpoint")
        state = ckpt.restore(step, abstract)
    if int(state.replay.written) > int(state.replay.count):
        raise SystemExit(f"{logdir}: the replay has wrapped around; this script reads it from slot 0")
    count = int(state.replay.count)
    data = jax.tree.map(lambda x: np.asarray(x[:, :count]), jax.device_get(state.replay.data))
    model = make_dreamer(config, env_spec(config.env.name)).world_model
    return config, model, state.agent.params.wm, data, step


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("logdir", type=Path)
    args = parser.parse_args()
    config, model, params, data, step = load_run(args.logdir)
    discount = config.dreamer.discount
    action, is_first, terminal = data["action"], data["is_first"], data["is_terminal"]
    keys = jax.random.split(jax.random.PRNGKey(0), action.shape[1])
    posts, _ = jax.jit(lambda *a: observe(model, params, *a))(data["obs"], action, is_first, keys)
    p_term = jax.jit(
        lambda feat: (
            1 - jax.nn.sigmoid(model.apply(params, feat, method=WorldModel.reward_cont)[1]) / discount
        )
    )
    img_step = jax.jit(lambda latent, a, k: model.apply(params, latent, a, k, method=WorldModel.img_step))
    episode = np.cumsum(is_first, 1)

    def rollout(env, t, k, actions) -> float:
        """Mean P(terminal) at steps t after k prior steps from the posterior at t - k; actions[j]: [N, A]."""
        values = []
        for sample in range(SAMPLES):
            latent = jax.tree.map(lambda x: x[env, t - k], posts)
            key = jax.random.PRNGKey(1000 + sample)
            for j in range(k):
                key, sub = jax.random.split(key)
                latent = img_step(latent, actions[j], sub)
            values.append(np.asarray(p_term(latent.feat)))
        return float(np.mean(values))

    def same_episode(env, t, k):
        return (t - k >= 0) & (episode[env, np.maximum(t - k, 0)] == episode[env, t])

    rng = np.random.default_rng(0)
    others = np.argwhere(~terminal & ~is_first)
    targets = {
        "terminal": np.argwhere(terminal),
        "other": others[rng.choice(len(others), 2000, replace=False)],
    }
    posterior = np.asarray(p_term(posts.feat))
    result = {
        "logdir": str(args.logdir),
        "checkpoint_env_steps": step,
        "terminal_steps": int(terminal.sum()),
        "posterior": {
            "terminal": float(posterior[terminal].mean()),
            "other": float(posterior[~terminal].mean()),
        },
    }
    for name, index in targets.items():
        result[f"prior_taken_{name}"] = {}
        for k in AHEAD:
            env, t = index[:, 0], index[:, 1]
            keep = same_episode(env, t, k)
            env, t = env[keep], t[keep]
            taken = [action[env, t - k + j + 1] for j in range(k)]
            result[f"prior_taken_{name}"][k] = {"p_terminal": rollout(env, t, k, taken), "n": len(env)}

    paddle = data["obs"]["image"][:, :, 9, :, PADDLE].argmax(-1)
    landing = data["obs"]["image"][:, :, 9, :, BALL].argmax(-1)
    result["counterfactual"] = {}
    for k in AHEAD[1:]:
        env, t = targets["terminal"][:, 0], targets["terminal"][:, 1]
        keep = same_episode(env, t, k)
        env, t = env[keep], t[keep]
        goal, pos = landing[env, t], paddle[env, np.maximum(t - k, 0)]
        reachable = np.abs(goal - pos) <= k - 1  # at the landing column by step t - 1
        env, t, goal, pos = env[reachable], t[reachable], goal[reachable], pos[reachable]
        taken = [action[env, t - k + j + 1] for j in range(k)]
        sent = []
        for _ in range(k):
            move = np.sign(goal - pos)
            sent.append(
                np.eye(3, dtype=np.float32)[np.where(move < 0, LEFT, np.where(move > 0, RIGHT, NOOP))]
            )
            pos = pos + move
        result["counterfactual"][k] = {
            "n": len(env),
            "p_terminal_taken": rollout(env, t, k, taken),
            "p_terminal_paddle_sent": rollout(env, t, k, sent),
        }

    print(f"{args.logdir} at {step} env steps: {result['terminal_steps']} terminal steps in the replay")
    print(
        f"posterior P(terminal): terminal steps {result['posterior']['terminal']:.3f}, "
        f"others {result['posterior']['other']:.4f}"
    )
    print("k | prior, actions taken: terminal steps | other steps | reachable misses: taken | paddle sent")
    for k in AHEAD:
        cf = result["counterfactual"].get(k, {})
        sent_text = (
            f"{cf['p_terminal_taken']:.3f} | {cf['p_terminal_paddle_sent']:.3f} (n={cf['n']})" if cf else "-"
        )
        print(
            f"{k} | {result['prior_taken_terminal'][k]['p_terminal']:.3f} "
            f"(n={result['prior_taken_terminal'][k]['n']}) "
            f"| {result['prior_taken_other'][k]['p_terminal']:.4f}"
            f" | {sent_text}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
