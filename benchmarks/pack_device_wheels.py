"""Pack the wheels that a lent GPU machine's image lacks, so `benchmarks/gpu_check.py` runs there.

    python benchmarks/pack_device_wheels.py                 # writes .whl/ (ignored by git), prints its size
    python benchmarks/pack_device_wheels.py --python 3.12 --out .whl

The device image (Python 3.12, JAX, flax, optax, chex, orbax, rich, matplotlib, tensorboard, ... see the
device tool's KINDS.md) has no gymnax, distrax, TensorFlow Probability (tfp-nightly, as distrax asks),
Gymnasium, tensorboardX or envpool, and nothing can be fetched there. This downloads them here (`pip download
--no-deps` for that Python and manylinux x86-64) with their own missing needs, and trims envpool, whose wheels
(53 MB, and 62 MB of assets) alone exceed what a call carries (64 MiB): only the Atari and classic-control
families keep their compiled modules and only the Atari ROMs stay in the assets (`envpool/entry.py` registers
those two families only; `envpool:CartPole-v1` and `envpool:<Game>-v5` work as with the whole wheel); 14 MiB
in all. On the device, in the
repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \\
        .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 benchmarks/gpu_check.py \\
        --out $OUT/gpu-check.tar.gz

with `.whl` named in the call's `carry`. Checked here with this machine's Python (`--python 3.11`): the
pack, installed that way, steps envpool's Pong and CartPole and imports gymnax and distrax;
`tests/test_gpu_check.py` tests the trimming on a wheel it makes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# What the device image lacks, as PyPI names with versions known to work with this project
PACKAGES = [
    "gymnax==1.0.1",
    "distrax==0.1.9",
    "tfp-nightly==0.26.0.dev20261027",  # distrax needs it; 0.25.0 breaks on JAX 0.10+
    "gymnasium==1.4.0",
    "farama-notifications==0.0.6",
    "tensorboardX==2.6.5",
    "dm-env==1.6",
    "dm-tree==0.1.10",
    "gast==0.7.0",
    "decorator==5.3.2",
    "optree==0.20.0",
    "envpool==1.2.5",
    "envpool-assets==0.3.0",
]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
]
ENVPOOL_FAMILIES_KEPT = ("atari", "classic_control")
ASSETS_KEPT = ("atari",)


def keep_envpool_member(name: str) -> bool:
    """envpool's wheel: every Python file and the metadata; compiled modules only of the kept families."""
    if name.endswith(".py") or ".dist-info/" in name or not name.startswith("envpool/"):
        return True
    parts = name.split("/")
    return len(parts) < 3 or parts[1] in ENVPOOL_FAMILIES_KEPT


def keep_assets_member(name: str) -> bool:
    parts = name.split("/")
    return not name.startswith("envpool_assets/") or len(parts) < 3 or parts[1] in ASSETS_KEPT


def envpool_entry(text: str) -> str:
    """envpool/entry.py imports every family's registration, and a family's package imports its compiled
    module: keep the imports of the kept families only."""
    lines = text.splitlines(keepends=True)
    return "".join(
        line
        for line in lines
        if not line.startswith("import envpool.") or line.split(".")[1] in ENVPOOL_FAMILIES_KEPT
    )


def trim_wheel(path: Path, keep, rewrite: dict | None = None) -> None:
    """Rewrite the wheel at `path` with only the members `keep` accepts, and the members named in `rewrite`
    passed through its function (RECORD keeps listing them as they were, which `pip install --target` does
    not check)."""
    rewrite = rewrite or {}
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".whl", delete=False) as tmp:
        with zipfile.ZipFile(path) as source, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as target:
            for info in source.infolist():
                if not keep(info.filename):
                    continue
                data = source.read(info)
                if info.filename in rewrite:
                    data = rewrite[info.filename](data.decode()).encode()
                target.writestr(info, data)
    Path(tmp.name).chmod(0o644)
    Path(tmp.name).replace(path)


def download(packages: list[str], python: str, out: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    command += ["--python-version", python, "--implementation", "cp", "-d", str(out)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    subprocess.run([*command, *packages], check=True)


def pack(out: Path, python: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    download(PACKAGES, python, out)
    for wheel in out.glob("envpool-*.whl"):
        trim_wheel(wheel, keep_envpool_member, {"envpool/entry.py": envpool_entry})
    for wheel in out.glob("envpool_assets-*.whl"):
        trim_wheel(wheel, keep_assets_member)
    return sum(p.stat().st_size for p in out.glob("*.whl"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path(".whl"), help="folder for the wheels (default .whl)")
    parser.add_argument("--python", default="3.12", help="the device's Python version (default 3.12)")
    args = parser.parse_args(argv)
    size = pack(args.out, args.python)
    print(f"{args.out}: {len(list(args.out.glob('*.whl')))} wheels, {size / 2**20:.1f} MiB")
    if size > 60 * 2**20:
        print("too large to carry with the working tree (64 MiB in all)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
