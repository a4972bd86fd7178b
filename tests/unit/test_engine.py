"""The engine's pure steps: merged queries, windows, safety guards, --limit, and the run lock."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from slurm_sync.actions import Action
from slurm_sync.connector import Scope, SlurmNeeds, View
from slurm_sync.engine import LockHeld, RunLock, guard, limit, merged_filter, sacct_window
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.query import JobFilter

TS0 = 1_795_400_000.0


def _a(kind: str, key: str) -> Action:
    return Action("c", kind, key)


def test_one_squeue_serves_every_connector() -> None:
    merged = merged_filter(
        [SlurmNeeds(squeue=JobFilter(states=("R",), names=("buildkite",))),
         SlurmNeeds(squeue=JobFilter(states=("PD",), names=("bk2",))),
         SlurmNeeds(sacct=True)],
        Scope(),
    )
    assert merged is not None
    assert merged.states == ("RUNNING", "PENDING") and merged.names == ("buildkite", "bk2")
    open_names = merged_filter([SlurmNeeds(squeue=JobFilter(states=("R",))),
                                SlurmNeeds(squeue=JobFilter(names=("x",)))], Scope())
    assert open_names is not None and open_names.names == ()
    scoped = merged_filter([SlurmNeeds(squeue=JobFilter())], Scope(job_ids=(7, 9)))
    assert scoped is not None and scoped.job_ids == (7, 9)
    assert merged_filter([SlurmNeeds(sacct=True)], Scope()) is None


def test_sacct_window_overlaps_the_last_one_and_the_first_looks_back() -> None:
    assert sacct_window(None, TS0, 60, 3600) == sacct_window(None, TS0, 0, 3600)
    first = sacct_window(None, TS0, 60, 3600)
    # The end is just past now: sacct takes jobs eligible before it.
    assert (first.start, first.end) == (int(TS0) + 1 - 3600, int(TS0) + 1)
    later = sacct_window(TS0 - 60, TS0, 60, 3600)
    assert (later.start, later.end) == (int(TS0) - 120, int(TS0) + 1)


def _keys(count: int) -> frozenset[str]:
    return frozenset(f"k{i}" for i in range(count))


def _view(ok: bool = True, jobs: int = 5) -> View:
    active = tuple(Job(job_id=i, state=JobState.RUNNING) for i in range(jobs))
    return View(now=TS0, active=active, squeue_ok=ok, sacct_ok=ok)


def test_no_destructive_action_from_a_failed_query() -> None:
    plan = [_a("start", "k1"), _a("stop", "k2")]
    kept, reasons = guard(plan, _view(ok=False), tracked=_keys(10), share=0.5, force=True)
    assert [a.kind for a in kept] == ["start"] and "query failed" in reasons[0]


def test_no_stop_when_slurm_returns_nothing_while_jobs_are_tracked() -> None:
    kept, reasons = guard([_a("stop", "k")], _view(jobs=0), tracked=_keys(3), share=0.5,
                          force=True)
    assert kept == [] and "no jobs while 3 are tracked" in reasons[0]


def test_mass_stop_is_refused_unless_forced() -> None:
    stops = [_a("stop", f"k{i}") for i in range(6)]
    kept, reasons = guard(stops, _view(), tracked=_keys(10), share=0.5, force=False)
    assert kept == [] and "--force" in reasons[0]
    kept, reasons = guard(stops, _view(), tracked=_keys(10), share=0.5, force=False, floor=6)
    assert kept == stops and reasons == []  # six stops are few enough on any cluster
    kept, reasons = guard(stops, _view(), tracked=_keys(10), share=0.5, force=True)
    assert kept == stops and reasons == []
    kept, _ = guard(stops[:5], _view(), tracked=_keys(10), share=0.5, force=False)
    assert len(kept) == 5


def test_short_jobs_started_and_stopped_in_one_cycle_do_not_count_against_the_share() -> None:
    """Ten jobs that ran between two cycles are stopped though only two were tracked."""
    plan = [_a(kind, f"new{i}") for i in range(10) for kind in ("start", "stop")]
    plan.append(_a("stop", "k0"))
    kept, reasons = guard(plan, _view(), tracked=_keys(2), share=0.5, force=False)
    assert kept == plan and reasons == []
    kept, reasons = guard([*plan, _a("stop", "k1")], _view(), tracked=_keys(2), share=0.5,
                          force=False)
    assert "2 stop/cancel action(s) not taken: they stop more than 50% of the 2 tracked" in (
        reasons[0])
    # Only the doubtful stops of tracked jobs wait; the short jobs' starts and stops go.
    assert kept == plan[:-1]


def _ended(job_id: int, start: int = 100, end: int = 200,
           state: JobState = JobState.COMPLETED) -> Job:
    return Job(job_id=job_id, state=state, start_time=start, end_time=end, source="sacct")


def test_a_confirmed_backlog_of_ended_jobs_is_stopped_however_large() -> None:
    """After an outage 80 of 90 tracked jobs ended: sacct reports each run ended, so every stop
    goes, without --force; that state cannot refuse for ever."""
    ended = tuple(_ended(i) for i in range(80))
    tracked = frozenset(f"-/{i}/100" for i in range(90))
    view = View(now=TS0, active=(), ended=ended, squeue_ok=True, sacct_ok=True)
    stops = [_a("stop", f"-/{i}/100") for i in range(80)]
    kept, reasons = guard(stops, view, tracked=tracked, share=0.5, force=False, floor=10)
    assert kept == stops and reasons == []


def test_stops_slurm_does_not_confirm_are_held_when_they_are_many() -> None:
    """A truncated or lying answer: 60 of 90 tracked runs would stop with no sacct record of
    their end (or squeue still shows them running): those wait, the confirmed ones go."""
    running = tuple(Job(job_id=i, state=JobState.RUNNING, start_time=100) for i in range(60))
    # sacct says these ended, but squeue, asked first, still shows the same runs running:
    # contradicted, so not confirmed this cycle.
    contradicted = tuple(_ended(i) for i in range(50))
    confirmed = tuple(_ended(i) for i in range(60, 65))
    view = View(now=TS0, active=running, ended=(*contradicted, *confirmed), squeue_ok=True,
                sacct_ok=True)
    tracked = frozenset(f"-/{i}/100" for i in range(90))
    doubtful = [_a("stop", f"-/{i}/100") for i in range(60)]
    sure = [_a("stop", f"-/{i}/100") for i in range(60, 65)]
    kept, reasons = guard([*doubtful, *sure], view, tracked=tracked, share=0.5, force=False,
                          floor=10)
    assert kept == sure and "60 stop/cancel action(s) not taken" in reasons[0]
    kept, _ = guard([*doubtful, *sure], view, tracked=tracked, share=0.5, force=True)
    assert len(kept) == 65


def test_limit_caps_each_direction_and_defers_a_stop_with_its_start() -> None:
    plan = [_a("start", "a"), _a("start", "b"), _a("start", "c"),
            _a("stop", "x"), _a("stop", "c"), _a("stop", "y")]
    kept, deferred = limit(plan, 2)
    assert [(a.kind, a.key) for a in kept] == [
        ("start", "a"), ("start", "b"), ("stop", "x"), ("stop", "y")]
    assert [(a.kind, a.key) for a in deferred] == [("start", "c"), ("stop", "c")]
    assert limit(plan, None) == (plan, [])


def test_second_run_is_refused_while_the_first_holds_the_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; sys.path.insert(0, sys.argv[2])\n"
         "from slurm_sync.engine import RunLock\n"
         "with RunLock(sys.argv[1]):\n    print('held', flush=True); time.sleep(30)",
         str(tmp_path), str(Path(__file__).resolve().parents[2])],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=f"pid {holder.pid}"), RunLock(str(tmp_path)):
            pass
    finally:
        holder.kill()
        holder.wait()
    with RunLock(str(tmp_path)):  # a killed holder leaves no stale lock
        assert os.path.exists(tmp_path / "run.lock")
