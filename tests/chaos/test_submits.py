"""The simulated Slurm takes submissions as 24.11 would: the stand-in sbatch and scancel work
through slurm-sync's own SlurmControl, squeue and sacct show what was submitted (in the parser's
eyes) with its filters honoured, the faults fire once, and the simulated scheduler and agents
run a submitted job's Buildkite job (submits.py, bkagent.py)."""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.connectors.buildkite import Ref, job_script
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.control import SlurmControl, SubmitRequest
from slurm_sync.slurm.model import JobState
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import Runner, SlurmCommands
from tests.chaos import slurmsim, submits
from tests.chaos.bkagent import Agents, ref_of
from tests.chaos.timeline import Scenario, build_timeline
from tests.emulators.buildkite import Buildkite

OURS = JobFilter(states=("PD", "R", "CG", "S"), names=("buildkite",))


@pytest.fixture
def work(tmp_path: Path) -> Path:
    slurmsim.install(tmp_path, build_timeline(Scenario.short(seed=4, jobs=8), time.time() - 5))
    return tmp_path


def _control(work: Path, timeout: float = 20.0) -> SlurmControl:
    runner = Runner(SlurmCommands(bin_dir=str(work / "bin"), timeout=timeout))
    return SlurmControl(runner, SlurmReader(runner), status_ttl=0)


def _script(ref: Ref | None = None, batch: Path | None = None) -> str:
    return job_script(agent="buildkite-agent", config="/etc/bk.cfg", build_root="/b",
                      per_build=False, tags="queue=slurm", ref=ref,
                      batch_file=str(batch) if batch else None)


def _ref(build: int = 3) -> Ref:
    return Ref("app", build, str(uuid.uuid4()))


def _submit(control: SlurmControl, ref: Ref, *options: str) -> int:
    return control.submit(SubmitRequest(
        script=_script(ref), job_name="buildkite", comment=f"bk:{ref.text()}",
        options=("--export=NONE", "--partition=main", "--time=00:10:00", *options))).job_id


def _array(control: SlurmControl, work: Path, refs: list[Ref]) -> tuple[int, str]:
    batch = uuid.uuid4().hex
    path = work / f"{batch}.refs"
    path.write_text("".join(f"{r.text()}\n" for r in refs))
    done = control.submit_array(SubmitRequest(
        script=_script(batch=path), job_name="buildkite", comment=f"bk-batch:{batch}",
        options=("--export=NONE", "--partition=main")), len(refs))
    return done.job_id, batch


def _set(work: Path, **changes: Any) -> None:
    """Change every task of every submission (wait, runtime, hold...)."""
    with submits.locked(work) as state:
        for entry in state["jobs"]:
            for task in entry["tasks"]:
                task.update(changes)


def test_sbatch_answers_like_parsable_and_squeue_and_sacct_show_the_job(work: Path) -> None:
    control = _control(work)
    ref = _ref()
    job_id = _submit(control, ref, "--cpus-per-task=2")
    assert job_id == submits.FIRST_ID
    (job,) = control.reader.squeue(OURS).jobs
    assert (job.job_id, job.state, job.name, job.comment) == (
        job_id, JobState.PENDING, "buildkite", f"bk:{ref.text()}")
    assert job.partition == "main" and job.time_limit == 10 and job.cpus == 2
    # the filters: another name, another user, other states, other ids leave it out
    reader = control.reader
    assert reader.squeue(JobFilter(names=("other",))).jobs == ()
    assert reader.squeue(JobFilter(users=("nobody-here",), names=("buildkite",))).jobs == ()
    assert reader.squeue(JobFilter(states=("R",), names=("buildkite",))).jobs == ()
    assert [j.job_id for j in reader.squeue(JobFilter(job_ids=(job_id,))).jobs] == [job_id]
    now = int(time.time())
    found = [j for j in reader.sacct(SacctWindow(now - 60, now + 1),
                                     JobFilter(states=("all",))).jobs if j.job_id == job_id]
    assert [(j.state, j.comment) for j in found] == [(JobState.PENDING, f"bk:{ref.text()}")]
    call = next(c for c in slurmsim.calls(work) if c["cmd"] == "sbatch")
    assert call["job_id"] == job_id and call["rc"] == 0 and "--parsable" in call["args"]


