"""The Buildkite connector end to end: real Slurm 22.05, 24.11 and 26.05, ``slurm-sync`` as
cron would run it, the Buildkite emulator over real HTTP, and the test ``buildkite-agent``
running inside the real Slurm jobs (it acquires its job from the emulator, runs the step and
reports back). Both ways of finding work: REST and the Stacks API.

One build of many jobs across two queues, with slurm_* options, one forbidden option, one job
cancelled while pending and one while running, one timed out: every allowed job runs exactly
once as a Slurm job and passes; the forbidden one is refused with its reason; the cancelled ones
leave nothing in squeue.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.buildkite import Buildkite
from tests.lab.conftest import LabCluster

pytestmark = pytest.mark.lab

ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "emulators" / "buildkite-agent"


@pytest.fixture
def shared(lab: LabCluster) -> Iterator[Path]:
    """A folder the syncer, the jobs (inside a chroot too) and the test all see."""
    folder = Path(lab.info["shared_dir"]) / f"bk-{uuid.uuid4().hex[:8]}"
    (folder / "builds").mkdir(parents=True)
    (folder / "batches").mkdir()
    (folder / "logs").mkdir()
    shutil.copy(AGENT, folder / "buildkite-agent")
    (folder / "buildkite-agent").chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def kite() -> Iterator[Buildkite]:
    with Buildkite(job_status_interval=1) as emu:
        emu.add_queue("slurm")
        emu.add_queue("elsewhere")
        yield emu  # type: ignore[misc]


def _config(lab: LabCluster, tmp_path: Path, shared: Path, emu: Buildkite, mode: str) -> Path:
    agent_cfg = shared / "agent.cfg"
    agent_cfg.write_text(f"token={emu.agent_token}\nendpoint={emu.url}/v3\n")
    agent_cfg.chmod(0o600)
    api = tmp_path / "api-token"
    api.write_text(emu.api_token + "\n")
    agent_token = tmp_path / "agent-token"
    agent_token.write_text(emu.agent_token + "\n")
    for secret in (api, agent_token):
        secret.chmod(0o600)
    settings: dict[str, Any] = {
        "mode": mode, "queue": "slurm",
        "agent": {"command": str(shared / "buildkite-agent"), "config": str(agent_cfg),
                  "build_root": str(shared / "builds"), "log_dir": str(shared / "logs")},
        "batch_dir": str(shared / "batches"),
        "policy": {"defaults": {"partition": "main", "time": "00:10:00"}},
        "cancel_grace_seconds": 5, "taken_grace_seconds": 5,
    }
    if mode == "rest":
        # from the environment, to show it does not reach the jobs' environment
        settings["rest"] = {"url": emu.url, "organization": emu.default_org,
                            "token": {"env": "BK_LAB_API_TOKEN"}}
    else:
        settings["stacks"] = {"url": emu.url, "token": {"file": str(agent_token)},
                              "stack_key": f"lab-{lab.version.replace('.', '')}"}
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"), "first_window_seconds": 30,
        "retry_base_seconds": 1,
        "slurm": {"bin_dir": lab.bin_dir,
                  "state_save_location": str(lab.info["state_save_location"])},
        "connectors": {"buildkite": settings},
    }))
    return config


def _sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "BK_LAB_API_TOKEN": Buildkite().api_token}
    return subprocess.run([sys.executable, "-m", "slurm_sync.cli", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _environments(lab: LabCluster) -> str:
    """The environment files slurmctld keeps for our pending jobs."""
    root = Path(lab.info["state_save_location"])
    ids = set(lab.cmd("squeue", "-h", "-n", "buildkite", "-o", "%F").split())
    return "".join((root / f"hash.{int(i) % 10}" / f"job.{i}" / "environment")
                   .read_bytes().decode(errors="replace") for i in ids)


def _logs(shared: Path, job: str) -> str:
    """The Slurm output of the job that ran Buildkite job ``job`` (for a failure message);
    ``""``: of every job."""
    texts = [p.read_text(errors="replace") for p in sorted((shared / "logs").iterdir())]
    return "\n".join(t[-3000:] for t in texts if job in t)


def _leftovers(lab: LabCluster, shared: Path, paths: list[Path]) -> str:
    """What a failure needs to say about build paths left behind: their files, how sacct
    saw the job that left each, and our jobs' output."""
    lines = []
    for path in paths:
        job_id = path.name.removeprefix("job-")
        lines.append(f"{path}: {sorted(p.name for p in path.rglob('*'))}")
        lines.append(lab.cmd("sacct", "-n", "-X", "-j", job_id, "-o",
                             "jobid,jobidraw,state,exitcode,start,end,reason"))
    lines.append(_logs(shared, ""))  # every job's
    return "\n".join(lines)


