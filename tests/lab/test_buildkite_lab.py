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
    return subprocess.run([sys.executable, "-m", "sync.cli", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=300, env=env)


def _environments(lab: LabCluster) -> str:
    """The environment files slurmctld keeps for our pending jobs."""
    root = Path(lab.info["state_save_location"])
    ids = set(lab.cmd("squeue", "-h", "-n", "buildkite", "-o", "%F").split())
    return "".join((root / f"hash.{int(i) % 10}" / f"job.{i}" / "environment")
                   .read_bytes().decode(errors="replace") for i in ids)


def _logs(shared: Path, job: str) -> str:
    """The Slurm output of the job that ran Buildkite job ``job`` (for a failure message)."""
    texts = [p.read_text(errors="replace") for p in sorted((shared / "logs").iterdir())]
    return "\n".join(t[-3000:] for t in texts if job in t)


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
    outcomes = {a_["key"].split("#")[0]: a_ for a_ in report["actions"]}
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
    assert list((shared / "builds").iterdir()) == []  # each job's build path was removed
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