def test_an_array_pends_as_one_record_and_scancel_takes_a_task_or_all(work: Path) -> None:
    control = _control(work)
    refs = [_ref(4) for _ in range(3)]
    array_id, batch = _array(control, work, refs)
    (record,) = control.reader.squeue(OURS).jobs
    assert (record.job_id, record.array_job_id, record.array_tasks_pending) == (
        array_id, array_id, "0-2")
    assert record.comment == f"bk-batch:{batch}"
    entry = submits.load(work)[0]
    assert [ref_of(entry, t) for t in entry["tasks"]] == [r.text() for r in refs]
    control.cancel([f"{array_id}_1"])
    jobs = control.reader.squeue(JobFilter(states=("all",), names=("buildkite",))).jobs
    cancelled = [j for j in jobs if j.state is JobState.CANCELLED]
    assert [(j.array_job_id, j.array_task_id) for j in cancelled] == [(array_id, 1)]
    assert cancelled[0].job_id != array_id  # split off under its own id, as Slurm does
    pending = [j for j in jobs if j.state is JobState.PENDING]
    assert [(j.job_id, j.array_tasks_pending) for j in pending] == [(array_id, "0,2")]
    control.cancel([array_id])
    assert control.reader.squeue(OURS).jobs == ()


def test_scancel_signal_reaches_running_jobs_and_says_which_had_ended(work: Path) -> None:
    control = _control(work)
    running, ended = _submit(control, _ref()), _submit(control, _ref())
    with submits.locked(work) as state:
        first, second = state["jobs"]
        first["tasks"][0]["start"] = time.time() - 2
        second["tasks"][0].update(start=time.time() - 9, end=time.time() - 3,
                                  state="COMPLETED")
    assert control.signal([running, ended, 99], "TERM") == {running: None, ended: None,
                                                             99: None}
    log = [c for c in slurmsim.calls(work) if c["cmd"] == "scancel"]
    assert log[-1]["args"][:3] == ["--ctld", "--signal=TERM", "--full"]
    tasks = [e["tasks"][0] for e in submits.load(work)]
    assert tasks[0]["signalled"] and tasks[0]["end"] is None  # its agent stops it
    assert tasks[1]["signalled"] is None
    # a pending job is not signalled: slurmctld refuses, and scancel says so
    pending = _submit(control, _ref())
    with pytest.raises(SlurmCommandError, match="pending execution"):
        control.signal([pending], "TERM")


def test_sbatch_and_scancel_faults_fire_once(work: Path) -> None:
    control = _control(work, timeout=1.5)
    slurmsim.arm(work, "sbatch", "fail")
    with pytest.raises(SlurmCommandError, match="Batch job submission failed"):
        _submit(control, _ref())
    assert submits.load(work) == []  # nothing submitted
    slurmsim.arm(work, "sbatch", "lost")
    with pytest.raises(SlurmCommandError, match="Socket timed out"):
        _submit(control, _ref())
    assert len(submits.load(work)) == 1  # submitted all the same: the answer was lost
    slurmsim.arm(work, "sbatch", "hang:5")
    started = time.monotonic()
    with pytest.raises(SlurmCommandError, match="timed out"):
        _submit(control, _ref())
    assert time.monotonic() - started < 4 and len(submits.load(work)) == 2
    job_id = _submit(control, _ref())  # no fault left
    slurmsim.arm(work, "scancel", "fail")
    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        control.cancel([job_id])
    assert submits.load(work)[-1]["tasks"][0]["cancelled"] is None
    control.cancel([job_id])
    assert submits.load(work)[-1]["tasks"][0]["state"] == "CANCELLED"
    faults = [(c["cmd"], c["fault"], c["rc"]) for c in slurmsim.calls(work) if c["fault"]]
    assert faults == [("sbatch", "fail", 1), ("sbatch", "lost", 1), ("sbatch", "hang:5", 0),
                      ("scancel", "fail", 1)]
    assert slurmsim.pending_faults(work) == {}


def test_sbatch_kill_ends_its_caller_right_after_the_answer(work: Path) -> None:
    """kill:D: the job is submitted and its id printed, then the process that ran sbatch is
    SIGKILLed D seconds later, before it can record anything."""
    slurmsim.arm(work, "sbatch", "kill:0.05")
    marker = work / "recorded"
    code = (
        "import subprocess, sys, time\n"
        f"out = subprocess.run([{str(work / 'bin' / 'sbatch')!r}, '--parsable', "
        "'--job-name=buildkite'], input=b'#!/bin/sh\\ntrue\\n', capture_output=True).stdout\n"
        "time.sleep(2)\n"
        f"open({str(marker)!r}, 'wb').write(out)\n")
    proc = subprocess.run([sys.executable, "-c", code], check=False, timeout=30)
    assert proc.returncode == -9
    assert not marker.exists()
    assert len(submits.load(work)) == 1
    deadline = time.time() + 5
    while time.time() < deadline and not any(c["cmd"] == "kill" for c in slurmsim.calls(work)):
        time.sleep(0.05)
    assert [(c["cmd"], c["rc"]) for c in slurmsim.calls(work)] == [("sbatch", 0), ("kill", 0)]


