"""Exit codes read the same on Slurm 22.05, 24.11 and 26.05.

22.05's ``sacct --json`` says ``{status: SUCCESS, return_code: 0}`` for a job that exited 3
(squeue's raw wait status, 768, and sacct's text ``3:0`` are right). Measured on the lab:

| job | 22.05 sacct --json | 22.05 sacct text | 22.05 squeue --json | 24.11/26.05 sacct --json |
|---|---|---|---|---|
| ``exit 3`` | SUCCESS, 0 | 3:0 | 768 | ERROR, 3 |
| ``kill -9 $$`` | SIGNALED, 9 | 0:9 | 9 | SIGNALED, 9 |
| scancel'd | SUCCESS, 0 | 0:0 | 15 | SUCCESS, 0 |
| past its time limit | SUCCESS, 0 | 0:0 | 15 | SUCCESS, 0 |
"""

from __future__ import annotations

import time

import pytest

from slurm_sync.slurm.model import ExitCode
from slurm_sync.slurm.query import SacctWindow
from tests.lab.conftest import LabCluster

pytestmark = pytest.mark.lab


def test_a_failed_jobs_exit_code_reads_as_on_24_11(lab: LabCluster) -> None:
    since = int(time.time()) - 5
    exit3 = lab.submit("#!/bin/sh\nexit 3\n", "--job-name=exit3", "-n1")
    array = lab.submit("#!/bin/sh\nexit $((SLURM_ARRAY_TASK_ID + 4))\n",
                       "--job-name=exit-array", "--array=0-1", "-n1")
    killed = lab.submit("#!/bin/sh\nkill -9 $$\n", "--job-name=killed9", "-n1")
    cancelled = lab.submit("#!/bin/sh\nsleep 300\n", "--job-name=cancelled", "-n1")
    lab.wait_state(cancelled, "RUNNING")
    lab.cmd("scancel", str(cancelled))
    ids = ",".join(str(i) for i in (exit3, array, killed, cancelled))

    def ended() -> bool:
        out = lab.cmd("sacct", "-X", "-n", "-P", "-o", "State", "-j", ids)
        states = [line.split()[0] for line in out.splitlines() if line.strip()]
        return len(states) == 5 and not {"PENDING", "RUNNING", "COMPLETING"} & set(states)

    lab.wait("the jobs to end in sacct", ended)
    reader = lab.reader()
    jobs = reader.sacct(SacctWindow(since, int(time.time()) + 1)).jobs
    codes = {(j.name, j.array_task_id): j.exit_code for j in jobs if j.job_id >= exit3}
    assert codes == {
        ("exit3", None): ExitCode(return_code=3),
        ("exit-array", 0): ExitCode(return_code=4),
        ("exit-array", 1): ExitCode(return_code=5),
        ("killed9", None): ExitCode(signal=9),
        ("cancelled", None): ExitCode(return_code=0),
    }, codes
    texts = [c.argv for c in reader.runner.calls if "JobIDRaw,ExitCode" in c.argv]
    # one text call on the version with the bug, for the jobs it lost; none on the others
    assert len(texts) == (1 if lab.version == "22.05" else 0), texts
