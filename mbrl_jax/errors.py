"""The error a bad setting raises, and the hint its message carries. Imports nothing of the project, so any
module may raise it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConfigError(ValueError):
    """A bad setting. The message names the field, the bad value and what is allowed."""


def did_you_mean(name: str, options: Iterable[str]) -> str:
    """The hint " (did you mean 'X'?)", X the option closest to `name` (case ignored), or "" when none is
    close; for error messages about a mistyped key, preset or env name. A dotted option whose last part is
    the last part of `name` counts as closest (a key given without its group, or in the wrong one); when
    several groups have that name, all are named ("'optim.lr' or 'tdmpc2.lr'")."""
    options = [str(option) for option in options]
    leaf = str(name).rsplit(".", 1)[-1].lower()
    by_leaf = [o for o in options if o != name and o.rsplit(".", 1)[-1].lower() == leaf]
    if by_leaf:  # the same name in several groups: all of them
        return f" (did you mean {' or '.join(map(repr, by_leaf))}?)"
    by_lower = {option.lower(): option for option in options}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=1)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""
