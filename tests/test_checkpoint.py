"""Checkpointer: bit-exact round trips, keep-last-K, mismatch errors, SIGKILL in the middle of a save."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from mbrl_jax.checkpoint import Checkpointer, load_config, save_config


@struct.dataclass
class Opt:
    count: jax.Array  # [] int32
    mu: dict  # {'w': [3, 2] float32}


@struct.dataclass
class State:
    params: dict  # {'w': [3, 2] float32, 'b': [2] bfloat16}
    opt: Opt
    done: jax.Array  # [4] bool
    key: jax.Array  # [2] uint32 raw key
    typed_key: jax.Array  # [] key<fry>
    ring: list  # [[5] uint8, [] float16]


def make_state(seed: int) -> State:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((3, 2)).astype(np.float32)
    w[0, 0], w[0, 1], w[1, 0] = np.nan, -0.0, np.inf  # payloads a lossy path would change
    return State(
        params={"w": jnp.asarray(w), "b": jnp.asarray(rng.standard_normal(2), jnp.bfloat16)},
        opt=Opt(count=jnp.asarray(seed, jnp.int32), mu={"w": jnp.asarray(w * 2)}),
        done=jnp.asarray(rng.random(4) > 0.5),
        key=jax.random.PRNGKey(seed),
        typed_key=jax.random.fold_in(jax.random.key(7), seed),
        ring=[jnp.asarray(rng.integers(0, 255, 5), jnp.uint8), jnp.asarray(seed / 3, jnp.float16)],
    )


def raw(leaf: jax.Array) -> tuple[str, tuple[int, ...], bytes]:
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return str(leaf.dtype), leaf.shape, np.asarray(jax.random.key_data(leaf)).tobytes()
    return str(leaf.dtype), leaf.shape, np.asarray(leaf).tobytes()


def assert_bit_exact(a: State, b: State) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert isinstance(y, jax.Array)
        assert raw(x) == raw(y)


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    state = make_state(3)
    with Checkpointer(tmp_path / "ckpt") as ckpt:
        assert ckpt.latest_step() is None
        ckpt.save(4000, state, {"episodes": 12, "note": "hi"})
        assert ckpt.latest_step() == 4000
    with Checkpointer(tmp_path / "ckpt") as ckpt:  # a fresh process-like reopen
        assert_bit_exact(state, ckpt.restore(4000, make_state(0)))
        assert_bit_exact(
            state, ckpt.restore(4000, jax.eval_shape(lambda: make_state(0)))
        )  # abstract template
        assert ckpt.restore_extra(4000) == {"episodes": 12, "note": "hi"}
        restored = ckpt.restore(4000, make_state(0))
    assert restored.typed_key.dtype == state.typed_key.dtype
    assert set(restored.opt.count.devices()) == {jax.devices()[0]}
    # the restored key still drives jax.random exactly like the original
    np.testing.assert_array_equal(
        jax.random.normal(restored.typed_key, (3,)), jax.random.normal(state.typed_key, (3,))
    )


def test_keeps_only_the_last_k(tmp_path: Path) -> None:
    with Checkpointer(tmp_path, keep=2) as ckpt:
        for step in (100, 200, 300, 400, 500):
            ckpt.save(step, make_state(step), {"step": step})
        assert ckpt.all_steps() == [400, 500]
        assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".") and p.is_dir()) == [
            "400",
            "500",
        ]
        assert_bit_exact(make_state(400), ckpt.restore(400, make_state(0)))
        for step in (500, 450):
            with pytest.raises(ValueError, match="already holds env_steps=500"):
                ckpt.save(step, make_state(1))
        assert ckpt.delete_after(400) == [500]  # resuming from 400
        ckpt.save(450, make_state(450))
        assert ckpt.all_steps() == [400, 450] and ckpt.latest_step() == 450
        assert sorted(p.name for p in tmp_path.iterdir()) == ["400", "450"]
        with pytest.raises(FileNotFoundError, match="env_steps=100"):
            ckpt.restore(100, make_state(0))


def test_mismatched_template_names_the_leaves(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(1))
        template = make_state(0)
        bad_shape = template.replace(params={**template.params, "w": jnp.zeros((3, 3))})
        with pytest.raises(
            ValueError, match=r"leaf 'params/w' has shape \(3, 2\) dtype float32 in the checkpoint"
        ):
            ckpt.restore(1, bad_shape)
        bad_dtype = template.replace(opt=template.opt.replace(count=jnp.zeros((), jnp.float32)))
        with pytest.raises(ValueError, match=r"'opt/count'.*int32.*float32"):
            ckpt.restore(1, bad_dtype)
        missing = template.replace(ring=template.ring[:1])
        with pytest.raises(ValueError, match=r"leaf 'ring/1' is in the checkpoint but not in the target"):
            ckpt.restore(1, missing)
        extra = template.replace(params={**template.params, "new": jnp.zeros(2)})
        with pytest.raises(ValueError, match=r"leaf 'params/new' is in the target but not in the checkpoint"):
            ckpt.restore(1, extra)


BIG = 50_000_000  # float32 elements: 200 MB
CHILD = textwrap.dedent(
    f"""
    import sys
    import jax.numpy as jnp
    from mbrl_jax.checkpoint import Checkpointer

    def state(step):
        return {{"big": jnp.arange({BIG}, dtype=jnp.float32) + step, "step": jnp.asarray(step)}}

    ckpt = Checkpointer(sys.argv[1], keep=3)
    ckpt.save(1, state(1), {{"step": 1}})
    print("saved 1", flush=True)
    ckpt.save(2, state(2), {{"step": 2}})
    print("saved 2", flush=True)
    """
)


def test_sigkill_mid_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    directory = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(directory)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "saved 1"
        deadline = time.monotonic() + 60
        while not any("tmp" in name for name in os.listdir(directory)):  # step 2 is being written
            assert time.monotonic() < deadline and proc.poll() is None, "second save never started"
            time.sleep(0.002)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    names = os.listdir(directory)
    assert "2" not in names, f"the kill came after the commit, so this run tests nothing: {names}"
    assert any("tmp" in name for name in names)

    with Checkpointer(directory) as ckpt:
        assert ckpt.latest_step() == 1
        assert not any("tmp" in name for name in os.listdir(directory))  # the incomplete save was removed
        restored = ckpt.restore(1, {"big": jax.ShapeDtypeStruct((BIG,), jnp.float32), "step": jnp.asarray(0)})
        assert ckpt.restore_extra(1) == {"step": 1}
        expected = np.arange(BIG, dtype=np.float32) + 1
        assert np.array_equal(np.asarray(restored["big"]), expected) and int(restored["step"]) == 1
        del restored, expected
        ckpt.save(2, {"big": jnp.zeros(3), "step": jnp.asarray(2)})  # saving resumes normally
        assert ckpt.all_steps() == [1, 2]


def test_open_removes_only_the_leftovers_of_killed_saves(tmp_path: Path) -> None:
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(1))
    (tmp_path / "2.orbax-checkpoint-tmp-1234" / "state").mkdir(parents=True)  # a save killed before commit
    (tmp_path / ".trash" / "0").mkdir(parents=True)  # a prune killed half way
    (tmp_path / "notes.txt").write_text("mine")  # not orbax's: left alone
    with Checkpointer(tmp_path) as ckpt:
        assert ckpt.all_steps() == [1]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["1", "notes.txt"]
        assert_bit_exact(make_state(1), ckpt.restore(1, make_state(0)))


def test_config_yaml_round_trip(tmp_path: Path) -> None:
    assert load_config(tmp_path) is None
    config = {"env": "cartpole", "seed": 3, "lr": 3e-4, "sizes": (64, 64), "model": {"depth": 2, "act": None}}
    save_config(tmp_path, config)
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("env: cartpole\n")  # insertion order, block style
    assert load_config(tmp_path) == {**config, "sizes": [64, 64]}
    save_config(tmp_path, {"seed": 4})
    assert load_config(tmp_path) == {"seed": 4}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temp files left


def test_params_saved_as_a_dict_restore_into_the_typed_params(tmp_path: Path) -> None:
    """Checkpoints written while DreamerV3's parameters were a {"wm", "actor", "critic"} dict restore into
    `DreamerParams`: both save under the same key paths."""
    from mbrl_jax.agents.dreamer import DreamerParams

    rng = np.random.default_rng(0)
    saved = {
        name: {"w": jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)} for name in ("wm", "actor", "critic")
    }
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(10, {"params": saved})
    template = {"params": DreamerParams(**{k: jax.tree.map(jnp.zeros_like, v) for k, v in saved.items()})}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.check_compatible(10, template)
        restored = ckpt.restore(10, template)["params"]
    assert isinstance(restored, DreamerParams)
    for name in ("wm", "actor", "critic"):
        np.testing.assert_array_equal(getattr(restored, name)["w"], saved[name]["w"])
