"""Every setting of a run, as one frozen dataclass, plus presets and validated overrides.

`make_config("cartpole", "size1m", seed=3, batch_size=32)` applies presets left to right, then keyword
overrides, then validates once. The command line does the same with `--preset a,b` and `key=value` pairs.
Derived quantities (discount, updates per iteration, ...) are properties, never stored fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Iterable, Mapping
from typing import Any


class ConfigError(ValueError):
    """A bad setting. The message names the field, the bad value and what is allowed."""


@dataclasses.dataclass(frozen=True)
class Config:
    # --- run ---
    env: str = "CartPole-v1"  # any gymnax id
    agent: str = "dreamer"
    seed: int = 0
    steps: int = 30_000  # total env steps (over all envs), prefill included
    num_envs: int = 4
    chunk_steps: int = 1_000  # env steps per compiled chunk: the logging / eval / checkpoint interval
    eval_episodes: int = 8
    checkpoint_every: int = 10_000  # env steps between checkpoints (rounded to whole chunks); one at the end
    checkpoint_minutes: float = 10.0  # also save at the first chunk end this long after the last save
    keep_checkpoints: int = 3
    # --- replay ---
    replay_capacity: int = 100_000  # env steps kept, over all envs
    prefill: int = 1_024  # random-action env steps before learning starts
    batch_size: int = 16
    batch_length: int = 64
    train_ratio: float = 512.0  # replayed steps per env step, as DreamerV3 counts it
    replay_context: bool = True  # a window starts from the latent stored for the step before it (reference)
    replay_online: bool = True  # each fresh window is trained on once, in the first batch rows (reference)
    # --- world model (size presets set these) ---
    deter: int = 512  # GRU state size
    hidden: int = 64  # RSSM input / prior / posterior layer width
    stoch: int = 32  # categorical latent variables
    classes: int = 4  # classes per latent variable
    blocks: int = 8  # block-diagonal GRU groups
    units: int = 64  # MLP width of encoder, decoder, heads, actor, critic
    enc_layers: int = 3
    dec_layers: int = 3
    head_layers: int = 1  # reward and continue heads
    ac_layers: int = 3  # actor and critic
    unimix: float = 0.01
    free_nats: float = 1.0
    num_bins: int = 255
    # --- loss scales (DreamerV3) ---
    loss_rec: float = 1.0
    loss_rew: float = 1.0
    loss_con: float = 1.0
    loss_dyn: float = 1.0
    loss_rep: float = 0.1
    loss_actor: float = 1.0
    loss_critic: float = 1.0
    loss_repval: float = (
        0.3  # critic loss on lambda returns along replayed windows (reference); 0 turns it off
    )
    # --- behaviour from imagination ---
    imag_horizon: int = 15
    horizon: float = 333.0  # discount = 1 - 1 / horizon
    return_lambda: float = 0.95
    actor_entropy: float = 3e-4
    retnorm_rate: float = 0.01
    slow_critic_rate: float = 0.02
    slow_critic_reg: float = 1.0
    action_minstd: float = 0.1
    action_maxstd: float = 1.0
    # --- optimiser (DreamerV3: AGC + LaProp) ---
    lr: float = 4e-5
    agc: float = 0.3
    opt_eps: float = 1e-20
    beta1: float = 0.9
    beta2: float = 0.999
    warmup: int = 1_000

    # ---- derived ----
    @property
    def discount(self) -> float:
        return 1.0 - 1.0 / self.horizon

    @property
    def env_steps_per_iteration(self) -> int:
        """Env steps (over all envs) between learner phases: the smallest multiple of num_envs that
        makes the number of updates a whole number for the given train_ratio."""
        per_update = self.batch_size * self.batch_length / self.train_ratio  # env steps per update
        k = max(1, math.ceil(per_update / self.num_envs - 1e-9))
        return k * self.num_envs

    @property
    def updates_per_iteration(self) -> int:
        steps = self.env_steps_per_iteration
        return max(1, round(steps * self.train_ratio / (self.batch_size * self.batch_length)))

    @property
    def effective_train_ratio(self) -> float:
        return self.updates_per_iteration * self.batch_size * self.batch_length / self.env_steps_per_iteration

    @property
    def iterations_per_chunk(self) -> int:
        return max(1, round(self.chunk_steps / self.env_steps_per_iteration))

    @property
    def env_steps_per_chunk(self) -> int:
        return self.iterations_per_chunk * self.env_steps_per_iteration

    @property
    def prefill_steps_per_env(self) -> int:
        return math.ceil(self.prefill / self.num_envs)

    @property
    def num_chunks(self) -> int:
        """Chunks after prefill; the budget is rounded up to whole chunks."""
        remaining = self.steps - self.prefill_steps_per_env * self.num_envs
        return max(0, math.ceil(remaining / self.env_steps_per_chunk))

    @property
    def sample_length(self) -> int:
        """Steps per sampled window: batch_length, plus one step of context with the replay context."""
        return self.batch_length + int(self.replay_context)

    @property
    def capacity_per_env(self) -> int:
        return math.ceil(self.replay_capacity / self.num_envs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **overrides: Any) -> Config:
        return make_config(base=self, **overrides)


# ---- presets ---------------------------------------------------------------------------------------------

# DreamerV3 model sizes (paper's size table; reference configs). Layer counts follow the reference.
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "size1m": dict(deter=512, hidden=64, classes=4, units=64),
    "size12m": dict(deter=2048, hidden=256, classes=16, units=256),
    "size25m": dict(deter=3072, hidden=384, classes=24, units=384),
    "size50m": dict(deter=4096, hidden=512, classes=32, units=512),
    "size100m": dict(deter=6144, hidden=768, classes=48, units=768),
    "size200m": dict(deter=8192, hidden=1024, classes=64, units=1024),
    "size400m": dict(deter=12288, hidden=1536, classes=96, units=1536),
}

# One set of settings for every classic-control task on a 2-core CPU: a model between the 1M and 12M rows
# (deter 256), shorter and fewer replayed windows per update (8 x 32) so the same compute buys 4x more
# updates, train ratio 128 and a higher learning rate with a short warm-up. The reference settings
# (B 16 x T 64, ratio 512, lr 4e-5) need hours here for the same env steps. The task presets below only pick
# the env: their hyperparameters are `classic`'s, never tuned per task.
CLASSIC = dict(steps=30_000, deter=256, batch_size=8, batch_length=32, train_ratio=128.0, lr=3e-4, warmup=100)

TASK_PRESETS: dict[str, dict[str, Any]] = {
    "classic": CLASSIC,
    "cartpole": dict(CLASSIC, env="CartPole-v1"),
    "acrobot": dict(CLASSIC, env="Acrobot-v1"),
    "pendulum": dict(CLASSIC, env="Pendulum-v1"),
    "mountaincar": dict(CLASSIC, env="MountainCarContinuous-v0"),
    # Tiny settings for tests and smoke runs: compiles fast, learns nothing in particular.
    "debug": dict(
        steps=2_000,
        num_envs=2,
        chunk_steps=250,
        prefill=256,
        batch_size=4,
        batch_length=16,
        train_ratio=64.0,
        deter=64,
        hidden=32,
        stoch=4,
        classes=4,
        blocks=4,
        units=32,
        enc_layers=1,
        dec_layers=1,
        ac_layers=1,
        imag_horizon=5,
        eval_episodes=2,
        replay_capacity=4_000,
    ),
}

PRESETS: dict[str, dict[str, Any]] = {**TASK_PRESETS, **SIZE_PRESETS}


# ---- construction and validation -------------------------------------------------------------------------

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TYPES = typing.get_type_hints(Config)


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """The hint " (did you mean 'X'?)", X the option closest to `name` (case ignored), or "" when none is
    close; for error messages about a mistyped key, preset or env name."""
    by_lower = {str(option).lower(): str(option) for option in options}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def coerce_value(key: str, value: Any) -> Any:
    """Turns a CLI string or a Python value into the field's type, or raises ConfigError."""
    if key not in _FIELDS:
        hint = did_you_mean(key, _FIELDS)
        raise ConfigError(f"unknown config key '{key}'{hint}; see mbrl_jax.config.Config")
    typ = _TYPES[key]
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


