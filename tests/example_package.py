"""The example site connector package (examples/slurm-sync-motd) as a site installs it: built
and installed by pip into a folder of its own, and the real ``slurm-sync`` run as a process
that finds it there (PYTHONPATH: importlib.metadata reads its dist-info, entry point included).
Used by tests/unit/test_example_connector.py and tests/lab/test_example_connector_lab.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "slurm-sync-motd"


def install_example(work: Path) -> Path:
    """``pip install --no-deps --target <work>/site`` of a copy of the example (the build
    leaves nothing in the repository); the site folder. Tries pip's isolated build first, then
    ``--no-build-isolation`` (needs setuptools and wheel here). An AssertionError with pip's
    words when neither works."""
    source = work / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    target = work / "site"
    errors = []
    for isolation in ([], ["--no-build-isolation"]):
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-input",
             *isolation, "--target", str(target), str(source)],
            capture_output=True, text=True, timeout=300)
        if done.returncode == 0:
            return target
        errors.append(done.stderr[-1500:])
        shutil.rmtree(target, ignore_errors=True)
    raise AssertionError("pip install of the example failed:\n" + "\n---\n".join(errors))


def slurm_sync(site: Path | None, *args: str, cwd: Path,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m slurm_sync.cli ARGS`` in its own process, with ``site`` first on
    PYTHONPATH (None: without the example), from ``cwd``."""
    env = dict(os.environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(site), *paths] if site is not None else paths)
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "slurm_sync.cli", *args], capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, env=env)
