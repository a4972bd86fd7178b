"""What `pip install` puts on a machine: one import root of our own, one command, and no
`sync` that would shadow coreutils' sync(1)."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _listed_packages() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    block = re.search(r"^packages = \[(.*?)\]", text, re.S | re.M)
    assert block, "pyproject.toml lists no packages"
    return set(re.findall(r'"([\w.]+)"', block.group(1)))


def _folder_packages() -> set[str]:
    found = set()
    for folder, root in (("sync", "slurm_sync"), ("connectors", "slurm_sync.connectors")):
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((root, *rel)))
    return found


def test_every_package_folder_is_installed() -> None:
    assert _listed_packages() == _folder_packages()


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"pip wheel failed:\n{done.stderr[-2000:]}")
    return next(out.glob("slurm_sync-*.whl"))


def test_the_wheel_has_one_import_root_and_no_sync_command(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        tops = {n.split("/")[0] for n in names}
        entry_points = next(zf.read(n).decode() for n in names
                            if n.endswith(".dist-info/entry_points.txt"))
    assert {t for t in tops if not t.endswith(".dist-info")} == {"slurm_sync"}
    assert "slurm_sync/connectors/events.py" in names and "slurm_sync/py.typed" in names
    scripts = entry_points.split("[console_scripts]")[1].split("[")[0]
    assert [line.split("=")[0].strip() for line in scripts.strip().splitlines()] == [
        "slurm-sync"]
