"""Where the time of a compiled function goes: XLA ops ranked by measured time, from a jax.profiler trace.

    table = profile_ops(jax.jit(f), *args, runs=3, top=15)

Each executed HLO op (a fusion, a dot, a copy, ...) is an event in the trace's host plane; loop and call
containers (`while`, `call`, `conditional`) are left out since their time is that of the ops inside them.
Each op is labelled with the JAX source of its HLO instruction (`op_name` metadata: the primitive and the
module path, e.g. `learn/.../BlockGRU/dot_general`), so the table says which part of the model costs what.
"""

from __future__ import annotations

import collections
import re
import tempfile
from pathlib import Path
from typing import Any

import jax

_CONTAINERS = (
    "while",
    "call",
    "conditional",
    "end:",
    "ThreadpoolListener",
    "ThunkExecutor",
    "PjitFunction",
    "$",
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = .*?\s([\w\-]+)\(")
_OP_NAME = re.compile(r"op_name=\"([^\"]+)\"")
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def _op_sources(hlo_text: str) -> dict[str, str]:
    """HLO instruction name -> JAX source. A fusion is named after the matmul inside it when there is one
    (its own metadata is that of its root op, often a cheap reduction or add)."""
    computations: dict[str, list[tuple[str, str]]] = {}
    own: dict[str, tuple[str, str | None]] = {}
    current: list[tuple[str, str]] = []
    for line in hlo_text.splitlines():
        if line.rstrip().endswith("{") and " = " not in line:
            header = line.strip().removeprefix("ENTRY ").lstrip("%")
            current = computations.setdefault(header.split(" ", 1)[0], [])
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            continue
        name, opcode = match.groups()
        op_name = _OP_NAME.search(line)
        calls = _CALLS.search(line)
        current.append((opcode, op_name.group(1) if op_name else ""))
        own[name] = (op_name.group(1) if op_name else "?", calls.group(1) if calls else None)
    sources = {}
    for name, (op_name, called) in own.items():
        inner = [
            src for opcode, src in computations.get(called, []) if opcode in ("dot", "convolution") and src
        ]
        sources[name] = inner[0] if inner else op_name
    return sources


def _short(source: str, keep: int = 4) -> str:
    parts = [p for p in source.split("/") if p and not p.startswith(("jit(", "jvp(", "transpose("))]
    return "/".join(parts[-keep:])


def profile_ops(fn, *args, runs: int = 3, top: int = 15) -> dict[str, Any]:
    """Runs the jitted `fn(*args)` `runs` times under the profiler (after one warm-up call) and returns
    {"total_ms": per-run op time, "by_kind": {kind: ms}, "top": [{op, kind, ms, share, source}]}."""
    from jax.profiler import ProfileData

    compiled = fn.lower(*args).compile()
    sources = _op_sources(compiled.as_text())
    jax.block_until_ready(compiled(*args))
    with tempfile.TemporaryDirectory() as folder:
        with jax.profiler.trace(folder):
            for _ in range(runs):
                jax.block_until_ready(compiled(*args))
        trace = next(Path(folder).rglob("*.xplane.pb"))
        data = ProfileData.from_file(str(trace))
    per_op: dict[str, float] = collections.defaultdict(float)
    for plane in data.planes:
        if not plane.name.startswith("/host:CPU") and not plane.name.startswith("/device:"):
            continue
        for line in plane.lines:
            if line.name == "python":
                continue
            for event in line.events:
                if event.name.startswith(_CONTAINERS) or event.duration_ns <= 0:
                    continue
                per_op[event.name] += event.duration_ns / 1e6 / runs
    total = sum(per_op.values()) or 1.0
    by_kind: dict[str, float] = collections.defaultdict(float)
    for name, ms in per_op.items():
        by_kind[re.sub(r"[.\d]+$", "", name)] += ms
    ranked = sorted(per_op.items(), key=lambda kv: -kv[1])[:top]
    return {
        "total_ms": total,
        "by_kind": dict(sorted(by_kind.items(), key=lambda kv: -kv[1])),
        "top": [
            {
                "op": name,
                "kind": re.sub(r"[.\d]+$", "", name),
                "ms": ms,
                "share": ms / total,
                "source": _short(sources.get(name, "?")),
            }
            for name, ms in ranked
        ],
    }


def profile_markdown(profile: dict[str, Any]) -> str:
    kinds = ", ".join(f"{k} {v / profile['total_ms']:.0%}" for k, v in list(profile["by_kind"].items())[:6])
    lines = [
        f"Op time per update {profile['total_ms']:.1f} ms (summed over threads); by kind: {kinds}.",
        "",
        "| op | kind | ms | share | JAX source |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {t['op']} | {t['kind']} | {t['ms']:.2f} | {t['share']:.1%} | `{t['source']}` |"
        for t in profile["top"]
    ]
    return "\n".join(lines)