def _ours(lab: LabCluster) -> list[str]:
    """Our jobs in squeue: id and state."""
    out = lab.cmd("squeue", "-h", "-r", "-n", "buildkite", "-o", "%i %T")
    return [line for line in out.splitlines() if line.strip()]


def _submissions(lab: LabCluster) -> int:
    """How many sbatch calls made the jobs named buildkite in squeue (an array counts once:
    %F is the array's job id, or the job's own)."""
    return len(set(lab.cmd("squeue", "-h", "-r", "-n", "buildkite", "-o", "%F").split()))


@pytest.mark.parametrize("mode", ["rest", "stacks"])
def test_a_build_runs_once_each_and_cancels_leave_nothing(
    lab: LabCluster, tmp_path: Path, shared: Path, kite: Buildkite, mode: str
) -> None:
    config = _config(lab, tmp_path, shared, kite, mode)
    # A job that holds the whole node keeps ours pending until the test lets it go.
    blocker = lab.submit("#!/bin/sh\nsleep 600\n", "--job-name=blocker", "-n4")
    lab.wait_state(blocker, "RUNNING")
    q = "queue=slurm"
    build = kite.add_build("app", jobs=[
        {"step_key": "a", "command": "echo a", "agent_query_rules": [q]},
        {"step_key": "b", "command": "echo b", "agent_query_rules": [q]},
        {"step_key": "c", "command": "echo c", "agent_query_rules": [q, "slurm_cpus_per_task=2"]},
        {"step_key": "uid", "command": "id", "agent_query_rules": [q, "slurm_uid=0"]},
        {"step_key": "other", "command": "true", "agent_query_rules": ["queue=elsewhere"]},
        {"step_key": "pending", "command": "sleep 300", "agent_query_rules": [q]},
        {"step_key": "running", "command": "sleep 300", "agent_query_rules": [q]},
        {"step_key": "timeout", "command": "sleep 300", "agent_query_rules": [q]},
    ])
    a, b, c, forbidden, other, pend, run, tout = build.job_ids

    first = _sync(config, "--json")
    assert first.returncode == 1, first.stdout + first.stderr  # the refusal is a failure
    report = json.loads(first.stdout)
    outcomes = {a_["key"].split("#")[0]: a_ for a_ in (*report["actions"], *report["facts"])}
    assert "--uid is never taken from a pipeline" in outcomes[forbidden]["detail"]
    assert other not in outcomes
    # a, b, pending, running and timeout share a shape: one array of five; c goes alone
    assert len(_ours(lab)) == 6, _ours(lab)
    assert _submissions(lab) == 2  # one array of five, and c
    if mode == "stacks":
        assert kite.job_state(forbidden) in ("failed", "broken", "canceled")
        assert any("queued in Slurm" in n for n in kite.notifications(a))
    else:
        status = _sync(config, "status")
        assert forbidden in status.stdout and "--uid" in status.stdout
    assert kite.job_state(other) == "scheduled"
    # jobs start with --export=NONE: the service's environment (its token) stays out
    environments = _environments(lab)
    assert "SLURM_JOB_NAME" in environments or "SLURM" in environments
    assert kite.api_token not in environments and "BK_LAB_API_TOKEN" not in environments

    # cancelled while pending: its Slurm task leaves the queue
    kite.cancel_job(pend)
    assert _sync(config, "-q").returncode == 0
    lab.wait("the cancelled pending task to leave squeue", lambda: len(_ours(lab)) == 5)

    # now let them run; cancel one while it runs, time one out in Buildkite
    lab.cmd("scancel", str(blocker))
    lab.wait("the agents to take run and timeout", lambda: kite.job_state(run) == "running"
             and kite.job_state(tout) == "running", timeout=120)
    kite.cancel_job(run)
    kite.set_job_state(tout, "timing_out")
    deadline = time.monotonic() + 180
    while _ours(lab) and time.monotonic() < deadline:
        assert _sync(config, "-q").returncode in (0, 1)
        time.sleep(3)
    assert _ours(lab) == [], "our jobs left in squeue"

    for job in (a, b, c):
        assert kite.job_state(job) == "passed", (job, kite.job_history(job))
        assert kite.job_history(job).count("accepted") == 1  # acquired exactly once
    assert kite.job_state(run) in ("canceled", "failed"), (kite.job_history(run),
                                                        _logs(shared, run))
    assert kite.job_state(tout) != "running"
    assert kite.job_state(pend) == "canceled" and "accepted" not in kite.job_history(pend)
    left = sorted((shared / "builds").iterdir())
    assert left == [], _leftovers(lab, shared, left)  # each job's build path was removed
    # nothing more to do: no new submit on the next run
    again = _sync(config, "--json")
    assert again.returncode == 0, again.stderr
    assert [x for x in json.loads(again.stdout)["actions"] if x["kind"] == "submit"] == []