def test_a_task_goes_pending_running_completing_ended_gone() -> None:
    entry = {"t": 1000.0, "time_limit": 10}
    task = {"start": None, "end": None, "cancelled": None, "state": None}
    assert submits.task_state(entry, task, 1001, 30).state == "PENDING"
    task["start"] = 1003.2
    assert submits.task_state(entry, task, 1004, 30).state == "RUNNING"
    task.update(end=1010.5, state="COMPLETED")
    assert submits.task_state(entry, task, 1011, 30).state == "COMPLETING"
    ended = submits.task_state(entry, task, 1020, 30)
    assert (ended.state, ended.start, ended.end) == ("COMPLETED", 1003, 1010)
    assert submits.task_state(entry, task, 1041, 30) is None
    assert submits.sacct_state(entry, task).state == "COMPLETED"
    cancelled = {"start": None, "end": 1002.0, "cancelled": 1002.0, "state": "CANCELLED"}
    st = submits.task_state(entry, cancelled, 1005, 30)
    assert (st.state, st.start, st.end) == ("CANCELLED", 1002, 1002)


@pytest.fixture
def kite() -> Iterator[Buildkite]:
    with Buildkite(job_status_interval=1) as emu:
        emu.add_queue("slurm")
        yield emu  # type: ignore[misc]


def test_the_agents_run_a_submitted_job_once_and_refuse_a_second(work: Path,
                                                                  kite: Buildkite) -> None:
    build = kite.add_build("app", jobs=[{"command": "true", "agent_query_rules":
                                        ["queue=slurm"]}])
    ref = Ref("app", build.number, build.job_ids[0])
    control = _control(work)
    first, second = _submit(control, ref), _submit(control, ref)
    _set(work, wait=0.0, runtime=0.2)
    agents = Agents(kite, work)
    for _ in range(8):
        agents.tick(time.time())
        time.sleep(0.1)
    assert kite.job_state(ref.job) == "passed"
    assert kite.job_history(ref.job).count("accepted") == 1
    tasks = {e["job_id"]: e["tasks"][0] for e in submits.load(work)}
    assert (tasks[first]["state"], tasks[first]["exit_code"]) == ("COMPLETED", 0)
    assert (tasks[second]["state"], tasks[second]["exit_code"]) == ("FAILED", 27)
    refused = [e for e in agents.log if e["what"] == "acquire" and e["status"] != 200]
    assert [e["slurm_id"] for e in refused] == [str(second)]


def test_a_task_of_a_cancelled_job_is_held_pending_until_scancel(work: Path,
                                                                  kite: Buildkite) -> None:
    build = kite.add_build("app", jobs=[{"command": "true", "agent_query_rules":
                                        ["queue=slurm"]} for _ in range(2)])
    refs = [Ref("app", build.number, j) for j in build.job_ids]
    control = _control(work)
    array_id, _ = _array(control, work, refs)
    _set(work, wait=0.0, runtime=30.0, hold=True)
    kite.cancel_job(refs[0].job)
    agents = Agents(kite, work)
    for _ in range(3):
        agents.tick(time.time())
        time.sleep(0.05)
    tasks = submits.load(work)[0]["tasks"]
    assert tasks[0]["start"] is None and tasks[0]["held"]  # its job is cancelled: held
    assert tasks[1]["start"] is not None and kite.job_state(refs[1].job) == "running"
    # a cancel of the running job in Buildkite: the agent stops at its next poll
    kite.cancel_job(refs[1].job)
    deadline = time.time() + 3
    while time.time() < deadline and kite.job_state(refs[1].job) != "canceled":
        agents.tick(time.time())
        time.sleep(0.1)
    assert kite.job_state(refs[1].job) == "canceled"
    tasks = submits.load(work)[0]["tasks"]
    assert (tasks[1]["state"], tasks[1]["exit_code"]) == ("FAILED", 143)
    control.cancel([f"{array_id}_0"])
    assert submits.load(work)[0]["tasks"][0]["state"] == "CANCELLED"