_POSITIVE_INT = (
    "steps num_envs chunk_steps eval_episodes checkpoint_every keep_checkpoints replay_capacity batch_size "
    "batch_length deter hidden stoch "
    "classes blocks units enc_layers dec_layers ac_layers imag_horizon num_bins"
).split()
_NON_NEGATIVE = "prefill warmup head_layers seed".split()
_POSITIVE_FLOAT = "train_ratio horizon lr opt_eps action_minstd action_maxstd agc".split()
_UNIT_INTERVAL = "unimix return_lambda retnorm_rate slow_critic_rate beta1 beta2".split()
_NON_NEGATIVE_FLOAT = (
    "free_nats loss_rec loss_rew loss_con loss_dyn loss_rep loss_actor loss_critic loss_repval actor_entropy "
    "slow_critic_reg"
).split()


# Counters and sizes are int32 on the device; the seed becomes a uint32 PRNG key.
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1


def check_numbers(config: Config) -> None:
    """Every float field finite, every int field within what the device program can hold."""
    for key, typ in _TYPES.items():
        value = getattr(config, key)
        if typ is float and not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} is not finite; allowed: a finite number")
        if typ is int:
            high = UINT32_MAX if key == "seed" else INT32_MAX
            kind = "a uint32 PRNG seed" if key == "seed" else "an int32 on the device"
            if value > high:
                raise ConfigError(f"{key}={value!r} is too large; allowed: at most {high} ({kind})")
    if not config.checkpoint_minutes > 0:
        raise ConfigError(f"checkpoint_minutes={config.checkpoint_minutes!r} must be > 0")


