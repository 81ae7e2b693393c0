"""What every benchmark script ends with: the machine it ran on, and its JSON report (stdout and --out)."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any


def machine_info() -> dict[str, Any]:
    """The first device and the software versions (imports jax: call it after any XLA_FLAGS are set)."""
    import jax
    import jaxlib

    device = jax.devices()[0]
    return {
        "device_kind": device.device_kind,
        "platform": device.platform,
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "python": platform.python_version(),
    }


def emit(report: dict[str, Any], out: str | None) -> None:
    """The report as one JSON line: written to `out` when given (its folder made if missing, so a long
    measurement is never lost to a typo in the path), and printed last on stdout."""
    text = json.dumps(report)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    print(text, flush=True)
