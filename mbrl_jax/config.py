"""Every setting of a run: nested frozen dataclasses grouped by component; presets; validated overrides.

    Config(agent, run, env, replay, optim, + registered groups: wm (wm.gru, wm.mamba, ...), dreamer, tdmpc2)

This module holds `Config`, the `run` group, and the machinery: the field table, presets, overrides,
validation, YAML round trips and `--show-config`. Each other group lives with what it configures (`env` in
mbrl_jax/envs/base.py, `replay` in replay.py, `optim` in optim.py); the world model, each backbone and each
agent register theirs (`mbrl_jax.settings`), and `config.tdmpc2.lr` reads as any other setting.

A setting is named by its dotted path: `replay.batch_size`, `wm.gru.blocks`, `dreamer.imag_horizon`.
`make_config("cartpole", "size1m", **{"run.seed": 3, "replay.batch_size": 32})` (or
`make_config("cartpole", replay={"batch_size": 32})`) applies presets left to right, then overrides, then
validates once; the command line does the same with `--preset a,b` and `key=value` pairs. Each field
carries its meaning and rule (`setting(default, help, rule)`); relations between fields live in the `check`
of the smallest group that holds them. A group the agent (or backbone) does not read keeps its defaults.
Derived quantities (discount, updates per iteration, ...) are properties, never stored fields.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any

# The world model, its backbones and the agents register their groups and presets on import.
import mbrl_jax.world_models  # noqa: F401
from mbrl_jax.agents import AGENTS, check_agent
from mbrl_jax.envs import EnvConfig, check_env_settings, env_spec, resolve_loop
from mbrl_jax.errors import ConfigError, did_you_mean
from mbrl_jax.optim import OptimConfig
from mbrl_jax.replay import ReplayConfig
from mbrl_jax.settings import (
    NON_NEGATIVE,
    POSITIVE,
    PRESETS,
    REGISTERED_GROUPS,
    Composite,
    RegisteredGroups,
    Rule,
    group,
    on_register,
    one_of,
    registered,
    setting,
)

__all__ = ["PRESETS", "Config", "ConfigError", "did_you_mean", "make_config"]
# Groups every agent reads; any other group is read only by the agents that say so (`register_agent`).
SHARED_GROUPS = ("run", "env", "replay")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    seed: int = setting(0, "PRNG seed of the whole run (0 to 2**32 - 1)", NON_NEGATIVE)
    steps: int = setting(30_000, "total env steps over all envs, prefill included", POSITIVE, resumable=True)
    chunk_steps: int = setting(
        1_000, "env steps per compiled chunk: the log / eval / checkpoint interval", POSITIVE
    )
    eval_episodes: int = setting(8, "episodes per evaluation, run in parallel", POSITIVE)
    eval_every: int = setting(
        0,
        "env steps between evaluations, rounded up to whole chunks (0: after every chunk); the last chunk "
        "always evaluates",
        NON_NEGATIVE,
    )
    eval_steps: int = setting(
        0,
        "env steps an evaluation runs at most; an episode not ended by then counts its partial return "
        "(0: the env's episode limit, so every episode ends)",
        NON_NEGATIVE,
    )
    eval_policy: str = setting(
        "sample",
        "evaluation actions: sampled from the policy (as the reference), or its 'mode'",
        one_of("sample", "mode"),
        resumable=True,
    )
    checkpoint_every: int = setting(
        10_000, "env steps between checkpoints (whole chunks); one at the end", POSITIVE, resumable=True
    )
    checkpoint_minutes: float = setting(
        10.0, "also save at the first chunk end this long after the last save", POSITIVE, resumable=True
    )
    keep_checkpoints: int = setting(3, "checkpoints kept on disk", POSITIVE, resumable=True)
    devices: int = setting(
        1,
        "devices in the mesh: a run splits envs, replay and batch over them ('data' axis), a sweep its seeds",
        POSITIVE,
    )


@dataclasses.dataclass(frozen=True)
class Config(Composite):
    agent: str = setting("dreamer", "the agent (mbrl_jax.agents.AGENTS)")
    run: RunConfig = group(RunConfig, "length, seed, evaluation and checkpoints")
    env: EnvConfig = group(EnvConfig, "the environment")
    replay: ReplayConfig = group(ReplayConfig, "the on-device replay and how it is sampled")
    optim: OptimConfig = group(OptimConfig, "the optimiser")
    groups: RegisteredGroups = registered("")  # wm, dreamer, tdmpc2, ...: see mbrl_jax.settings

    # ---- derived ----
    @property
    def env_steps_per_iteration(self) -> int:
        """Env steps (over all envs) between learner phases: the smallest multiple of num_envs that
        makes the number of updates a whole number for the given train_ratio."""
        r = self.replay
        per_update = r.batch_size * r.batch_length / r.train_ratio  # env steps per update
        k = max(1, math.ceil(per_update / self.env.num_envs - 1e-9))
        return k * self.env.num_envs

    @property
    def updates_per_iteration(self) -> int:
        r = self.replay
        return max(1, round(self.env_steps_per_iteration * r.train_ratio / (r.batch_size * r.batch_length)))

    @property
    def effective_train_ratio(self) -> float:
        r = self.replay
        return self.updates_per_iteration * r.batch_size * r.batch_length / self.env_steps_per_iteration

    @property
    def iterations_per_chunk(self) -> int:
        return max(1, round(self.run.chunk_steps / self.env_steps_per_iteration))

    @property
    def env_steps_per_chunk(self) -> int:
        return self.iterations_per_chunk * self.env_steps_per_iteration

    @property
    def chunks_per_eval(self) -> int:
        if self.run.eval_every == 0:
            return 1
        return max(1, math.ceil(self.run.eval_every / self.env_steps_per_chunk))

    @property
    def prefill_steps_per_env(self) -> int:
        return math.ceil(self.replay.prefill / self.env.num_envs)

    @property
    def num_chunks(self) -> int:
        """Chunks after prefill, the last one cut short where the budget ends inside a chunk."""
        remaining = self.run.steps - self.prefill_steps_per_env * self.env.num_envs
        return max(0, math.ceil(remaining / self.env_steps_per_chunk))

    @property
    def total_env_steps(self) -> int:
        """Env steps a run does: `run.steps`, or the next whole iteration (`env_steps_per_iteration`, all
        envs stepping together) above it; likewise the prefill takes whole steps of all envs."""
        prefill = self.prefill_steps_per_env * self.env.num_envs
        per_iteration = self.env_steps_per_iteration
        return prefill + math.ceil(max(0, self.run.steps - prefill) / per_iteration) * per_iteration

    @property
    def sample_length(self) -> int:
        """Steps per sampled window: batch_length, plus one step of context with the replay context."""
        return self.replay.batch_length + int(self.replay.context)

    @property
    def imag_sample_length(self) -> int:
        """Steps per sampled imagination window (frequency sampler): imag_context, plus one of context."""
        return self.replay.imag_context + int(self.replay.context)

    @property
    def capacity_per_env(self) -> int:
        return math.ceil(self.replay.capacity / self.env.num_envs)

    def check(self, path: str = "") -> None:
        r, n = self.replay, self.env.num_envs
        if self.capacity_per_env < self.sample_length:
            raise ConfigError(
                f"replay.batch_length={r.batch_length} (+1 with replay.context) is longer than the replay "
                f"per env (replay.capacity={r.capacity} / env.num_envs={n} = {self.capacity_per_env})"
            )
        if self.prefill_steps_per_env < self.sample_length:
            raise ConfigError(
                f"replay.prefill={r.prefill} gives {self.prefill_steps_per_env} steps per env, fewer than "
                f"the sampled window of {self.sample_length} steps (replay.batch_length, +1 with "
                f"replay.context); allowed: replay.prefill >= {self.sample_length * n}"
            )
        if r.online and n > r.batch_size:
            raise ConfigError(
                f"replay.online=True puts one fresh window per env in each batch, so env.num_envs={n} must "
                f"be <= replay.batch_size={r.batch_size}; or set replay.online=false"
            )
        if r.sampler == "frequency" and self.prefill_steps_per_env < self.imag_sample_length:
            raise ConfigError(
                f"replay.imag_context={r.imag_context} (+1 with replay.context) is longer than the "
                f"{self.prefill_steps_per_env} prefill steps per env; allowed: replay.imag_context <= "
                f"{self.prefill_steps_per_env - int(r.context)}"
            )
        d = self.run.devices
        if d > 1 and r.sampler == "frequency" and r.imag_batch % d:
            raise ConfigError(f"run.devices={d} must divide replay.imag_batch={r.imag_batch}")
        if d > 1 and (n % d or r.batch_size % d):
            raise ConfigError(
                f"run.devices={d} must divide env.num_envs={n} and replay.batch_size={r.batch_size} "
                "(each device holds as many envs and replayed windows as the others)"
            )
        if self.prefill_steps_per_env * n > self.run.steps:
            raise ConfigError(f"replay.prefill={r.prefill} exceeds the budget run.steps={self.run.steps}")

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dict, grouped as the dataclasses are (what config.yaml holds)."""
        out: dict[str, Any] = {}
        for path in FIELDS:
            *groups, name = path.split(".")
            node = out
            for g in groups:
                node = node.setdefault(g, {})
            node[name] = _get(self, path)
        return out

    def flat(self) -> dict[str, Any]:
        """{dotted path: value} of every field."""
        return {path: _get(self, path) for path in FIELDS}

    def replace(self, **overrides: Any) -> Config:
        """This config with overrides (dotted keys, or group=mapping), validated."""
        return make_config(base=self, **overrides)


