"""Which filters each Slurm version honours, and that filtering afterwards means the same."""

from __future__ import annotations

import time

import pytest

from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.query import (
    WINDOW_RUNS,
    JobFilter,
    SacctWindow,
    listing_args,
    parse_version,
    sacct_args,
    squeue_args,
    state_names,
)

FULL = JobFilter(states=("R", "PD"), job_ids=(7,), names=("bk",), users=("alice",),
                 partitions=("gpu",))


def test_24_05_1_and_later_get_every_filter() -> None:
    assert squeue_args(FULL, (24, 11, 5)) == [
        "--json", "--states=RUNNING,PENDING,CONFIGURING,RESIZING", "--jobs=7,7", "--name=bk",
        "--user=alice", "--partition=gpu"]
    assert squeue_args(FULL, (24, 5, 1)) == squeue_args(FULL, (26, 5, 5))


def test_23_02_to_24_05_0_get_jobs_and_users_only() -> None:
    assert squeue_args(FULL, (23, 2, 0)) == ["--json", "--jobs=7,7", "--user=alice"]
    assert squeue_args(FULL, (24, 5, 0)) == ["--json", "--jobs=7,7", "--user=alice"]


def test_squeue_gets_a_lone_job_id_twice_and_sacct_once() -> None:
    """squeue fails with "Invalid job id specified" on one id slurmctld no longer holds (seen
    on 22.05: `run -j` of a purged job exited 3); with two ids it lists what it has."""
    one = JobFilter(job_ids=(7,))
    assert listing_args(one, "%i") == ["-h", "--jobs=7,7", "-o", "%i"]
    assert listing_args(JobFilter(job_ids=(7, 8)), "%i") == ["-h", "--jobs=7,8", "-o", "%i"]
    assert sacct_args(SacctWindow(0, 60), one)[-1] == "--jobs=7"


def test_running_asks_for_jobs_still_configuring() -> None:
    """squeue's -t RUNNING leaves out a job whose PrologSlurmctld still runs (its state is
    RUNNING|CONFIGURING): the moment the hook announces the start. Seen on the fat-node lab: 214
    of a burst of 1,000 starts went unlisted by the cycles their events woke."""
    running = squeue_args(JobFilter(states=("R",)), (24, 11, 5))
    assert running == ["--json", "--states=RUNNING,CONFIGURING,RESIZING"]
    assert squeue_args(JobFilter(states=("PD",)), (24, 11, 5)) == ["--json", "--states=PENDING"]


def test_22_05_gets_no_filter() -> None:
    assert squeue_args(FULL, (22, 5, 8)) == ["--json"]


def test_states_all() -> None:
    assert squeue_args(JobFilter(states=("all",)), (24, 11, 5)) == ["--json", "--states=all"]


def _job(**kw: object) -> Job:
    return Job(**{"job_id": 1, "state": JobState.RUNNING, **kw})  # type: ignore[arg-type]


def test_after_filter_defaults_to_not_finished_like_squeue() -> None:
    default = JobFilter()
    assert default.matches(_job(state=JobState.PENDING))
    assert default.matches(_job(state=JobState.COMPLETING))
    assert not default.matches(_job(state=JobState.COMPLETED))
    assert JobFilter(states=("all",)).matches(_job(state=JobState.COMPLETED))


def test_after_filter_fields() -> None:
    assert FULL.matches(_job(job_id=7, name="bk", user="alice", partition="gpu"))
    assert not FULL.matches(_job(job_id=8, name="bk", user="alice", partition="gpu"))
    assert FULL.matches(_job(job_id=9, array_job_id=7, name="bk", user="alice", partition="gpu"))
    assert FULL.matches(
        _job(job_id=7, name="bk", user="alice", partition="main,gpu", state=JobState.PENDING))
    assert not FULL.matches(_job(job_id=7, name="bk", user="bob", partition="gpu"))


def test_state_names_reject_unknown() -> None:
    assert state_names(["R", "pending", "CD"]) == (
        JobState.RUNNING, JobState.PENDING, JobState.COMPLETED)
    with pytest.raises(SlurmFormatError, match="RUNNNING"):
        state_names(["RUNNNING"])


def test_parse_version() -> None:
    assert parse_version("slurm 24.11.5\n") == (24, 11, 5)
    assert parse_version("slurm-wlm 22.05.8") == (22, 5, 8)
    assert parse_version("slurm 26.05.0-0rc1") == (26, 5, 0)
    with pytest.raises(SlurmFormatError):
        parse_version("command not found")


def test_sacct_window_is_explicit_local_time_and_allocations_only() -> None:
    start = int(time.mktime((2026, 11, 22, 10, 0, 0, 0, 0, -1)))
    args = sacct_args(SacctWindow(start, start + 60))
    assert args == ["--json", "-X", "-D", "-S", "2026-11-22T10:00:00", "-E", "2026-11-22T10:01:00",
                    "-a"]
    named = sacct_args(SacctWindow(start, start + 60), JobFilter(states=("CD", "F"),
                                                                 users=("bob",)))
    assert "--user=bob" in named and "-a" not in named
    assert "--state=COMPLETED,FAILED" in named


def test_the_cycles_window_asks_for_runs_and_ends_never_the_pending_queue() -> None:
    """sacct's -s selects by the window: RUNNING is every run that ran in it (the lab tests show
    it on each version); PENDING would bring the whole eligible queue, every cycle."""
    (state,) = [a for a in sacct_args(SacctWindow(0, 60), WINDOW_RUNS) if a.startswith("--state")]
    asked = set(state.split("=", 1)[1].split(","))
    assert {"RUNNING", "COMPLETED", "CANCELLED", "REQUEUED", "TIMEOUT"} <= asked
    assert "PENDING" not in asked and "COMPLETING" not in asked


def test_window_must_not_run_backwards() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        SacctWindow(10, 5)
