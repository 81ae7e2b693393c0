"""Orbax checkpoints of the whole train state, and the run's config file.

Layout under `directory` (one folder per saved step, named by env steps):

    <directory>/<env_steps>/state/   the train-state pytree (orbax StandardSave, OCDBT)
    <directory>/<env_steps>/extra/   a small JSON dict (`extra`)

Only orbax's public API is used: `ocp.CheckpointManager` with `CheckpointManagerOptions`, the public handlers
and the `ocp.args` save/restore arguments, so an orbax upgrade that keeps that API keeps this module working.

Crash safety (SIGKILL): on a local (POSIX) file system orbax writes each step into a temporary folder
(`<env_steps>.<suffix>`) and renames it to `<env_steps>` on commit; the manager lists only committed steps. A
kill at any moment therefore leaves the previous steps, or those plus the complete new one, listed. On open,
every entry whose name is a step number followed by a dot and that the manager does not list as a step (the
folder of a save killed before its commit) is deleted, synchronously, before the first save or restore.
Old steps are pruned by a rename into `.trash/` before deletion (`todelete_subdir`), so a kill mid-prune never
leaves a half-deleted step listed; a `.trash/` left by a kill is emptied on open.

Durability (power loss): orbax does not fsync, and its public API has no hook between writing a step and
renaming it, so the fsync that would make the rename wait for the bytes is not done here. `save` fsyncs the
committed step's files and folders right after the commit instead: once `save` returns, the step is on disk.
A power loss in the short window between the rename and those fsyncs can leave the newest listed step with
missing bytes (the file system's ordering decides); a SIGKILL cannot, since the page cache survives it.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import yaml

from mbrl_jax.fileio import atomic_write_bytes, fsync_path, to_plain

PyTree = Any
_TRASH = ".trash"  # not an integer, so orbax never lists it as a step
_UNCOMMITTED = re.compile(r"\d+\.")  # '<step>.' then anything: a step's folder before its commit


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (children before parents), then `root`'s parent."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fsync_path(Path(folder, name), directory=False)
        fsync_path(Path(folder), directory=True)
    fsync_path(root.parent, directory=True)


def _key_name(entry: Any) -> str:
    for attr in ("name", "key", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def flat_leaves(tree: PyTree) -> dict[str, Any]:
    """{'params/encoder/kernel': leaf}: flax dataclass fields, dict keys and list indices joined by '/'."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {"/".join(_key_name(k) for k in path) or "<root>": leaf for path, leaf in flat}


def _describe(shape: tuple[int, ...], dtype: Any) -> str:
    return f"shape {tuple(shape)} dtype {dtype}"


def _dtype_name(dtype: Any) -> str:
    return str(np.dtype(dtype))


def _is_key(leaf: Any) -> bool:
    return hasattr(leaf, "dtype") and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


