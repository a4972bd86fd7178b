"""The reader against real Slurm 22.05, 24.11 and 26.05: real jobs, compared with what Slurm's
own text output (``scontrol show job -d``) says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slurm_sync.errors import SlurmError
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.query import WINDOW_RUNS, JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner, SlurmCommands
from tests.lab.conftest import LabCluster, cpu_ids_of, gpu_ids_of

pytestmark = pytest.mark.lab

SLEEP = "#!/bin/sh\nsleep 300\n"


def _only(jobs: tuple[Job, ...], job_id: int) -> Job:
    found = [j for j in jobs if j.job_id == job_id]
    assert len(found) == 1, f"job {job_id} found {len(found)} times in {[j.job_id for j in jobs]}"
    return found[0]


def _running(lab: LabCluster, *options: str, user: str = "alice") -> int:
    job_id = lab.submit(SLEEP, *options, user=user)
    lab.wait_state(job_id, "RUNNING")
    return job_id


def test_cores_0_and_3_on_two_sockets(lab: LabCluster) -> None:
    """A job given core 0 (socket 0) and core 3 (socket 1) reports cpu_ids (0, 3)."""
    first = _running(lab, "-n1")  # core 0
    _running(lab, "-n2")  # cores 1 and 2
    lab.cmd("scancel", str(first))
    lab.wait_state(first, "CANCELLED", "COMPLETED", "GONE")
    job_id = _running(lab, "-n2", "--job-name=cores03")
    truth = cpu_ids_of(lab.show(job_id))
    assert truth == [0, 3], f"the lab did not place the job on cores 0 and 3: {truth}"
    job = _only(lab.reader().squeue(JobFilter(job_ids=(job_id,))).jobs, job_id)
    (alloc,) = job.allocations
    assert alloc.hostname == lab.node
    assert alloc.cpu_ids == (0, 3)
    assert alloc.cores == ((0, 0), (1, 1))
    assert job.cpus == 2 and job.node_count == 1 and job.hosts == (lab.node,)


def test_job_on_socket_1_only(lab: LabCluster) -> None:
    _running(lab, "-n2", "--distribution=block:block")  # cores 0 and 1: socket 0
    job_id = _running(lab, "-n2", "--job-name=socket1", user="bob")
    assert cpu_ids_of(lab.show(job_id)) == [2, 3]
    job = _only(lab.reader().squeue().jobs, job_id)
    assert job.allocations[0].cpu_ids == (2, 3)
    assert job.allocations[0].cores == ((1, 0), (1, 1))
    assert job.user == "bob" and job.uid == lab.info["users"]["bob"]


def test_gpu_indices_match_scontrol(lab: LabCluster) -> None:
    two = _running(lab, "-n1", "--gres=gpu:a100:2", "--partition=gpu")
    one = _running(lab, "-n1", "--gres=gpu:1", "--partition=gpu", user="bob")
    jobs = lab.reader().squeue(JobFilter(states=("R",))).jobs
    for job_id, count in ((two, 2), (one, 1)):
        truth = gpu_ids_of(lab.show(job_id))
        assert len(truth) == count
        job = _only(jobs, job_id)
        assert job.allocations[0].gpu_ids == tuple(truth)
        assert job.gpu_count == count
        assert job.tres_allocated.get("gres/gpu") == count
        assert job.partition == "gpu"
    assert not set(_only(jobs, two).allocations[0].gpu_ids) & set(
        _only(jobs, one).allocations[0].gpu_ids
    )


def test_state_filter_is_passed_where_honoured_and_means_the_same_everywhere(
    lab: LabCluster,
) -> None:
    held = lab.submit(SLEEP, "--hold", "--job-name=held")
    running = _running(lab, "-n1", "--job-name=sleeper")
    reader = lab.reader()
    result = reader.squeue(JobFilter(states=("R",)))
    assert [j.job_id for j in result.jobs] == [running]
    squeue_calls = [c.argv for c in reader.runner.calls if "--json" in c.argv]
    honours = reader.version() >= (24, 5, 1)
    assert any(a.startswith("--states=RUNNING") for a in squeue_calls[-1]) == honours
    pending = _only(reader.squeue().jobs, held)
    assert pending.state is JobState.PENDING and pending.reason == "JobHeldUser"
    assert pending.start_time is None and pending.hosts == ()
    assert pending.submit_time is not None and abs(pending.submit_time - time.time()) < 300


def test_sacct_window_catches_jobs_that_ended_between_polls(lab: LabCluster) -> None:
    start = int(time.time()) - 1
    ok = lab.submit("#!/bin/sh\nexit 0\n", "--job-name=ok", "--comment=lab ok")
    fail = lab.submit("#!/bin/sh\nexit 3\n", "--job-name=fail3", user="bob")
    killed = lab.submit("#!/bin/sh\nkill -9 $$\n", "--job-name=killed9")
    for job_id in (ok, fail, killed):
        lab.wait_state(job_id, "COMPLETED", "FAILED", "CANCELLED")
    reader = lab.reader()
    wanted = {ok, fail, killed}

    def ended() -> tuple[Job, ...]:
        window = SacctWindow(start, int(time.time()) + 1)
        return tuple(j for j in reader.sacct(window).jobs if j.job_id in wanted)

    lab.wait("sacct to record the three jobs",
             lambda: {j.job_id for j in ended() if j.end_time} == wanted, timeout=60)
    jobs = ended()
    done, failed, signalled = (_only(jobs, i) for i in (ok, fail, killed))
    assert done.state is JobState.COMPLETED and done.exit_code.return_code == 0
    assert done.comment == "lab ok" and done.name == "ok"
    assert failed.state is JobState.FAILED and failed.user == "bob"
    # Slurm up to 23.02 reports SUCCESS for non-zero exits in sacct: the state tells, the code
    # is unknown rather than wrong.
    assert failed.exit_code.return_code in ((3,) if reader.version() >= (23, 11) else (3, None))
    assert signalled.state in (JobState.FAILED, JobState.CANCELLED)
    assert signalled.exit_code.signal == 9 or reader.version() < (23, 11)
    for job in jobs:
        assert job.start_time and job.end_time and job.start_time <= job.end_time
        assert job.hosts == (lab.node,) and job.cluster == lab.info["cluster"]
        assert job.account == "lab"


def test_the_cycles_sacct_window_lists_runs_not_the_pending_queue(lab: LabCluster) -> None:
    """``WINDOW_RUNS``: a run that started and ended in the window, and one still running, are
    listed; a job waiting in the queue all along (eligible, so plain sacct lists it) is not."""
    start = int(time.time()) - 1
    short = lab.submit("#!/bin/sh\nexit 0\n", "-n1", "--job-name=short")
    lab.wait_state(short, "COMPLETED")
    wide = _running(lab, "-n4", "--job-name=wide")  # the node's four cores
    waiting = lab.submit(SLEEP, "-n4", "--job-name=waiting")  # pending: Resources
    lab.wait_state(waiting, "PENDING")
    reader = lab.reader()
    mine = {short, wide, waiting}

    def listed(job_filter: JobFilter) -> dict[int, Job]:
        window = SacctWindow(start, int(time.time()) + 1)
        return {j.job_id: j for j in reader.sacct(window, job_filter).jobs if j.job_id in mine}

    # slurmdbd records a start or a submission a few seconds late
    lab.wait("sacct to record the three jobs",
             lambda: set(listed(JobFilter(states=("all",)))) == mine, timeout=60)
    runs = listed(WINDOW_RUNS)
    assert set(runs) == {short, wide}
    assert runs[short].state is JobState.COMPLETED and runs[wide].state is JobState.RUNNING


def test_the_listing_says_what_squeue_json_says_of_ids_states_and_times(
        lab: LabCluster) -> None:
    """``reader.squeue_listing`` (plain ``squeue -o``) against ``reader.squeue`` (JSON) on the
    same jobs: a running job, a finished one, array tasks running and pending, a pending job
    whose name holds a '|'."""
    done = lab.submit("#!/bin/sh\nexit 0\n", "-n1", "--job-name=done")
    lab.wait_state(done, "COMPLETED")
    running = _running(lab, "-n2", "--job-name=two cores")
    array = lab.submit(SLEEP, "-n1", "--array=1-4", "--job-name=arr", user="bob")
    waiting = lab.submit(SLEEP, "-n4", "--job-name=wait|ing")
    lab.wait_state(waiting, "PENDING")
    reader = lab.reader()
    everything = JobFilter(states=("all",))
    listed = {(j.job_id, j.array_task_id): j for j in reader.squeue_listing(everything).jobs}
    full = {(j.job_id, j.array_task_id): j for j in reader.squeue(everything).jobs}
    mine = {k for k, j in full.items()
            if j.job_id in (done, running, waiting) or j.array_job_id == array}
    assert mine and mine <= set(listed), (sorted(mine), sorted(listed))
    for key in mine:
        a, b = listed[key], full[key]
        assert (a.cluster, a.job_id, a.array_job_id, a.array_task_id, a.state, a.name,
                a.partition, a.user, a.account, a.node_count, a.hosts) == (
                b.cluster, b.job_id, b.array_job_id, b.array_task_id, b.state, b.name,
                b.partition, b.user, b.account, b.node_count, b.hosts), key
        if b.state is not JobState.PENDING:
            assert a.start_time == b.start_time and a.cpus == b.cpus, key
        if b.state.finished:
            assert a.end_time == b.end_time, key
        assert a.source == "squeue-list" and a.allocations == ()
    assert listed[(waiting, None)].name == "wait|ing"


def test_unicode_job_name_round_trips(lab: LabCluster) -> None:
    name = "Ωmega-déjà-✓"
    job_id = lab.submit(SLEEP, f"--job-name={name}", "--hold")
    assert _only(lab.reader().squeue().jobs, job_id).name == name


def test_array_tasks_and_their_script(lab: LabCluster) -> None:
    script = "#!/bin/sh\n# array-script-marker\nsleep 300\n"
    array_id = lab.submit(script, "--array=0-3%2", "-n1", "--job-name=array",
                          "--export=ALL,LAB_MARKER=present")
    reader = lab.reader()
    lab.wait("two array tasks running", lambda: sum(
        j.state is JobState.RUNNING for j in reader.squeue(JobFilter(job_ids=(array_id,))).jobs
    ) == 2)
    jobs = reader.squeue(JobFilter(job_ids=(array_id,))).jobs
    running = sorted((j for j in jobs if j.state is JobState.RUNNING),
                     key=lambda j: j.array_task_id or 0)
    assert [j.array_task_id for j in running] == [0, 1]
    assert all(j.array_job_id == array_id for j in jobs)
    rest = [j for j in jobs if j.state is JobState.PENDING]
    assert len(rest) == 1 and rest[0].array_tasks_pending is not None
    assert rest[0].array_tasks_pending.startswith("2-3")
    task = running[1]
    files = reader.job_files(task.job_id, task.array_job_id)
    assert files.script is not None and "array-script-marker" in files.script
    assert files.environment is not None and "LAB_MARKER=present" in files.environment
    assert reader.batch_script(task.job_id) == files.script


def test_requeued_job_counts_its_restart(lab: LabCluster) -> None:
    job_id = _running(lab, "-n1", "--requeue", "--job-name=requeued")
    lab.cmd("scontrol", "requeue", str(job_id))
    reader = lab.reader()
    lab.wait("the requeue to show",
             lambda: _only(reader.squeue().jobs, job_id).restart_count == 1)
    job = _only(reader.squeue().jobs, job_id)
    assert job.state in (JobState.PENDING, JobState.RUNNING, JobState.COMPLETING)


def test_jobs_command_against_the_lab(lab: LabCluster, tmp_path: Path) -> None:
    job_id = lab.submit(SLEEP, "--hold", "--job-name=cli-check")
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"slurm": {"bin_dir": lab.bin_dir}}))
    proc = subprocess.run(
        [sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "jobs", "--json",
         "-j", str(job_id)],
        capture_output=True, text=True, timeout=60, env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    document = json.loads(proc.stdout)
    assert [j["job_id"] for j in document["jobs"]] == [job_id]
    assert document["jobs"][0]["state"] == "PENDING"
    assert document["producer"]["release"].startswith(lab.version)


def test_unreachable_controller_is_an_error_not_an_empty_queue(lab: LabCluster) -> None:
    """A squeue that cannot reach slurmctld raises; it never reads as "no jobs"."""
    root = str(lab.info.get("root_dir", "")).rstrip("/")
    port = lab.info["ports"]["slurmctld"]
    text = Path(root + lab.info["slurm_conf"]).read_text()
    assert f"SlurmctldPort={port}" in text
    inside = "/tmp/slurm-sync-unreachable.conf"
    Path(root + inside).write_text(text.replace(f"SlurmctldPort={port}", "SlurmctldPort=9"))
    prefix = (("chroot", root) if root else ()) + ("env", f"SLURM_CONF={inside}")
    reader = SlurmReader(Runner(SlurmCommands(prefix=prefix, timeout=120)))
    # 24.11+ exit non-zero; 22.05 exits 0 with an "errors" entry: both raise.
    with pytest.raises(SlurmError):
        reader.squeue()


def test_show_jobs_equals_squeue_json(lab: LabCluster) -> None:
    """``reader.show_jobs()`` (``scontrol show job -d`` text) reads every job slurmctld holds as
    ``reader.squeue`` (``squeue --json``) does, field by field, with the differences
    tests/unit/test_scontrol_parse.py allows (its captures are of these same versions)."""
    from tests.unit.test_scontrol_parse import COMPARED, RULES

    failed = lab.submit("#!/bin/sh\nexit 3\n", "-n1", "--job-name=fail3", user="bob")
    lab.wait_state(failed, "FAILED")
    plain = _running(lab, "-n2", "--job-name=plain job with spaces",
                     "--comment=a comment, with = signs")
    # the text names no cluster: show_jobs gives its jobs the reader's (squeue's JSON has one)
    reader = SlurmReader(lab.reader().runner, cluster=str(lab.info["cluster"]))
    array = lab.submit(SLEEP, "-n1", "--array=0-3%2", "--partition=gpu",
                       "--gres=gpu:a100:2", "--job-name=array", user="bob")
    lab.wait("two array tasks running", lambda: sum(
        j.state is JobState.RUNNING for j in reader.squeue(JobFilter(job_ids=(array,))).jobs
    ) == 2)
    held = lab.submit(SLEEP, "--hold", "--job-name=held")
    everything = JobFilter(states=("all",))
    for _ in range(5):  # one moment: retaken if squeue's answer changed meanwhile
        before = reader.squeue(everything)
        shown = reader.show_jobs()
        document = json.loads(lab.cmd("squeue", "--json", "--states=all"))
        if reader.squeue(everything).jobs == before.jobs:
            break
    assert not shown.skipped and not before.skipped, shown.skipped
    squeue = {j.job_id: j for j in before.jobs}
    scontrol = {j.job_id: j for j in shown.jobs}
    records = {r["job_id"]: r for r in document["jobs"]}
    assert set(scontrol) == set(squeue) and {failed, plain, array, held} <= set(scontrol)
    assert sum(j.array_job_id == array for j in scontrol.values()) == 3  # 2 tasks + the rest
    mismatches = []
    for job_id, sq in squeue.items():
        sc = scontrol[job_id]
        for field in COMPARED:
            try:
                if field in RULES:
                    RULES[field](sq, sc, records[job_id], lab.version)
                else:
                    assert getattr(sc, field) == getattr(sq, field)
            except AssertionError:
                mismatches.append(f"{job_id} ({sq.name}).{field}: squeue "
                                  f"{getattr(sq, field)!r}, scontrol {getattr(sc, field)!r}")
    assert not mismatches, "\n".join(mismatches)
    assert scontrol[plain].allocations[0].cpu_ids == tuple(cpu_ids_of(lab.show(plain)))
    # one job: one `scontrol show job -d ID`; an array's id: its tasks
    (one,) = reader.show_jobs([plain]).jobs
    assert one == scontrol[plain]
    assert {j.job_id for j in reader.show_jobs([array]).jobs} == {
        i for i, j in scontrol.items() if j.array_job_id == array}
