"""The ClusterCockpit connector end to end: real Slurm 22.05, 24.11 and 26.05, ``slurm-sync``
as cron would run it, and the cc-backend emulator (1.4.4 on 22.05, 1.5.4 with its job_cache on
the newer ones) over real HTTP.

Real jobs (two sockets, GPUs, an array, one shorter than the poll interval, failed, cancelled,
timed out, requeued) must end as exactly one record per run with the right state, times,
hwthreads, accelerators and script; faults and a ``kill -9`` in the middle of apply must lose
nothing and duplicate nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.emulators.base import Faults
from tests.emulators.ccbackend import CCBackend
from tests.lab.conftest import LabCluster, cpu_ids_of, gpu_ids_of

pytestmark = pytest.mark.lab

TOKEN = "lab-cc-token"
BUS = [f"00000000:{0x10 + i:02x}:00.0" for i in range(4)]


def _api(lab: LabCluster) -> str:
    return "1.4.4" if lab.version == "22.05" else "1.5.4"


@pytest.fixture
def backend(lab: LabCluster) -> Iterator[CCBackend]:
    clusters = {"lab": {"subclusters": {"main": [lab.node]}}}
    with CCBackend(version=_api(lab), clusters=clusters, tokens={TOKEN},
                   commit_interval=1.0) as emu:
        yield emu  # type: ignore[misc]


def _config(lab: LabCluster, tmp_path: Path, emu: CCBackend, first_window: int = 600,
            **extra: Any) -> Path:
    token = tmp_path / "cc-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "first_window_seconds": first_window,
        "retry_base_seconds": 1,
        "slurm": {"bin_dir": lab.bin_dir,
                  "state_save_location": str(lab.info["state_save_location"])},
        "connectors": {"clustercockpit": {
            "url": emu.url, "token": {"file": str(token)}, "cluster": "lab",
            "api_version": emu.version[:3], "retries": 1,
            "accelerators": {lab.node: {str(i): bus for i, bus in enumerate(BUS)}},
            **extra}},
    }))
    return config


def _sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slurm_sync.cli", "-c", str(config), *args],
        capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"},
    )


def _records(emu: CCBackend, ids: set[int]) -> list[dict[str, Any]]:
    with emu.lock:
        return [dict(j) for j in emu.all_jobs() if j["jobId"] in ids]


def _runs(emu: CCBackend, ids: set[int]) -> dict[tuple[int, int], dict[str, Any]]:
    records = _records(emu, ids)
    runs = {(r["jobId"], r["startTime"]): r for r in records}
    assert len(runs) == len(records), f"duplicate records: {records}"
    return runs


def _sacct_ended(lab: LabCluster, ids: set[int]) -> set[int]:
    """Job ids whose last run the windowed sacct query shows ended (22.05 lags a little)."""
    doc = json.loads(lab.cmd("sacct", "--json", "-X", "-a", "-S", "now-900", "-E", "now"))
    ended = set()
    for job in doc["jobs"]:
        end = job.get("time", {}).get("end")
        end = end.get("number") if isinstance(end, dict) else end
        if job["job_id"] in ids and end:
            ended.add(job["job_id"])
    return ended


def _cycle_until(lab: LabCluster, config: Path, emu: CCBackend, done: Any,
                 what: str, cycles: int = 12) -> None:
    for _ in range(cycles):
        result = _sync(config, "-q")
        assert result.returncode in (0, 1), result.stderr
        if done():
            return
        time.sleep(2)
    raise AssertionError(f"Slurm {lab.version}: {what} not reached; emulator has "
                         f"{[(j['jobId'], j['jobState']) for j in emu.all_jobs()]}")


def test_real_jobs_end_as_exactly_the_expected_records(
    lab: LabCluster, backend: CCBackend, tmp_path: Path
) -> None:
    # The first window reaches back only seconds: earlier tests' jobs (a requeued one, whose
    # second run cc-backend refuses) are not this test's business.
    config = _config(lab, tmp_path, backend, first_window=5)
    marker = "# cc-lab-script"
    long = "#!/bin/sh\n" + marker + "\nsleep 300\n"
    # The node has 4 cores: two sockets' worth, a GPU job and one to cancel fill it.
    sockets = lab.submit(long, "--job-name=sockets", "-n2")
    gpus = lab.submit(long, "--job-name=gpus", "-p", "gpu", "--gres=gpu:2")
    doomed = lab.submit(long, "--job-name=cancelme")
    for job_id in (sockets, gpus, doomed):
        lab.wait_state(job_id, "RUNNING")
    shown = {job_id: lab.show(job_id) for job_id in (sockets, gpus)}
    first = _sync(config, "--json")
    assert first.returncode == 0, first.stderr
    runs = _runs(backend, {sockets, gpus, doomed})
    assert len(runs) == 3 and all(r["jobState"] == "running" for r in runs.values())
    sock = next(r for (i, _), r in runs.items() if i == sockets)
    assert sock["resources"][0]["hwthreads"] == cpu_ids_of(shown[sockets])
    assert len({t // 2 for t in sock["resources"][0]["hwthreads"]}) == 2, "two sockets"
    assert sock["numHwthreads"] == 2 and sock["numNodes"] == 1
    gpu = next(r for (i, _), r in runs.items() if i == gpus)
    assert gpu["resources"][0]["accelerators"] == [BUS[i] for i in gpu_ids_of(shown[gpus])]
    assert gpu["numAcc"] == 2
    assert marker in gpu["metaData"]["jobScript"]

    # Jobs shorter than the poll interval, between two cycles; a cancelled one.
    lab.cmd("scancel", str(doomed), str(sockets))
    short = lab.submit("#!/bin/sh\n" + marker + "\nexit 0\n", "--job-name=short")
    failed = lab.submit("#!/bin/sh\nexit 3\n", "--job-name=failed")
    array = lab.submit("#!/bin/sh\n" + marker + "\nexit 0\n", "--job-name=array",
                       "--array=0-1")
    lab.wait("short jobs and the array to end", lambda: not lab.cmd(
        "squeue", "-h", "-o", "%i", "-j", f"{short},{failed},{array}").strip())
    # A requeued job (made eligible again at once) and one that runs out of time.
    requeued = lab.submit(long, "--job-name=requeue", "--requeue")
    timeout = lab.submit("#!/bin/sh\nsleep 300\n", "--job-name=timeout", "--time=1")
    for job_id in (requeued, timeout):
        lab.wait_state(job_id, "RUNNING")
    assert _sync(config, "-q").returncode == 0
    old_start = next(s for (i, s) in _runs(backend, {requeued}) if i == requeued)
    lab.requeue(requeued)
    lab.wait_state(requeued, "RUNNING")
    lab.wait_state(timeout, "TIMEOUT", timeout=150)
    lab.cmd("scancel", str(gpus), str(requeued))
    everything = {sockets, gpus, doomed, requeued, timeout, short, failed}
    lab.wait("sacct to show every end", lambda: _sacct_ended(lab, everything) == everything)
    _cycle_until(lab, config, backend, lambda: len(_records(backend, everything)) == 7 and all(
        r["jobState"] != "running" for r in _records(backend, everything | {array})),
        "every record stopped")

    runs = _runs(backend, everything)
    by_id: dict[int, list[dict[str, Any]]] = {}
    for (job_id, _), record in sorted(runs.items()):
        by_id.setdefault(job_id, []).append(record)
    # cc-backend refuses a second run of a job id within 24 h (422, its duplicate rule), so
    # the requeued job keeps one record: its first run, closed as cancelled; the second run's
    # refusal is recorded and shown by status, not retried.
    assert {i: len(v) for i, v in by_id.items()} == {
        sockets: 1, gpus: 1, doomed: 1, timeout: 1, short: 1, failed: 1, requeued: 1}
    states = {i: v[-1]["jobState"] for i, v in by_id.items()}
    assert states[short] == "completed" and states[failed] == "failed"
    assert states[doomed] == "cancelled" and states[timeout] == "timeout"
    (old,) = by_id[requeued]
    assert old["startTime"] == old_start and old["jobState"] == "cancelled"
    status = _sync(config, "status")
    assert status.returncode == 0, status.stderr
    assert f"/{requeued}/" in status.stdout and "24 h" in status.stdout
    assert by_id[short][0]["duration"] >= 0
    # ended before the cycle, but still in squeue (MinJobAge): its cores are known
    assert by_id[short][0]["resources"][0].get("hwthreads"), by_id[short][0]
    assert marker in by_id[short][0]["metaData"]["jobScript"]
    tasks = [r for r in backend.all_jobs() if r.get("arrayJobId") == array]
    assert len(tasks) == 2 and all(marker in t["metaData"]["jobScript"] for t in tasks)
    assert all(t["jobState"] == "completed" for t in tasks)

    # and nothing more happens on the next run
    before = (backend.count("POST", "/api/jobs/start_job/"),
              backend.count("POST", "/api/jobs/stop_job/"))
    assert _sync(config, "-q").returncode == 0
    assert (backend.count("POST", "/api/jobs/start_job/"),
            backend.count("POST", "/api/jobs/stop_job/")) == before


def _short_jobs(lab: LabCluster, count: int) -> set[int]:
    ids = {lab.submit("#!/bin/sh\nexit 0\n", f"--job-name=k{i}") for i in range(count)}
    lab.wait("the short jobs to end", lambda: _sacct_ended(lab, ids) == ids, timeout=120)
    return ids


def test_faults_and_kill_9_mid_apply_lose_and_duplicate_nothing(
    lab: LabCluster, backend: CCBackend, tmp_path: Path
) -> None:
    ids = _short_jobs(lab, 8)
    config = _config(lab, tmp_path, backend)
    # a slow service, and the run killed after its first few requests landed
    backend.faults = Faults(latency=0.4)
    proc = subprocess.Popen([sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "-q"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while backend.count("POST", "/api/jobs/start_job/") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL  # it died in the middle of apply
    with backend.lock:
        landed = len(backend.all_jobs())
    assert landed >= 3
    assert not all(r["jobState"] == "completed" for r in _records(backend, ids)) or len(
        _records(backend, ids)) < len(ids)
    # then a flaky service for a cycle, then a healthy one
    backend.faults = Faults(error_share=0.5, seed=3)
    assert _sync(config, "-q").returncode in (0, 1)
    backend.faults = Faults()
    config_data = json.loads(config.read_text())
    _cycle_until(lab, config, backend, lambda: len(_records(backend, ids)) == len(ids) and all(
        r["jobState"] == "completed" for r in _records(backend, ids)), "all delivered",
        cycles=8)
    runs = _runs(backend, ids)  # asserts no duplicate
    assert {i for i, _ in runs} == ids
    with backend.lock:
        everything = [(j["jobId"], j["startTime"]) for j in backend.all_jobs()]
    assert len(everything) == len(set(everything)), "a record was duplicated"
    assert config_data["connectors"]["clustercockpit"]["cluster"] == "lab"
    status = _sync(config, "status")
    assert status.returncode == 0, status.stderr
    cells = next([c.strip() for c in line.split("│") if c.strip()]
                 for line in status.stdout.splitlines() if "clustercockpit" in line)
    assert cells[2] == "0", status.stdout  # nothing left in the outbox
