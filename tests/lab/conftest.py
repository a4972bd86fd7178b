"""The real Slurm lab, one cluster per version, for tests marked ``lab``.

Each test gets a ``LabCluster`` per Slurm version that ``lab/slurm-lab up`` has brought up
(``lab/run/<version>/lab.json``). Without root or without the lab the tests are skipped with the
reason, unless SLURM_SYNC_REQUIRE_LAB=1 (``make test`` as root, CI), where that is a failure.

The versions are separate clusters (own munged, slurmdbd, slurmctld, slurmd and ports; one
database each in the shared MariaDB) and a test touches only its own (``cancel_all`` cancels every
job there before and after it), so the versions can run side by side, one pytest each:
SLURM_SYNC_LAB_VERSIONS="22.05" keeps only that version's tests (``make test`` runs one pytest per
version). A test holds its cluster's lock (an flock in the lab's shared folder) while it runs, so
lab tests of two pytest runs on one lab take turns.
(Not pytest-xdist's ``--dist loadgroup`` with a group per version: with pytest 9.2 and xdist
3.8 the groups are ignored, xdist's ``item._nodeid`` suffix no longer reaches ``nodeid``, and a
version's tests ran on all workers at once.)
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner, SlurmCommands

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("22.05", "24.11", "26.05")
REQUIRE = os.environ.get("SLURM_SYNC_REQUIRE_LAB") == "1"
ONLY = tuple(os.environ.get("SLURM_SYNC_LAB_VERSIONS", "").split())


def _unavailable(version: str) -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (its daemons and chroots)"
    if not (ROOT / "lab" / "run" / version / "lab.json").exists():
        return f"Slurm {version} lab is not up (lab/slurm-lab up {version})"
    return None


@dataclass
class LabCluster:
    """One running lab cluster and the jobs a test submitted on it."""

    version: str
    info: dict[str, Any]
    submitted: list[int] = field(default_factory=list)

    @property
    def bin_dir(self) -> str:
        return str(self.info["bin_dir"])

    @property
    def node(self) -> str:
        return str(self.info["node"])

    def cmd(self, name: str, *args: str, user: str | None = None,
            stdin: str | None = None, check: bool = True) -> str:
        argv = [f"{self.bin_dir}/{name}", *args]
        if user:
            argv = [f"{self.bin_dir}/as-user", user, name, *args]
        proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr}")
        return proc.stdout

    def submit(self, script: str, *options: str, user: str | None = "alice") -> int:
        """sbatch ``script`` (from stdin) and return the job id."""
        out = self.cmd("sbatch", "--parsable", "--chdir=/tmp", "--output=/dev/null",
                       *options, user=user, stdin=script)
        job_id = int(out.strip().split(";")[0])
        self.submitted.append(job_id)
        return job_id

    def reader(self) -> SlurmReader:
        return SlurmReader(
            Runner(SlurmCommands(bin_dir=self.bin_dir, timeout=60)),
            state_save_location=str(self.info["state_save_location"]),
        )

    def show(self, job_id: int) -> str:
        """``scontrol show job -d`` text: the ground truth tests compare with."""
        return self.cmd("scontrol", "show", "job", "-d", str(job_id))

    def state(self, job_id: int) -> str:
        match = re.search(r"JobState=(\S+)", self.show(job_id))
        return match.group(1) if match else "GONE"

    def wait(self, what: str, condition: Callable[[], bool], timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.5)
        raise AssertionError(f"Slurm {self.version}: timed out waiting for {what}")

    def wait_state(self, job_id: int, *states: str, timeout: float = 90) -> None:
        self.wait(f"job {job_id} in {states}", lambda: self.state(job_id) in states, timeout)

    def requeue(self, job_id: int) -> None:
        """Requeue a running job and make it eligible again at once, as an admin would.

        Not in the same second: slurmctld revokes the first run's credential with a time in
        whole seconds, and a run launched within that second is killed as "Job credential
        revoked" (seen on 22.05 when the node was free at once).
        """
        self.cmd("scontrol", "requeue", str(job_id))
        self.wait_state(job_id, "PENDING", timeout=60)
        self.cmd("scontrol", "update", f"jobid={job_id}", "StartTime=now+2")

    def cancel_all(self) -> None:
        for user in ("root", *self.info["users"]):
            self.cmd("scancel", f"--user={user}", check=False)
        self.wait("an empty queue", lambda: not self.cmd("squeue", "-h", "-o", "%i").strip(),
                  timeout=60)


@pytest.fixture(params=VERSIONS)
def lab(request: pytest.FixtureRequest) -> Iterator[LabCluster]:
    version = request.param
    reason = _unavailable(version)
    if reason:
        if REQUIRE:
            pytest.fail(f"SLURM_SYNC_REQUIRE_LAB=1 but {reason}")
        pytest.skip(reason)
    info = json.loads((ROOT / "lab" / "run" / version / "lab.json").read_text())
    cluster = LabCluster(version=version, info=info)
    # One test at a time on a cluster, whichever pytest runs it (another session's, a make test
    # beside a hand-run test): each cancels every job there, so two at once break each other.
    # The other waits here instead (flock: released if its holder dies).
    lock = Path(info["shared_dir"]) / f"tests-{info['cluster']}.lock"
    with open(lock, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        cluster.cancel_all()
        yield cluster
        cluster.cancel_all()


def _version_of(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None or "lab" not in getattr(item, "fixturenames", ()):
        return None
    version = callspec.params.get("lab")
    return str(version) if version is not None else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep only the lab tests of SLURM_SYNC_LAB_VERSIONS, when it is set."""
    unknown = set(ONLY) - set(VERSIONS)
    if unknown:
        raise pytest.UsageError(f"SLURM_SYNC_LAB_VERSIONS: no lab version {sorted(unknown)} "
                                f"(have {' '.join(VERSIONS)})")
    if not ONLY:
        return
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        version = _version_of(item)
        (dropped if version is not None and version not in ONLY else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def cpu_ids_of(show: str) -> list[int]:
    """``CPU_IDs=0,3`` or ``CPU_IDs=0-1,3`` from ``scontrol show job -d``."""
    match = re.search(r"CPU_IDs=([0-9,-]+)", show)
    assert match, f"no CPU_IDs in: {show}"
    return _ranges(match.group(1))


def gpu_ids_of(show: str) -> list[int]:
    """GPU indices from ``GRES=gpu:a100:2(IDX:0-1)`` in ``scontrol show job -d``."""
    match = re.search(r"GRES=\S*?gpu[^ ]*?\(IDX:([0-9,-]+)\)", show)
    return _ranges(match.group(1)) if match else []


def _ranges(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out.extend(range(int(low), int(high or low) + 1))
    return out
