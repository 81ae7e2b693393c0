"""Crash-safe file writes, and plain Python values for YAML / JSON, shared by the metric logger, the config
file and checkpoints."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_plain(value: Any) -> Any:
    """`value` as plain Python that yaml.safe_dump and json.dumps accept, recursively: mappings -> dicts with
    str keys, tuples and lists -> lists, Paths -> str, numpy / jax scalars (0-d arrays too) -> bool, int,
    float or str. Raises TypeError for an array with a shape, naming the shape."""
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    arr = np.asarray(value)
    if arr.shape != ():
        raise TypeError(f"expected a scalar, got an array of shape {arr.shape}")
    return arr.item()


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _file_mode(path: Path) -> int:
    """The permission bits `path` keeps when replaced: its own where it exists, else a new file's under the
    process's umask (0644 under the usual 022), as the run's other files get."""
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Replace `path` with `data` atomically: a temp file in the same folder, then os.replace, so a reader
    (or a crash) sees the old or the new content, never a mix. `durable` also fsyncs the file and folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, _file_mode(path))  # mkstemp makes 0600; the file gets what open() would have given it
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent, directory=True)
