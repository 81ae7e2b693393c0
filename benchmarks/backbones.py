"""World-model training cost against window length for each sequence backbone, and imagination speed.

    python benchmarks/backbones.py                       # gru, mamba, transformer at T = 64, 256, 1024
    python benchmarks/backbones.py --backbones gru,mamba --lengths 64,256 \
        --out benchmarks/results/backbones-cpu.json --plot benchmarks/results/backbones-cpu.png

For every backbone and window length T: one world-model update (loss and gradient of `world_model_loss` on a
random batch of `--batch` windows of T steps, the same jitted function the learner runs) timed best of
`--repeats` calls, and XLA's temporary memory for it (`compiled.memory_analysis().temp_size_in_bytes`: the
activations the backward pass keeps, which is what grows with T). The transformer attends to the last
`wm.transformer.context` steps (64 unless overridden), but its training form scores every query against the
whole [cache, window] and masks, so its cost still grows as T^2. Then imagination steps/s:
`imagine_trajectory` (policy, prior step, reward and continue heads) from the posterior states of a T = 64
batch for `dreamer.imag_horizon` steps. Settings are the `classic` preset's model (deter 256) unless
overridden. The JSON object is the last line of stdout (and `--out`); the table goes to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable from a checkout without install

from benchmarks.report import emit, machine_info  # noqa: E402

BACKBONES = ("gru", "mamba", "transformer")


def random_batch(spec, batch: int, length: int, key) -> dict:
    import jax
    import jax.numpy as jnp

    from mbrl_jax.envs.base import obs_dtype

    k_obs, k_act = jax.random.split(key)
    obs = {}
    for name, shape in spec.obs_shapes.items():
        x = jax.random.normal(jax.random.fold_in(k_obs, len(obs)), (batch, length, *shape))
        obs[name] = x.astype(obs_dtype(shape))
    if spec.discrete:
        action = jax.nn.one_hot(
            jax.random.randint(k_act, (batch, length), 0, spec.action_dim), spec.action_dim
        )
    else:
        action = jax.random.uniform(k_act, (batch, length, spec.action_dim), minval=-1, maxval=1)
    flags = jnp.zeros((batch, length), bool)
    return {
        "obs": obs,
        "action": action,
        "reward": jnp.zeros((batch, length)),
        "is_first": flags.at[:, 0].set(True),
        "is_last": flags,
        "is_terminal": flags,
    }


def make_setup(preset: str, backbone: str, length: int, overrides: dict):
    import jax

    from mbrl_jax.agents.dreamer import make_dreamer
    from mbrl_jax.envs import env_spec

    config = make_setup_config(preset, backbone, length, overrides)
    spec = env_spec(config.env.name)
    agent = make_dreamer(config, spec)
    state = jax.jit(agent.init)(jax.random.PRNGKey(0))  # one program, not one per operation
    return config, spec, agent, state


def measure_update(preset: str, backbone: str, length: int, batch: int, repeats: int, overrides) -> dict:
    import jax

    from benchmarks.throughput import best_time
    from mbrl_jax.agents.dreamer import world_model_loss

    config, spec, agent, state = make_setup(preset, backbone, length, overrides)
    nets = agent.networks
    data = random_batch(spec, batch, length, jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(2), length)

    def update(params, data, keys):
        return jax.value_and_grad(world_model_loss, argnums=1, has_aux=True)(nets, params, data, keys)

    start = time.perf_counter()
    compiled = jax.jit(update).lower(state.params.wm, data, keys).compile()
    compile_s = time.perf_counter() - start
    memory = compiled.memory_analysis()
    seconds = best_time(compiled, state.params.wm, data, keys, repeats=repeats)
    return {
        "backbone": backbone,
        "length": length,
        "batch": batch,
        "update_s": seconds,
        "steps_per_s": batch * length / seconds,
        "temp_mib": memory.temp_size_in_bytes / 2**20 if memory is not None else None,
        "compile_s": compile_s,
        "wm_params": sum(x.size for x in jax.tree.leaves(state.params.wm)),
    }


def measure_imagination(preset: str, backbone: str, batch: int, repeats: int, overrides) -> dict:
    import jax

    from benchmarks.throughput import best_time
    from mbrl_jax.agents.dreamer import imagine_trajectory
    from mbrl_jax.world_models.rssm import observe

    length = 64
    config, spec, agent, state = make_setup(preset, backbone, length, overrides)
    nets, wm = agent.networks, agent.world_model
    data = random_batch(spec, batch, length, jax.random.PRNGKey(1))
    keys = jax.random.split(jax.random.PRNGKey(2), length)
    posts, _ = jax.jit(lambda p: observe(wm, p, data["obs"], data["action"], data["is_first"], keys))(
        state.params.wm
    )
    starts = jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), posts)
    rollout = jax.jit(lambda params, starts, key: imagine_trajectory(nets, params, starts, key)["reward"])
    seconds = best_time(rollout, state.params, starts, jax.random.PRNGKey(3), repeats=repeats)
    horizon = config.dreamer.imag_horizon
    return {
        "backbone": backbone,
        "starts": batch * length,
        "horizon": horizon,
        "rollout_s": seconds,
        "imagination_steps_per_s": batch * length * horizon / seconds,
    }


def print_table(report: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"world-model update vs window length (batch {report['batch']}, {report['preset']})")
    for column in ("backbone", "T", "update s", "steps/s", "temp MiB", "× T=first"):
        table.add_column(column, justify="right")
    first = {}
    for row in report["updates"]:
        base = first.setdefault(row["backbone"], row["update_s"])
        table.add_row(
            row["backbone"],
            str(row["length"]),
            f"{row['update_s']:.3f}",
            f"{row['steps_per_s']:.0f}",
            f"{row['temp_mib']:.0f}" if row["temp_mib"] is not None else "-",
            f"{row['update_s'] / base:.2f}",
        )
    imag = Table(title="imagination (starts x horizon)")
    for column in ("backbone", "starts", "horizon", "rollout s", "steps/s"):
        imag.add_column(column, justify="right")
    for row in report["imagination"]:
        imag.add_row(
            row["backbone"],
            str(row["starts"]),
            str(row["horizon"]),
            f"{row['rollout_s']:.3f}",
            f"{row['imagination_steps_per_s']:.0f}",
        )
    console = Console(stderr=True)
    console.print(table)
    console.print(imag)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for backbone in dict.fromkeys(r["backbone"] for r in report["updates"]):
        rows = [r for r in report["updates"] if r["backbone"] == backbone]
        lengths = [r["length"] for r in rows]
        axes[0].plot(lengths, [r["update_s"] for r in rows], marker="o", label=backbone)
        axes[1].plot(lengths, [r["temp_mib"] or 0 for r in rows], marker="o", label=backbone)
    for ax, label in zip(axes, ("seconds per world-model update", "XLA temporary memory (MiB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("window length T")
        ax.set_ylabel(label)
        ax.legend()
    fig.suptitle(f"{report['preset']}, batch {report['batch']}, {report['machine']['device_kind']}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_list(text: str, flag: str, cast=str) -> list:
    try:
        values = [cast(part) for part in text.split(",") if part.strip()]
    except ValueError:
        values = []
    if not values:
        raise ValueError(f"{flag} takes a comma-separated list, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cartpole", help="task preset whose model is measured")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--lengths", default="64,256,1024", help="window lengths T")
    parser.add_argument("--batch", type=int, default=8, help="windows per update")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the JSON object to this file")
    parser.add_argument("--plot", help="save the plot to this PNG")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    from mbrl_jax.config import ConfigError, parse_overrides

    try:
        backbones = parse_list(args.backbones, "--backbones")
        unknown = [b for b in backbones if b not in BACKBONES]
        if unknown:
            raise ValueError(f"--backbones: unknown {unknown}; allowed: {', '.join(BACKBONES)}")
        lengths = parse_list(args.lengths, "--lengths", int)
        if min(lengths) < 1 or args.batch < 1 or args.repeats < 1:
            raise ValueError("--lengths, --batch and --repeats must be positive")
        overrides = parse_overrides(args.overrides)
        for backbone in backbones:  # bad settings fail here, before any compile
            for length in lengths:
                make_setup_config(args.preset, backbone, length, overrides)
    except (ValueError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {"preset": args.preset, "batch": args.batch, "overrides": overrides}
    report["updates"] = []
    for backbone in backbones:
        for length in lengths:
            print(f"{backbone} T={length} ...", file=sys.stderr, flush=True)
            report["updates"].append(
                measure_update(args.preset, backbone, length, args.batch, args.repeats, overrides)
            )
    report["imagination"] = [
        measure_imagination(args.preset, b, args.batch, args.repeats, overrides) for b in backbones
    ]
    report["machine"] = machine_info()
    print_table(report)
    if args.plot:
        plot(report, Path(args.plot))
    emit(report, args.out)
    return 0


def make_setup_config(preset: str, backbone: str, length: int, overrides: dict):
    from mbrl_jax.config import make_config

    return make_config(
        preset,
        **{
            "wm.backbone": backbone,
            "replay.context": False,
            "replay.batch_length": length,
            # validation wants a window per env in the prefill and the budget; nothing is stepped here
            "replay.prefill": 64 * length,
            "replay.capacity": 64 * length,
            "run.steps": 10**7,
            **overrides,
        },
    )


if __name__ == "__main__":
    sys.exit(main())