def validate(config: Config) -> Config:
    """Checks every field and the relations between them; raises ConfigError naming the field."""
    check_numbers(config)
    for key in _POSITIVE_INT + _POSITIVE_FLOAT:
        if not getattr(config, key) > 0:
            raise ConfigError(f"{key}={getattr(config, key)!r} must be > 0")
    for key in _NON_NEGATIVE + _NON_NEGATIVE_FLOAT:
        if not getattr(config, key) >= 0:
            raise ConfigError(f"{key}={getattr(config, key)!r} must be >= 0")
    for key in _UNIT_INTERVAL:
        if not 0.0 <= getattr(config, key) <= 1.0:
            raise ConfigError(f"{key}={getattr(config, key)!r} must be in [0, 1]")
    if config.horizon < 1.0:
        raise ConfigError(f"horizon={config.horizon!r} must be >= 1 (discount = 1 - 1/horizon)")
    if config.agent != "dreamer":
        raise ConfigError(f"agent={config.agent!r} is not known; allowed: 'dreamer'")
    if config.deter % config.blocks:
        raise ConfigError(f"deter={config.deter} must be divisible by blocks={config.blocks}")
    if config.action_minstd > config.action_maxstd:
        raise ConfigError(
            f"action_minstd={config.action_minstd} must be <= action_maxstd={config.action_maxstd}"
        )
    if config.capacity_per_env < config.sample_length:
        raise ConfigError(
            f"batch_length={config.batch_length} (+1 with replay_context) is longer than the replay per env "
            f"(replay_capacity={config.replay_capacity} / num_envs={config.num_envs} "
            f"= {config.capacity_per_env})"
        )
    if config.prefill_steps_per_env < config.sample_length:
        raise ConfigError(
            f"prefill={config.prefill} gives {config.prefill_steps_per_env} steps per env, fewer than "
            f"the sampled window of {config.sample_length} steps (batch_length, +1 with replay_context); "
            f"allowed: prefill >= {config.sample_length * config.num_envs}"
        )
    if config.replay_online and config.num_envs > config.batch_size:
        raise ConfigError(
            f"replay_online=True puts one fresh window per env in each batch, so num_envs={config.num_envs} "
            f"must be <= batch_size={config.batch_size}; or set replay_online=false"
        )
    if config.prefill_steps_per_env * config.num_envs > config.steps:
        raise ConfigError(f"prefill={config.prefill} exceeds the budget steps={config.steps}")
    from mbrl_jax.envs import env_spec, list_envs  # late import: envs pulls in gymnax

    if config.env not in list_envs():
        hint = did_you_mean(config.env, list_envs())
        raise ConfigError(f"env={config.env!r} is not a known gymnax env{hint}")
    spec = env_spec(config.env)
    if len(spec.obs_shape) != 1:
        raise ConfigError(
            f"env={config.env!r} has observations of shape {spec.obs_shape}; the dreamer agent "
            "takes vector observations (shape (n,)) for now"
        )
    return config


def make_config(*presets: str, base: Config | None = None, **overrides: Any) -> Config:
    """Presets applied left to right on `base` (default Config()), then overrides; validated."""
    values = (base or Config()).to_dict()
    for name in presets:
        if name not in PRESETS:
            raise ConfigError(
                f"unknown preset '{name}'{did_you_mean(name, PRESETS)}; allowed: {', '.join(PRESETS)}"
            )
        values.update(PRESETS[name])
    for key, value in overrides.items():
        values[key] = coerce_value(key, value)
    return validate(Config(**values))


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """['lr=1e-4', 'batch_size=32'] -> {'lr': 1e-4, 'batch_size': 32}, typed and checked."""
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override {pair!r} is not of the form key=value")
        key, value = pair.split("=", 1)
        if key.strip() in out:
            raise ConfigError(f"{key.strip()} is given twice ({pair!r} and an earlier one); give it once")
        out[key.strip()] = coerce_value(key.strip(), value)
    return out


def config_from_dict(values: Mapping[str, Any]) -> Config:
    unknown = set(values) - set(_FIELDS)
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)}")
    return validate(Config(**{k: coerce_value(k, v) for k, v in values.items()}))


# Fields that change how long or how often a run saves, never what it computes: a run may be resumed
# with different values of these.
RESUMABLE_FIELDS = frozenset({"steps", "checkpoint_every", "checkpoint_minutes", "keep_checkpoints"})


def config_diff(a: Config, b: Config) -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ: {name: (a_value, b_value)}."""
    return {k: (getattr(a, k), getattr(b, k)) for k in _FIELDS if getattr(a, k) != getattr(b, k)}