# ---- the field table -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    path: str
    type: type
    help: str
    rule: Rule | None
    default: Any
    resumable: bool


def _walk(cls: type, prefix: str = "") -> Iterable[FieldInfo | tuple[str, type, str]]:
    """Every setting (a FieldInfo) and nested group ((path, class, help), before its settings) of `cls` in
    order, the groups registered under a `registered` field in its place."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if "registered" in f.metadata:
            subgroups = [
                (n, d.cls, d.help) for n, d in REGISTERED_GROUPS.get(f.metadata["registered"], {}).items()
            ]
        elif dataclasses.is_dataclass(hints[f.name]):
            subgroups = [(f.name, hints[f.name], f.metadata.get("help", ""))]
        else:
            m = f.metadata
            yield FieldInfo(prefix + f.name, hints[f.name], m["help"], m["rule"], f.default, m["resumable"])
            continue
        for name, sub, help in subgroups:
            yield prefix + name, sub, help
            yield from _walk(sub, f"{prefix}{name}.")


FIELDS: dict[str, FieldInfo] = {}
GROUPS: dict[str, tuple[type, str]] = {}
# Fields a stored run may be resumed with other values of (`setting(..., resumable=True)`): how long it
# trains, how often it saves or how it is evaluated (evaluation draws its keys apart from training's), and
# `wm.conv`, the same function with the same parameters (a checkpoint moves between CPU and GPU).
RESUMABLE_FIELDS: set[str] = set()


def _refresh_tables() -> None:
    """Rebuilds the field and group tables in place (after a component registers a group)."""
    members = list(_walk(Config))
    FIELDS.clear()
    FIELDS.update({m.path: m for m in members if isinstance(m, FieldInfo)})
    GROUPS.clear()
    GROUPS.update({m[0]: m[1:] for m in members if not isinstance(m, FieldInfo)})
    RESUMABLE_FIELDS.clear()
    RESUMABLE_FIELDS.update(path for path, info in FIELDS.items() if info.resumable)


_refresh_tables()
on_register(_refresh_tables)


def _get(config: Any, path: str) -> Any:
    for name in path.split("."):
        config = getattr(config, name)
    return config


def _build(cls: type, values: Mapping[str, Any], prefix: str = "") -> Any:
    hints, kwargs = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        path = prefix + f.name
        if "registered" in f.metadata:
            defs = REGISTERED_GROUPS.get(f.metadata["registered"], {})
            kwargs[f.name] = RegisteredGroups(
                tuple((name, _build(d.cls, values, f"{prefix}{name}.")) for name, d in defs.items())
            )
        elif dataclasses.is_dataclass(hints[f.name]):
            kwargs[f.name] = _build(hints[f.name], values, path + ".")
        elif path in values:
            kwargs[f.name] = values[path]
    return cls(**kwargs)


# ---- construction and validation -------------------------------------------------------------------------


def coerce_value(key: str, value: Any) -> Any:
    """Turns a CLI string or a Python value into the field's type, or raises ConfigError."""
    if key not in FIELDS:
        raise ConfigError(
            f"unknown config key '{key}'{did_you_mean(key, FIELDS)}; see `python experiments/run.py "
            "--show-config` for every key"
        )
    typ = FIELDS[key].type
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            if typ is bool:
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError
                return text.lower() in ("true", "1")
            if typ is int:
                number = float(text.replace("_", ""))
                if not number.is_integer():
                    raise ValueError
                return int(number)
            return typ(text.replace("_", ""))
        except ValueError:
            raise ConfigError(f"{key}={value!r} is not a valid {typ.__name__}") from None
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if not isinstance(value, typ) or (typ is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key}={value!r} is not a valid {typ.__name__}")
    return value


