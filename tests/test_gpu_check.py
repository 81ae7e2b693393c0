"""The GPU check (benchmarks/gpu_check.py) as a dry run on this CPU with tiny settings, its archive's format,
its time budget, and the wheel pack for the device (benchmarks/pack_device_wheels.py) on a wheel made here."""

import importlib.util
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import gpu_check, pack_device_wheels  # noqa: E402


def test_the_items_fit_the_eight_minutes_and_bad_items_are_refused(capsys):
    assert sum(limit for *_, limit in gpu_check.ITEMS.values()) <= gpu_check.BUDGET_S == 480
    assert {"rgb64-size1m-patches", "rgb64-size12m-xla", "pong-seeds1", "pong-seeds5"} <= set(gpu_check.ITEMS)
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--items", "rgb64-size3m"])
    assert exit_.value.code == 2 and "rgb64-size3m" in capsys.readouterr().err
    config = gpu_check.item_config("pong-seeds5", tiny=False)
    assert config.env.name == "envpool:Pong-v5" and gpu_check.ITEMS["pong-seeds5"][2] == [0, 1, 2, 3, 4]
    assert gpu_check.item_config("rgb64-size12m-xla", tiny=False).wm.conv == "xla"
    assert gpu_check.item_config("rgb64-size1m-xla", tiny=True).wm.conv == "xla"


@pytest.mark.slow  # compiles a tiny 5-seed Pong sweep in a child process
def test_a_dry_run_writes_the_archive(tmp_path):
    # one item: every item runs through the same child process and measurement; the image items differ
    # only in their config (checked above), and their conv forms are tested in tests/test_pixels.py
    out = tmp_path / "check.tar.gz"
    status = gpu_check.main(["--tiny", "--items", "pong-seeds5", "--chunks", "1", "--out", str(out)])
    with tarfile.open(out) as archive:
        files = {m.name: json.load(archive.extractfile(m)) for m in archive.getmembers()}
    assert set(files) == {"summary.json", "pong-seeds5.json"}
    summary = files["summary.json"]
    assert status == 0, summary
    item = files["pong-seeds5.json"]
    assert item["status"] == "ok" and summary["items"]["pong-seeds5"]["status"] == "ok"
    for key in ("updates_per_s", "env_steps_per_s", "compile_s", "peak_rss_mib"):
        assert item[key] > 0, key
        assert summary["items"]["pong-seeds5"][key] == item[key]
    assert "peak_device_mib" in item  # null on a CPU, which reports no device memory
    assert item["config"]["seeds"] == [0, 1, 2, 3, 4] and item["config"]["env.name"] == "envpool:Pong-v5"
    assert summary["tiny"] and summary["wall_s"] >= item["wall_s"]


def test_the_pack_keeps_the_atari_and_classic_control_parts_of_envpool(tmp_path):
    wheel = tmp_path / "envpool-1.2.5-cp312-cp312-manylinux_2_28_x86_64.whl"
    entry = "import envpool.atari.registration\nimport envpool.box2d.registration\n"
    entry += "import envpool.classic_control.registration\nimport envpool.mujoco.dmc.registration\n"
    members = {
        "envpool/__init__.py": "from envpool.entry import *\n",
        "envpool/entry.py": '"""Entry point."""\n' + entry,
        "envpool/atari/atari_envpool.so": "A",
        "envpool/box2d/box2d_envpool.so": "B",
        "envpool/box2d/registration.py": "",
        "envpool/classic_control/classic_control_envpool.so": "C",
        "envpool/mujoco/dmc/mujoco_dmc_envpool.so": "M",
        "envpool-1.2.5.dist-info/METADATA": "Name: envpool\n",
    }
    with zipfile.ZipFile(wheel, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)
    pack_device_wheels.trim_wheel(
        wheel, pack_device_wheels.keep_envpool_member, {"envpool/entry.py": pack_device_wheels.envpool_entry}
    )
    with zipfile.ZipFile(wheel) as z:
        kept = set(z.namelist())
        kept_imports = "import envpool.atari.registration\nimport envpool.classic_control.registration\n"
        assert z.read("envpool/entry.py").decode() == '"""Entry point."""\n' + kept_imports
    assert kept == set(members) - {
        "envpool/box2d/box2d_envpool.so",
        "envpool/mujoco/dmc/mujoco_dmc_envpool.so",
    }
    assert oct(wheel.stat().st_mode & 0o777) == "0o644"
    assert pack_device_wheels.keep_assets_member("envpool_assets/atari/roms/pong.bin")
    assert not pack_device_wheels.keep_assets_member("envpool_assets/mujoco/assets/ant.xml")
    assert importlib.util.find_spec("envpool") is not None  # the project's own envpool is untouched
