"""Crash-safe file writes shared by the metric logger, the config file and checkpoints."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def fsync_path(path: str | Path, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """Replace `path` with `data` atomically: a temp file in the same folder, then os.replace, so a reader
    (or a crash) sees the old or the new content, never a mix. `durable` also fsyncs the file and folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
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