# Counters and sizes are int32 on the device; the seed becomes a uint32 PRNG key.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1


def _check_unread_groups(config: Config) -> None:
    """A setting in a group the agent does not read would be ignored: refused unless it is the default."""
    reads = {*SHARED_GROUPS, config.agent, *AGENTS[config.agent].reads}
    for path, info in FIELDS.items():
        top = path.split(".", 1)[0]
        if "." not in path or top in reads or _get(config, path) == info.default:
            continue
        readers = [f"agent={name!r}" for name, d in AGENTS.items() if top == name or top in d.reads]
        read_by = f"read by {' and '.join(readers)}" if readers else "read by no registered agent"
        raise ConfigError(
            f"{path}={_get(config, path)!r} is a setting of the {top!r} group, {read_by}; agent="
            f"{config.agent!r} reads {', '.join(sorted(reads))} and would ignore it: leave it at "
            f"{info.default!r}"
        )


def _check_field(info: FieldInfo, value: Any) -> None:
    if info.type is float and not math.isfinite(value):
        raise ConfigError(f"{info.path}={value!r} is not finite; allowed: a finite number")
    if info.type is int:
        seed = info.path == "run.seed"
        high = UINT32_MAX if seed else INT32_MAX
        if value > high:
            kind = "a uint32 PRNG seed" if seed else "an int32 on the device"
            raise ConfigError(f"{info.path}={value!r} is too large; allowed: at most {high} ({kind})")
    if info.rule is not None and not info.rule.test(value):
        raise ConfigError(f"{info.path}={value!r} must be {info.rule.allowed}")