def test_a_build_path_left_by_a_job_slurm_killed_is_pruned(
    lab: LabCluster, tmp_path: Path, shared: Path, kite: Buildkite
) -> None:
    """A job killed before its script's cleanup leaves its build path; the next cycles remove
    it once squeue says the job is gone, and leave a running job's path alone."""
    config = _config(lab, tmp_path, shared, kite, "rest")
    builds = shared / "builds"
    script = (f"#!/bin/sh\nmkdir -p {builds}/job-$SLURM_JOB_ID/src\n"
              f"touch {builds}/job-$SLURM_JOB_ID/src/file\nsleep 600\n")
    victim = lab.submit(script, "--job-name=buildkite", "-p", "main", "-o", "/dev/null",
                        user=None)
    survivor = lab.submit(script, "--job-name=buildkite", "-p", "main", "-o", "/dev/null",
                          user=None)
    for job in (victim, survivor):
        lab.wait_state(job, "RUNNING")
        lab.wait(f"job {job}'s build path", (builds / f"job-{job}" / "src" / "file").exists)
    lab.cmd("scancel", str(victim))
    lab.wait_state(victim, "CANCELLED")
    old = time.time() - 3600  # as if both had been left for an hour
    for job in (victim, survivor):
        os.utime(builds / f"job-{job}", (old, old))

    plan = _sync(config, "--dry-run")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert f"Slurm job {victim} is gone" in plan.stdout, plan.stdout
    assert f"Slurm job {survivor} is gone" not in plan.stdout
    assert (builds / f"job-{victim}").exists()

    result = _sync(config)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (builds / f"job-{victim}").exists()
    assert (builds / f"job-{survivor}" / "src" / "file").exists()
    assert lab.state(survivor) == "RUNNING"


