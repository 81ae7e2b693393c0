"""How a setting is declared, and where the components that own settings register them.

A config group is a frozen dataclass whose fields are `setting(default, help, rule)`. The run, env, replay
and optimiser groups are fields of `mbrl_jax.config.Config`; every other group belongs to a component and is
registered by it, so that adding an agent or a backbone edits no shared file:

    register_group("", "tdmpc2", TDMPC2Config, "TD-MPC2's ...", owner="agent 'tdmpc2'")  # Config.tdmpc2
    register_group("wm", "mamba", MambaConfig, "Mamba-2 backbone", owner="backbone 'mamba'")  # wm.mamba

A registered group reads like a static one (`config.tdmpc2.lr`, `config.wm.mamba.layers`): the container
holds its registered groups in a `registered(path)` field and `Composite` looks names up there. Presets are
registered the same way (`register_presets`), each name once. This module imports nothing of the project but
its errors, so any component may declare settings without an import cycle.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any


@dataclasses.dataclass(frozen=True)
class Rule:
    """A condition on one field's value and how an error message states what is allowed."""

    test: Callable[[Any], bool]
    allowed: str


POSITIVE = Rule(lambda v: v > 0, "> 0")
NON_NEGATIVE = Rule(lambda v: v >= 0, ">= 0")
UNIT_INTERVAL = Rule(lambda v: 0.0 <= v <= 1.0, "in [0, 1]")
AT_LEAST_ONE = Rule(lambda v: v >= 1, ">= 1")


def one_of(*allowed: Any) -> Rule:
    return Rule(lambda v: v in allowed, "one of " + ", ".join(repr(a) for a in allowed))


def setting(default: Any, help: str, rule: Rule | None = None, resumable: bool = False) -> Any:
    """A config field with its one-line meaning (shown by `--show-config`) and the rule it must satisfy.
    `resumable`: a stored run may be resumed with another value (the field changes how long a run trains,
    how often it saves or how it is evaluated, or how it computes, never what it learns)."""
    return dataclasses.field(default=default, metadata={"help": help, "rule": rule, "resumable": resumable})


def group(cls: type, help: str) -> Any:
    """A nested config group field."""
    return dataclasses.field(default_factory=cls, metadata={"help": help})


# ---- registered groups -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class GroupDef:
    cls: type
    help: str
    owner: str  # who registered it, for error messages: "agent 'tdmpc2'", "backbone 'mamba'"


# container path ("" for Config itself, "wm" for the world model's group) -> {name: GroupDef}, in order
REGISTERED_GROUPS: dict[str, dict[str, GroupDef]] = {}
PRESETS: dict[str, dict[str, Any]] = {}
PRESET_OWNERS: dict[str, str] = {}
# Called after every registration (mbrl_jax.config rebuilds its field table).
_ON_REGISTER: list[Callable[[], None]] = []


def register_group(container: str, name: str, cls: type, help: str, owner: str) -> None:
    """Adds the group `cls` as `<container>.<name>`; registering the same class under the same name again
    does nothing, another class under a taken name is an error."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"config group {name!r} of {owner} must be a frozen dataclass, not {cls!r}")
    groups = REGISTERED_GROUPS.setdefault(container, {})
    if name in groups:
        if groups[name].cls is cls:
            return
        raise ValueError(f"config group {name!r} under {container or 'Config'!r} is {groups[name].owner}'s")
    groups[name] = GroupDef(cls, help, owner)
    _changed()


def register_presets(presets: Mapping[str, Mapping[str, Any]], owner: str) -> None:
    """Makes each preset name (`--preset name`) apply its {dotted key: value} settings."""
    for name, values in presets.items():
        if name in PRESETS and PRESET_OWNERS[name] != owner:
            raise ValueError(f"preset {name!r} of {owner} is already {PRESET_OWNERS[name]}'s")
        PRESETS[name], PRESET_OWNERS[name] = dict(values), owner
    _changed()


def on_register(callback: Callable[[], None]) -> None:
    _ON_REGISTER.append(callback)


def _changed() -> None:
    for callback in _ON_REGISTER:
        callback()


@dataclasses.dataclass(frozen=True)
class RegisteredGroups:
    """The values of the groups registered under one container, in registration order (hashable)."""

    items: tuple[tuple[str, Any], ...] = ()

    @staticmethod
    def defaults(container: str) -> RegisteredGroups:
        return RegisteredGroups(
            tuple((name, d.cls()) for name, d in REGISTERED_GROUPS.get(container, {}).items())
        )


def registered(container: str) -> Any:
    """The field of a `Composite` group that holds the groups registered under `container`."""
    return dataclasses.field(
        default_factory=lambda: RegisteredGroups.defaults(container),
        metadata={"registered": container},
        repr=False,
    )


class Composite:
    """Mixin of a config group with a `groups: RegisteredGroups = registered(path)` field: its registered
    groups read as attributes."""

    def __getattr__(self, name: str) -> Any:
        groups = self.__dict__.get("groups")
        if groups is not None and not name.startswith("__"):
            for key, value in groups.items:
                if key == name:
                    return value
        raise AttributeError(f"{type(self).__name__} has no setting or group {name!r}")