def validate(config: Config) -> Config:
    """Checks every field against its rule, that the groups the agent does not read keep their defaults,
    then each group's relations, then the agent's and env's; raises ConfigError naming the field."""
    for path, info in FIELDS.items():
        _check_field(info, _get(config, path))
    if config.agent not in AGENTS:
        raise ConfigError(
            f"agent={config.agent!r} is not known{did_you_mean(config.agent, AGENTS)}; "
            f"allowed: {', '.join(map(repr, AGENTS))}"
        )
    _check_unread_groups(config)
    for path in GROUPS:
        group_value = _get(config, path)
        if hasattr(group_value, "check"):
            group_value.check(path)
    config.check()
    check_env_settings(config.env, config.run.devices)
    resolve_loop(config.env.name, config.env.loop)
    check_agent(config, env_spec(config.env.name, config.env.action_repeat))
    return config


def _flatten_overrides(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """{"replay": {"batch_size": 8}, "run.seed": 1} -> {"replay.batch_size": 8, "run.seed": 1}."""
    flat = {}
    for key, value in overrides.items():
        if key in GROUPS and isinstance(value, Mapping):
            flat.update(_flatten_overrides({f"{key}.{k}": v for k, v in value.items()}))
        else:
            flat[key] = value
    return flat


def make_config(*presets: str, base: Config | None = None, **overrides: Any) -> Config:
    """Presets applied left to right on `base` (default Config()), then overrides; validated.

    Overrides are dotted keys (`**{"replay.batch_size": 32}`) or groups (`replay={"batch_size": 32}`).
    """
    values = (base or Config()).flat()
    for name in presets:
        if name not in PRESETS:
            raise ConfigError(
                f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; allowed: {', '.join(PRESETS)}"
            )
        values.update(PRESETS[name])
    for key, value in _flatten_overrides(overrides).items():
        values[key] = coerce_value(key, value)
    return validate(_build(Config, values))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['optim.lr=1e-4', 'replay.batch_size=32'] -> {'optim.lr': 1e-4, 'replay.batch_size': 32}, typed."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, value = (part.strip() for part in pair.split("=", 1))
        if key in out:
            raise ConfigError(f"{key} is given twice ({pair!r} and an earlier one); give it once")
        out[key] = coerce_value(key, value)
    return out


# Fields added after runs were already stored, with the value that earlier runs behaved as: a stored config
# without the field reads as what it ran with, not as today's default.
ADDED_FIELDS_BEFORE: dict[str, Any] = {"run.eval_policy": "mode"}

# The flat keys of mbrl_jax 0.1 (before the groups), so that its run folders stay readable and resumable.
_RENAMED = {
    "env": ("env.name",),
    "replay_capacity": ("replay.capacity",),
    "replay_context": ("replay.context",),
    "replay_online": ("replay.online",),
    "opt_eps": ("optim.eps",),
    "blocks": ("wm.gru.blocks",),
    "unimix": ("wm.unimix", "dreamer.unimix"),  # 0.1 had one unimix for the latents and the policy
}
LEGACY_KEYS: dict[str, tuple[str, ...]] = {
    **{
        p.rsplit(".", 1)[1]: (p,)
        for p in FIELDS
        if p.count(".") == 1
        and p.split(".")[0] in ("run", "env", "replay", "wm", "dreamer", "optim")  # 0.1's groups
        and p not in ADDED_FIELDS_BEFORE
        and all(p not in paths for paths in _RENAMED.values())
    },
    **_RENAMED,
}


def config_from_dict(values: Mapping[str, Any]) -> Config:
    """A config from its `to_dict()` form (nested groups), or from an mbrl_jax 0.1 flat dict; validated."""
    if any(isinstance(v, Mapping) for v in values.values()):
        flat = _flatten_overrides(values)
    else:
        unknown = sorted(set(values) - set(LEGACY_KEYS) - {"agent"})
        if unknown:
            raise ConfigError(f"unknown config keys {unknown}")
        flat = {path: v for k, v in values.items() for path in LEGACY_KEYS.get(k, (k,))}
    unknown = sorted(set(flat) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown config keys {unknown}")
    flat = {**ADDED_FIELDS_BEFORE, **flat}
    return validate(_build(Config, {k: coerce_value(k, v) for k, v in flat.items()}))


def config_diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: {dotted path: (a_value, b_value)}."""
    fa, fb = a.flat(), b.flat()
    return {k: (fa[k], fb[k]) for k in FIELDS if fa[k] != fb[k]}


def describe_config(config: Config) -> str:
    """The resolved config, one `path = value  # meaning` line per field under its group's heading."""
    lines, width = [], max(len(f"{p} = {_get(config, p)!r}") for p in FIELDS)
    current = None
    for path, info in FIELDS.items():
        group_path = path.rsplit(".", 1)[0] if "." in path else ""
        if group_path != current:
            current = group_path
            if group_path:
                lines.append(f"\n[{group_path}]  {GROUPS[group_path][1]}")
        text = f"{path} = {_get(config, path)!r}"
        lines.append(f"{text:<{width}}  # {info.help}")
    return "\n".join(lines).lstrip("\n")