# orbax stores a typed PRNG key (jax.random.key) as its raw uint32 data and restores it as that data, so keys
# are unwrapped for saving and comparing, and re-wrapped after restoring with the target leaf's impl.
def _unwrap_keys(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract_key_data(tree: PyTree) -> PyTree:
    return jax.tree.map(lambda x: jax.eval_shape(jax.random.key_data, x) if _is_key(x) else x, tree)


def _rewrap_keys(restored: PyTree, target: PyTree) -> PyTree:
    def rewrap(data: jax.Array, like: Any) -> jax.Array:
        if not _is_key(like):
            return data
        # an abstract key (ShapeDtypeStruct) carries its impl only on its dtype
        impl = jax.random.key_impl(like) if isinstance(like, jax.Array) else like.dtype._impl
        return jax.random.wrap_key_data(data, impl=impl)

    return jax.tree.map(rewrap, restored, target)


def _abstract_leaf(leaf: Any) -> jax.ShapeDtypeStruct:
    """A restore target for one leaf: keep its sharding when it has one, else the default device."""
    sharding = getattr(leaf, "sharding", None)
    if sharding is None:
        sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return jax.ShapeDtypeStruct(np.shape(leaf), leaf.dtype, sharding=sharding)


class Checkpointer:
    """Keep-last-K synchronous checkpoints of a train-state pytree, one per `env_steps`.

    Args:
      directory: folder holding the step folders (created if missing).
      keep: how many most recent steps to keep; older ones are deleted after each save.
    """

    def __init__(self, directory: str | Path, keep: int = 3) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory).absolute()
        self.keep = keep
        self.directory.mkdir(parents=True, exist_ok=True)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            enable_async_checkpointing=False,
            todelete_subdir=_TRASH,
            create=True,
        )
        # handlers named up front so a fresh manager can read metadata of steps written by another process
        handlers = {"state": ocp.StandardCheckpointHandler(), "extra": ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)
        self._remove_leftovers()

    def _remove_leftovers(self) -> None:
        """Deletes what a killed process left: a half-pruned step in .trash/, and the folders of saves killed
        before their commit (named '<step>.<suffix>' and not listed by the manager as a step)."""
        listed = {str(step) for step in self.all_steps()}
        for path in self.directory.iterdir():
            if path.name == _TRASH or (path.name not in listed and _UNCOMMITTED.match(path.name)):
                shutil.rmtree(path, ignore_errors=True)

    def save(self, env_steps: int, state: PyTree, extra: Mapping[str, Any] | None = None) -> None:
        """Write `state` (a pytree of arrays) and `extra` (JSON-able dict) as step `env_steps`; block until
        the step is committed and fsynced.

        Raises ValueError if a checkpoint at or after `env_steps` exists: orbax would keep the newer one as
        latest, so a run resumed from an older step must first call `delete_after(step)`.
        """
        env_steps = int(env_steps)
        latest = self.latest_step()
        if latest is not None and latest >= env_steps:
            raise ValueError(
                f"cannot save env_steps={env_steps}: {self.directory} already holds env_steps={latest}; "
                "call delete_after(<resumed step>) first when resuming from an older checkpoint"
            )
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(_unwrap_keys(state)), extra=ocp.args.JsonSave(dict(extra or {}))
        )
        self._manager.save(env_steps, args=args, force=True)
        self._manager.wait_until_finished()
        self._manager.check_for_errors()
        _fsync_tree(self.directory / str(env_steps))  # see the module docstring on durability
        shutil.rmtree(self.directory / _TRASH, ignore_errors=True)

    def delete_after(self, env_steps: int) -> list[int]:
        """Delete the checkpoints newer than `env_steps` (resuming from an older one); returns their steps."""
        doomed = [step for step in self.all_steps() if step > env_steps]
        for step in doomed:
            self._manager.delete(step)  # an atomic rename into .trash/, then removal
        shutil.rmtree(self.directory / _TRASH, ignore_errors=True)
        return doomed

    def all_steps(self) -> list[int]:
        """Committed steps, ascending (re-read from disk, so steps written by another process show up)."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest committed step, or None when there is none."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _check_step(self, step: int) -> None:
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"no checkpoint for env_steps={step} in {self.directory}; available: {self.all_steps()}"
            )

    def check_compatible(self, step: int, target: PyTree) -> None:
        """Raise ValueError naming every leaf whose path, shape or dtype differs between step and target."""
        self._check_step(step)
        stored = flat_leaves(self._manager.item_metadata(step)["state"].tree)
        wanted = flat_leaves(_abstract_key_data(target))
        problems = [f"leaf '{k}' is in the checkpoint but not in the target" for k in stored.keys() - wanted]
        problems += [f"leaf '{k}' is in the target but not in the checkpoint" for k in wanted.keys() - stored]
        for name in stored.keys() & wanted.keys():
            s, w = stored[name], wanted[name]
            if tuple(s.shape) != tuple(np.shape(w)) or _dtype_name(s.dtype) != _dtype_name(w.dtype):
                problems.append(
                    f"leaf '{name}' has {_describe(s.shape, _dtype_name(s.dtype))} in the checkpoint but "
                    f"{_describe(np.shape(w), _dtype_name(w.dtype))} in the target"
                )
        if problems:
            raise ValueError(
                f"checkpoint env_steps={step} in {self.directory} does not match the target state: "
                + "; ".join(sorted(problems))
            )

    def restore(self, step: int, target: PyTree) -> PyTree:
        """Read step `step` into the structure of `target` (concrete arrays or jax.ShapeDtypeStructs).

        Returns jax arrays with the target leaves' shardings (the default device for leaves without one).
        Raises FileNotFoundError for a missing step and ValueError when shapes/dtypes/leaves differ.
        """
        self.check_compatible(step, target)
        abstract = jax.tree.map(_abstract_leaf, _abstract_key_data(target))
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
        return _rewrap_keys(restored["state"], target)

    def restore_extra(self, step: int) -> dict[str, Any]:
        """The `extra` dict saved with step `step`."""
        self._check_step(step)
        restored = self._manager.restore(step, args=ocp.args.Composite(extra=ocp.args.JsonRestore()))
        return dict(restored["extra"] or {})

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def atomic_write_text(path: str | Path, text: str) -> None:
    """Replace `path` with `text` atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=True)


def save_config(logdir: str | Path, config: Mapping[str, Any]) -> Path:
    """Write `config` (nested dict) to `<logdir>/config.yaml`, keys in insertion order; returns the path."""
    path = Path(logdir) / "config.yaml"
    atomic_write_text(path, yaml.safe_dump(to_plain(config), sort_keys=False, default_flow_style=False))
    return path


def load_config(logdir: str | Path) -> dict[str, Any] | None:
    """The dict in `<logdir>/config.yaml`, or None when the file does not exist."""
    path = Path(logdir) / "config.yaml"
    if not path.exists():
        return None
    loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    return dict(loaded or {})
