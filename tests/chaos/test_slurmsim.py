"""The simulated Slurm answers as 24.11 would: slurm-sync's own parser reads it, filters are
honoured, sacct lags, squeue forgets ended jobs after MinJobAge, faults fire once."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.slurm.model import NodeTopology
from slurm_sync.slurm.parse import parse_sacct, parse_squeue, resolve_cpu_ids
from slurm_sync.slurm.query import JobFilter, SacctWindow, sacct_args, squeue_args
from tests.chaos import slurmsim
from tests.chaos.timeline import CPU_HOSTS, GPU_HOSTS, Scenario, Timeline, build_timeline

T0 = 1_800_000_000.0
VERSION = (24, 11, 5)


@pytest.fixture(scope="module")
def timeline() -> Timeline:
    return build_timeline(Scenario.short(seed=3, jobs=120, requeue_share=0.2), T0)


@pytest.fixture(scope="module")
def templates() -> dict[str, Any]:
    found = slurmsim.build_templates()
    for name in ("squeue_running", "squeue_pending", "sacct_job"):
        found[name + "_text"] = json.dumps(found[name])
    return found


def _squeue(timeline: Timeline, templates: dict[str, Any], now: float,
            job_filter: JobFilter) -> Any:
    document = slurmsim.squeue_document(timeline, templates, now,
                                        squeue_args(job_filter, VERSION))
    parsed = parse_squeue(json.dumps(document).encode())
    assert parsed.skipped == ()
    # whole nodes list no free core: the reader asks sinfo for the layout, as here
    return resolve_cpu_ids(parsed.jobs, {h: NodeTopology(2, 16, 1)
                                         for h in (*CPU_HOSTS, *GPU_HOSTS)})


def _sacct(timeline: Timeline, templates: dict[str, Any], now: float,
           window: SacctWindow, job_filter: JobFilter | None = None) -> Any:
    args = sacct_args(window, job_filter) if job_filter else sacct_args(window)
    document = slurmsim.sacct_document(timeline, templates, now, args)
    parsed = parse_sacct(json.dumps(document).encode())
    assert parsed.skipped == ()
    return parsed.jobs


def test_squeue_honours_states_and_job_ids(timeline: Timeline, templates: dict[str, Any]
                                           ) -> None:
    now = T0 + 30
    running = _squeue(timeline, templates, now, JobFilter(states=("R",)))
    assert running and all(j.state.value == "RUNNING" for j in running)
    for job in running:
        sim = next(s for s in timeline.jobs if s.job_id == job.job_id)
        run = next(r for r in sim.runs if r.start == job.start_time)
        assert list(job.hosts) == run.hosts
        assert [list(a.cpu_ids or ()) for a in job.allocations] == run.cores
        if sim.gpus_per_node:
            assert [list(a.gpu_ids) for a in job.allocations] == run.gpus
    one = running[0].job_id
    assert [j.job_id for j in _squeue(timeline, templates, now,
                                      JobFilter(states=("all",), job_ids=(one,)))] == [one]
    default = _squeue(timeline, templates, now, JobFilter())
    assert {j.state.value for j in default} <= {"PENDING", "RUNNING", "COMPLETING"}


def test_squeue_keeps_ended_jobs_for_min_job_age(timeline: Timeline,
                                                 templates: dict[str, Any]) -> None:
    job = next(j for j in timeline.jobs if len(j.runs) == 1 and j.runs[0].end > j.runs[0].start)
    run = job.runs[0]
    wanted = JobFilter(states=("all",), job_ids=(job.job_id,))
    (seen,) = _squeue(timeline, templates, run.end + 10, wanted)
    assert seen.state.value == run.state and seen.end_time == run.end
    assert [list(a.cpu_ids or ()) for a in seen.allocations] == run.cores  # cores kept
    assert all(not a.gpu_ids for a in seen.allocations)  # GPU indices not
    assert _squeue(timeline, templates, run.end + timeline.min_job_age + 1, wanted) == ()


def test_sacct_lags_and_shows_every_run_with_duplicates(timeline: Timeline,
                                                        templates: dict[str, Any]) -> None:
    job = next(j for j in timeline.jobs if len(j.runs) > 1)
    first, second = job.runs[:2]
    window = SacctWindow(int(T0) - 60, int(first.end) + 300)
    wanted = JobFilter(states=("all",), job_ids=(job.job_id,))
    before = _sacct(timeline, templates, first.end + first.end_lag - 1, window, wanted)
    assert [(j.state.value, j.end_time) for j in before] == [("RUNNING", None)]
    after = _sacct(timeline, templates, second.start + second.start_lag + 0.5, window, wanted)
    assert [(j.state.value, j.start_time) for j in after][:2] == [
        (first.state if first.state != "REQUEUED" else "REQUEUED", first.start),
        ("RUNNING", second.start)]
    assert after[1].restart_count == 1
    args = [a for a in sacct_args(window, wanted) if a != "-D"]
    latest = slurmsim.sacct_document(timeline, templates, second.start + 5, args)["jobs"]
    assert len(latest) == 1


def test_sacct_window_leaves_out_what_ended_before_it(timeline: Timeline,
                                                      templates: dict[str, Any]) -> None:
    now = T0 + 200
    late = int(now) - 5
    jobs = _sacct(timeline, templates, now, SacctWindow(late, int(now) + 1))
    for job in jobs:
        assert job.end_time is None or job.end_time >= late
    cancelled = [j for j in _sacct(timeline, templates, now, SacctWindow(int(T0) - 10,
                                                                          int(now) + 1))
                 if j.state.value == "CANCELLED" and not j.hosts]
    assert cancelled, "cancelled while pending: no hosts, never started"


def test_stand_ins_take_one_armed_fault_each(timeline: Timeline, tmp_path: Path) -> None:
    live = build_timeline(Scenario.short(seed=4, jobs=20), time.time() - 10)
    bin_dir = slurmsim.install(tmp_path, live)
    slurmsim.arm(tmp_path, "squeue", "fail")
    slurmsim.arm(tmp_path, "sacct", "empty")
    failed = subprocess.run([bin_dir / "squeue", "--json"], capture_output=True, check=False)
    assert failed.returncode == 1 and b"slurm_load_jobs error" in failed.stderr
    assert failed.stdout == b""
    again = subprocess.run([bin_dir / "squeue", "--json", "--states=all"], capture_output=True,
                           check=True)
    assert json.loads(again.stdout)["jobs"]
    empty = subprocess.run([bin_dir / "sacct", "--json", "-X", "-D", "-a"], capture_output=True,
                           check=True)
    assert json.loads(empty.stdout)["jobs"] == []
    version = subprocess.run([bin_dir / "squeue", "--version"], capture_output=True, check=True)
    assert version.stdout == b"slurm 24.11.5\n"
    log = slurmsim.calls(tmp_path)
    assert [(c["cmd"], c["fault"], c["rc"]) for c in log] == [
        ("squeue", "fail", 1), ("squeue", "", 0), ("sacct", "empty", 0), ("squeue", "", 0)]
    assert slurmsim.pending_faults(tmp_path) == {}