def test_a_running_array_task_with_pending_siblings_is_cancelled_within_the_grace(
    lab: LabCluster, tmp_path: Path, shared: Path, kite: Buildkite
) -> None:
    """A Buildkite cancel of a running array task whose siblings still pend. slurmctld
    delivers ``scancel --signal=TERM --full <task>`` but answers "try again later" (exit 228,
    after scancel retried for 95 s). The SIGTERM must be taken at once, so the grace starts
    and the full cancel follows one cycle after it, and is sent once while Slurm ends the job;
    no cycle may wait on Slurm longer than slurm.timeout; a pending sibling cancelled at the
    same time leaves in the same cycle.

    The array is made by hand as the connector makes one (name, ``bk-batch:`` comment, map
    file), running a step that ignores SIGTERM as an agent busy with its hooks would: only
    the full cancel ends it."""
    config = _config(lab, tmp_path, shared, kite, "rest")
    settings = json.loads(config.read_text())
    settings["slurm"]["timeout"] = 20
    config.write_text(json.dumps(settings))
    build = kite.add_build("app", jobs=[
        {"step_key": f"s{i}", "command": "true", "agent_query_rules": ["queue=slurm"]}
        for i in range(3)])
    batch = uuid.uuid4().hex
    (shared / "batches" / f"{batch}.refs").write_text(
        "".join(f"app/{build.number}/{job}\n" for job in build.job_ids))
    array = lab.submit("#!/bin/sh\ntrap '' TERM\nsleep 300\n", "--job-name=buildkite",
                       f"--comment=bk-batch:{batch}", "--array=0-2", "-n4", user=None)
    task = f"{array}_0"
    lab.wait(f"task {task} running, 1 and 2 pending",
             lambda: sorted(_ours(lab)) == [f"{task} RUNNING", f"{array}_1 PENDING",
                                            f"{array}_2 PENDING"])
    time.sleep(3)  # a just-started job may not take signals yet
    running, pending = build.job_ids[0], build.job_ids[1]
    kite.set_job_state(running, "running")  # as if task 0's agent ran it
    kite.cancel_job(running)
    kite.cancel_job(pending)
    assert kite.job_state(running) == "canceling" and kite.job_state(pending) == "canceled"

    def still_running() -> bool:
        return f"{task} RUNNING" in _ours(lab)

    cycles: list[tuple[float, float, list[dict[str, Any]]]] = []  # start, seconds, actions
    deadline = time.monotonic() + 150
    while still_running() and time.monotonic() < deadline:
        started = time.monotonic()
        result = _sync(config, "--json")
        assert result.returncode in (0, 1), result.stdout + result.stderr
        cycles.append((started, time.monotonic() - started,
                       json.loads(result.stdout)["actions"]))
        if len(cycles) == 1:
            # the SIGTERM and the pending cancel both went out in this cycle, at once
            done = sorted((a["kind"], a["outcome"]) for a in cycles[0][2])
            assert done == [("cancel", "done"), ("signal", "done")], result.stdout
            assert f"{array}_1 PENDING" not in _ours(lab)
            assert still_running()  # it ignores SIGTERM
        time.sleep(1)
    ended = time.monotonic()
    seconds = [round(c[1], 1) for c in cycles]
    assert max(seconds) < 20, f"a cycle waited on Slurm past slurm.timeout (20 s): {seconds}"
    assert not still_running(), (_ours(lab), seconds)
    # signalled in the first cycle, cancelled in the first cycle after the 5 s grace: the
    # first cycle, the grace, the cycle that cancels (both whole: the clock runs from the first
    # one's start to the cancelling one's end), the 1 s pause and KillWait
    assert ended - cycles[0][0] <= 5 + 2 * max(seconds) + 1 + 5, (ended - cycles[0][0], seconds)
    # while Slurm ends it (KillWait: it ignores SIGTERM), the cancel is not sent again
    for _ in range(3):
        result = _sync(config, "--json")
        assert result.returncode in (0, 1), result.stdout + result.stderr
        cycles.append((0, 0, json.loads(result.stdout)["actions"]))
        time.sleep(1)
    sent = [a for c in cycles for a in c[2] if a["key"].split("/")[1] not in (
        f"{array}_1",)]
    assert [a["kind"] for a in sent] == ["signal", "cancel"], sent
    assert kite.job_state(build.job_ids[2]) == "scheduled"  # the other sibling is left alone
    assert any(t.startswith(f"{array}_2 ") for t in _ours(lab)), _ours(lab)


def test_no_slurm_variable_of_the_services_environment_reaches_a_job(
    lab: LabCluster, tmp_path: Path, shared: Path, kite: Buildkite
) -> None:
    """Slurm passes every SLURM_* variable of sbatch's environment to the job, --export=NONE
    or not: sbatch runs without the service's environment, so a SLURM_* variable of the
    service (a secret, or the SLURM_JOB_ID of a service run inside a job) reaches no job:
    neither the environment slurmctld keeps for it nor the one its processes see."""
    config = _config(lab, tmp_path, shared, kite, "rest")
    secret = f"s3cret-{uuid.uuid4().hex}"
    blocker = lab.submit("#!/bin/sh\nsleep 600\n", "--job-name=blocker", "-n4")
    lab.wait_state(blocker, "RUNNING")
    seen = shared / "job-environment"
    build = kite.add_build("app", jobs=[
        {"step_key": "env", "command": f"env > {seen}", "agent_query_rules": ["queue=slurm"]}])
    env = {**os.environ, "COLUMNS": "200", "BK_LAB_API_TOKEN": Buildkite().api_token,
           "SLURM_SYNC_LAB_SECRET": secret, "SLURM_JOB_ID": "999999", "SBATCH_SECRET": secret}
    result = subprocess.run([sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "-q"],
                            capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(_ours(lab)) == 1, _ours(lab)
    kept = _environments(lab)
    assert "SLURM_" in kept  # Slurm's own are there
    assert secret not in kept and "SLURM_SYNC_LAB_SECRET" not in kept, kept
    assert "SLURM_JOB_ID=999999" not in kept
    lab.cmd("scancel", str(blocker))
    lab.wait("the job to run", lambda: kite.job_state(build.job_ids[0]) == "passed",
             timeout=120)
    environment = seen.read_text()
    assert "SLURM_JOB_ID=" in environment  # the job's own
    assert secret not in environment and "SLURM_SYNC_LAB_SECRET" not in environment
    assert "SLURM_JOB_ID=999999" not in environment
