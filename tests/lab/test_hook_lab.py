"""slurmctld's hook wakes a resident syncer (issue 15), on real Slurm 22.05, 24.11 and 26.05.

The lab's slurm.conf runs contrib/slurm-sync-hook as PrologSlurmctld and EpilogSlurmctld
(lab/slurm-lab, its SPOOL the lab's ``hook_spool``). A ``slurm-sync run --loop`` with a regular
interval of an hour syncs a job's start and end within seconds of each, so only the events can
have driven it; a syncer killed while events arrive loses nothing (the spool keeps them).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.lab.conftest import LabCluster

pytestmark = pytest.mark.lab


def _config(lab: LabCluster, tmp_path: Path) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "first_window_seconds": 300,
        "hook_spool": lab.info["hook_spool"],
        "slurm": {"bin_dir": lab.bin_dir},
        "connectors": {"events": {"output": str(tmp_path / "events.jsonl")}},
    }))
    return config


def _resident(config: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """``run --loop 3600``, once its first (regular) cycle is recorded."""
    log = (tmp_path / "syncer.log").open("a")
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "-q", "run", "--loop",
         "3600"], stdout=log, stderr=log, text=True)
    deadline = time.monotonic() + 120
    db = tmp_path / "state" / "state.db"
    while time.monotonic() < deadline and proc.poll() is None:
        if db.exists():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                try:
                    if conn.execute("SELECT count(*) FROM runs").fetchone()[0] >= 1:
                        return proc
                except sqlite3.OperationalError:
                    pass
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"the resident syncer did not record a cycle: "
                         f"{(tmp_path / 'syncer.log').read_text()[-2000:]}")


def _events(tmp_path: Path) -> dict[tuple[int, str], float]:
    """(job id, event) -> when the line was first seen by this test."""
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return {}
    return {(e["job_id"], e["event"]): 0.0
            for e in map(json.loads, path.read_text().splitlines())}


def _wait_for(lab: LabCluster, tmp_path: Path, wanted: set[tuple[int, str]],
              timeout: float = 60) -> float:
    began = time.monotonic()
    lab.wait(f"events {sorted(wanted)}", lambda: wanted <= set(_events(tmp_path)), timeout)
    return time.monotonic() - began


def _clear_spool(lab: LabCluster) -> None:
    spool = Path(lab.info["hook_spool"])
    for name in os.listdir(spool):
        (spool / name).unlink()


def _check(config: Path) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "check",
                           "--json"], capture_output=True, text=True, timeout=120)
    return {c["check"].split(" (")[0]: c["problem"] for c in json.loads(done.stdout)["checks"]
            if c["check"].startswith("hook")}


def test_the_hook_syncs_a_jobs_start_and_end_within_seconds(lab: LabCluster,
                                                           tmp_path: Path) -> None:
    _clear_spool(lab)
    config = _config(lab, tmp_path)
    before = _check(config)
    assert before["hook in slurm.conf"] == "" and "no hook event" in before["hook events"]
    proc = _resident(config, tmp_path)
    try:
        job = lab.submit("#!/bin/sh\nsleep 4\n", "--job-name=hooked")
        started = _wait_for(lab, tmp_path, {(job, "started")}, timeout=30)
        lab.wait_state(job, "COMPLETED")
        ended = _wait_for(lab, tmp_path, {(job, "finished")}, timeout=30)
        # the regular cycle comes once an hour: only the hook's events can have woken it
        assert started < 30 and ended < 30
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0, (tmp_path / "syncer.log").read_text()[-2000:]
    lines = (tmp_path / "events.jsonl").read_text().splitlines()
    assert [e["event"] for e in map(json.loads, lines) if e["job_id"] == job] == [
        "started", "finished"]
    assert not [n for n in os.listdir(lab.info["hook_spool"]) if n.endswith(f".{job}")], \
        "the events acted on are still in the spool"
    assert set(_check(config).values()) == {""}, _check(config)


def test_events_that_arrive_while_the_syncer_is_down_are_synced_when_it_is_back(
    lab: LabCluster, tmp_path: Path
) -> None:
    _clear_spool(lab)
    config = _config(lab, tmp_path)
    proc = _resident(config, tmp_path)
    proc.kill()  # kill -9: whatever it was doing
    proc.wait(timeout=30)
    jobs = [lab.submit("#!/bin/sh\nsleep 2\n", "--job-name=while-down") for _ in range(3)]
    for job in jobs:
        lab.wait_state(job, "COMPLETED")
    spool = set(os.listdir(lab.info["hook_spool"]))
    assert {f"{e}.{j}" for j in jobs for e in ("start", "end")} <= spool
    proc = _resident(config, tmp_path)  # its first cycle is the regular one: it takes them all
    try:
        _wait_for(lab, tmp_path, {(j, e) for j in jobs for e in ("started", "finished")})
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    left = set(os.listdir(lab.info["hook_spool"]))
    assert not {f"{e}.{j}" for j in jobs for e in ("start", "end")} & left


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "slurm_sync.cli", "-c", str(config), *args],
                          capture_output=True, text=True, timeout=300)


def test_without_a_resident_syncer_status_says_events_wait_and_a_cron_run_takes_them(
    lab: LabCluster, tmp_path: Path
) -> None:
    _clear_spool(lab)
    config = _config(lab, tmp_path)
    job = lab.submit("#!/bin/sh\nsleep 1\n", "--job-name=no-resident")
    lab.wait_state(job, "COMPLETED")
    spool = Path(lab.info["hook_spool"])
    names = {f"start.{job}", f"end.{job}"}
    assert names <= set(os.listdir(spool))
    old = time.time() - 300  # as if recorded five minutes ago
    for name in names:
        os.utime(spool / name, (old, old))
    status = _cli(config, "status", "--json")
    hook = json.loads(status.stdout)["hook"]
    assert hook["waiting"] == 2 and "no syncer is taking them" in hook["behind"], hook
    # a dry run and a run for one job leave them (they did not do what every event asks)
    assert _cli(config, "-q", "run", "--dry-run").returncode == 0
    assert _cli(config, "-q", "run", "-j", "1").returncode == 0
    assert names <= set(os.listdir(spool))
    done = _cli(config, "-q", "run")  # cron's run
    assert done.returncode == 0, done.stderr
    assert not names & set(os.listdir(spool))
    assert {(job, "started"), (job, "finished")} <= set(_events(tmp_path))
    hook = json.loads(_cli(config, "status", "--json").stdout)["hook"]
    assert (hook["waiting"], hook["behind"]) == (0, "")


def test_sighup_reloads_the_config_and_a_broken_one_is_refused(lab: LabCluster,
                                                                tmp_path: Path) -> None:
    """SIGHUP reads config.json again between cycles: a broken file is reported and the
    running config kept; a good one takes over (here: the events go to another file)."""
    _clear_spool(lab)
    config = _config(lab, tmp_path)
    good = json.loads(config.read_text())
    proc = _resident(config, tmp_path)
    try:
        config.write_text("{ not json")
        proc.send_signal(signal.SIGHUP)
        lab.wait("the refusal in the log", lambda: "config not reloaded" in (
            tmp_path / "syncer.log").read_text(), timeout=30)
        first = lab.submit("#!/bin/sh\nsleep 1\n", "--job-name=before-reload")
        _wait_for(lab, tmp_path, {(first, "started")}, timeout=30)
        moved = tmp_path / "moved.jsonl"
        config.write_text(json.dumps({**good, "connectors": {"events": {"output": str(moved)}}}))
        proc.send_signal(signal.SIGHUP)
        lab.wait("the reload in the log", lambda: "config reloaded" in (
            tmp_path / "syncer.log").read_text(), timeout=30)
        second = lab.submit("#!/bin/sh\nsleep 1\n", "--job-name=after-reload")
        lab.wait("the second job in the new events file", lambda: moved.exists() and any(
            json.loads(line)["job_id"] == second for line in moved.read_text().splitlines()),
            timeout=30)
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    assert code == 0


@pytest.mark.parametrize("fault", ["missing", "not writable", "full"])
def test_jobs_run_when_the_spool_is_missing_not_writable_or_full(lab: LabCluster,
                                                                 tmp_path: Path,
                                                                 fault: str) -> None:
    """The hook runs for every job as PrologSlurmctld: whatever is wrong with its spool, it
    exits 0 and the job runs (a failing PrologSlurmctld would hold or requeue it). Full: a
    tmpfs of one inode mounted over the spool, so that creating a file fails (ENOSPC)."""
    spool = Path(lab.info["hook_spool"])
    _clear_spool(lab)
    stat = spool.stat()
    aside = spool.with_name("hook-spool.aside")
    mounted = False
    try:
        if fault == "missing":
            spool.rename(aside)
        elif fault == "not writable":
            spool.chmod(0o500)  # its owner, SlurmUser, may no longer write there
        else:
            done = subprocess.run(["mount", "-t", "tmpfs", "-o",
                                   f"size=64k,nr_inodes=1,mode=0770,uid={stat.st_uid}",
                                   "hook-full", str(spool)], capture_output=True, text=True)
            if done.returncode != 0 and "not permitted" in done.stderr:
                pytest.skip(f"this machine lets root mount no tmpfs: {done.stderr.strip()}")
            assert done.returncode == 0, done.stderr
            mounted = True
            with pytest.raises(OSError, match="No space left"):
                (spool / "start.1").write_text("")
        job = lab.submit("#!/bin/sh\nexit 0\n", "--job-name=no-spool")
        lab.wait_state(job, "COMPLETED")
    finally:
        if mounted:
            subprocess.run(["umount", str(spool)], check=True)
        if fault == "missing":
            aside.rename(spool)
        spool.chmod(stat.st_mode & 0o7777)
    assert not os.listdir(spool)


def test_events_wait_while_another_run_holds_the_lock(lab: LabCluster, tmp_path: Path) -> None:
    """A cron or hand-run cycle holding the lock: the resident loop tries again each second
    (not in a tight loop) and syncs the job once the lock is free."""
    from slurm_sync.engine import RunLock

    _clear_spool(lab)
    proc = _resident(_config(lab, tmp_path), tmp_path)
    try:
        with RunLock(str(tmp_path / "state")):
            job = lab.submit("#!/bin/sh\nsleep 2\n", "--job-name=locked-out")
            lab.wait("its start event", lambda: f"start.{job}" in os.listdir(
                lab.info["hook_spool"]), timeout=30)
            time.sleep(4)
            assert (job, "started") not in _events(tmp_path)
        _wait_for(lab, tmp_path, {(job, "started")}, timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    skipped = (tmp_path / "syncer.log").read_text().count("skipped a cycle")
    assert 1 <= skipped <= 10, skipped


@pytest.mark.parametrize("seed", [15])
def test_a_resident_syncer_killed_while_events_arrive_loses_and_invents_nothing(
    lab: LabCluster, tmp_path: Path, seed: int
) -> None:
    """Short jobs start and end while the resident loop is killed (kill -9) at seeded moments
    and started again, with cc-backend failing some requests: every job ends as exactly one
    record, completed, in the cc-backend emulator, and as its started and finished events in
    the sink (a line written just before a kill may be written again: same key and event);
    nothing names a job that did not run."""
    from tests.emulators.base import Faults
    from tests.emulators.ccbackend import CCBackend

    rng = random.Random(seed)
    _clear_spool(lab)
    token = tmp_path / "cc-token"
    token.write_text("hook-token\n")
    token.chmod(0o600)
    with CCBackend(version="1.5.4", clusters={"lab": {"subclusters": {"main": [lab.node]}}},
                   tokens={"hook-token"}, faults=Faults(error_share=0.15, seed=seed)) as emu:
        config = _config(lab, tmp_path)
        settings = json.loads(config.read_text())
        settings["retry_base_seconds"] = 1
        settings["connectors"]["clustercockpit"] = {
            "url": emu.url, "token": {"file": str(token)}, "cluster": "lab", "retries": 0}
        config.write_text(json.dumps(settings))
        plan = sorted([(rng.uniform(0, 12), "submit") for _ in range(10)]
                      + [(rng.uniform(1, 14), "kill") for _ in range(3)])
        jobs: list[int] = []
        kills = 0
        proc = _resident(config, tmp_path)
        began = time.monotonic()
        try:
            for at, what in plan:
                time.sleep(max(0.0, at - (time.monotonic() - began)))
                if what == "submit":
                    jobs.append(lab.submit(f"#!/bin/sh\nsleep {rng.choice([1, 2, 4])}\n",
                                           "--job-name=killed-resident"))
                else:
                    proc.kill()
                    proc.wait(timeout=30)
                    kills += 1
                    time.sleep(rng.uniform(0, 2))
                    proc = _resident(config, tmp_path)
            for job in jobs:
                lab.wait_state(job, "COMPLETED")
            wanted = {(j, e) for j in jobs for e in ("started", "finished")}
            lab.wait("every job in the sink", lambda: wanted <= set(_events(tmp_path)), 90)
            try:
                lab.wait("every job stopped in cc-backend", lambda: sorted(
                    (r["jobId"], r["jobState"]) for r in _ours(emu, jobs)) == sorted(
                    (j, "completed") for j in jobs), 90)
            except AssertionError:
                status = json.loads(_cli(config, "status", "--json").stdout)
                raise AssertionError(f"{[(r['jobId'], r['jobState']) for r in _ours(emu, jobs)]}"
                                     f" for {jobs}; status: {status['connectors']}") from None
            assert proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        assert code == 0, (tmp_path / "syncer.log").read_text()[-2000:]
        assert kills == 3 and emu.count("POST", "/api/jobs/start_job/") >= len(jobs)
        records = _ours(emu, jobs)  # the first (regular) cycle also syncs earlier tests' jobs
        assert len(records) == len(jobs) == len({r["jobId"] for r in records})
        shown = {j: lab.show(j) for j in jobs}
        for record in records:
            assert f"StartTime={_local(record['startTime'])}" in shown[record["jobId"]]
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    lines = [line for line in lines if line["job_id"] >= min(jobs)]  # not earlier tests' jobs
    assert {line["job_id"] for line in lines} == set(jobs)  # none invented
    by_pair: dict[tuple[int, str], set[str]] = {}
    for line in lines:
        by_pair.setdefault((line["job_id"], line["event"]), set()).add(line["key"])
    assert all(len(keys) == 1 for keys in by_pair.values()), by_pair  # a repeat is the same run


@contextlib.contextmanager
def _resident_against_cc(lab: LabCluster, tmp_path: Path) -> Iterator[_AgainstCC]:
    """The resident loop with the clustercockpit connector alone (retrying after 2 s), against
    a cc-backend emulator whose faults the test sets; stopped by SIGTERM at the end, when it
    must exit 0."""
    from tests.emulators.base import Faults
    from tests.emulators.ccbackend import CCBackend

    _clear_spool(lab)
    token = tmp_path / "cc-token"
    token.write_text("hook-token\n")
    token.chmod(0o600)
    faults = Faults()
    with CCBackend(version="1.5.4", clusters={"lab": {"subclusters": {"main": [lab.node]}}},
                   tokens={"hook-token"}, faults=faults) as emu:
        config = _config(lab, tmp_path)
        settings = json.loads(config.read_text())
        settings.update(retry_base_seconds=2, first_window_seconds=60)
        settings["connectors"] = {"clustercockpit": {
            "url": emu.url, "token": {"file": str(token)}, "cluster": "lab", "retries": 0,
            "api_version": "1.5"}}
        config.write_text(json.dumps(settings))
        proc = _resident(config, tmp_path)
        try:
            yield _AgainstCC(emu, faults, config, proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        assert code == 0, (tmp_path / "syncer.log").read_text()[-2000:]


class _AgainstCC(NamedTuple):
    emu: Any
    faults: Any
    config: Path
    proc: subprocess.Popen[str]


def test_an_action_a_service_refused_is_sent_again_when_due_not_at_the_next_interval(
    lab: LabCluster, tmp_path: Path
) -> None:
    """cc-backend answers 500 to everything while a job's start event is acted on: the start
    waits in the outbox. Once the service is back, the resident loop sends it when its retry
    is due (seconds here), not at the regular cycle an hour later."""
    with _resident_against_cc(lab, tmp_path) as (emu, faults, config, proc):
        faults.error_share = 1.0
        job = lab.submit("#!/bin/sh\nsleep 30\n", "--job-name=refused-once")
        try:
            lab.wait("its start in the outbox", lambda: json.loads(_cli(
                config, "status", "--json").stdout)["connectors"][0]["outbox"] >= 1, 60)
            faults.error_share = 0.0
            lab.wait("its record in cc-backend", lambda: bool(_ours(emu, [job])), 30)
            assert proc.poll() is None
        finally:
            lab.cmd("scancel", str(job))


def test_a_start_sent_late_from_the_outbox_is_followed_by_its_stop_at_once(
    lab: LabCluster, tmp_path: Path
) -> None:
    """cc-backend answers 500 while a short job starts and ends: its start waits in the
    outbox past the job's end, and the end event finds no run to stop. Once the start is
    sent, the job's stop follows within seconds, not at the regular cycle an hour later
    (a job left running in cc-backend, seen once under kills and faults in make test)."""
    spool = Path(lab.info["hook_spool"])
    with _resident_against_cc(lab, tmp_path) as (emu, faults, config, proc):
        faults.error_share = 1.0
        job = lab.submit("#!/bin/sh\nsleep 1\n", "--job-name=late-start")
        lab.wait_state(job, "COMPLETED")
        lab.wait("its end event taken", lambda: os.listdir(spool) == [], 60)
        status = json.loads(_cli(config, "status", "--json").stdout)["connectors"][0]
        assert status["outbox"] == 1 and not _ours(emu, [job]), status
        faults.error_share = 0.0
        lab.wait("its start in cc-backend", lambda: bool(_ours(emu, [job])), 60)
        lab.wait("its stop in cc-backend", lambda: [r["jobState"] for r in _ours(
            emu, [job])] == ["completed"], 20)
        assert proc.poll() is None


def _ours(emu: Any, jobs: list[int]) -> list[dict[str, Any]]:
    with emu.lock:
        return [dict(r) for r in emu.all_jobs() if r["jobId"] in jobs]


def _local(epoch: int) -> str:
    """scontrol's way of writing a time: local, to the second."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(epoch))
