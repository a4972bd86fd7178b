"""``slurm-sync`` cycles with the events connector against real Slurm 22.05, 24.11 and 26.05."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.engine import RunLock
from tests.lab.conftest import LabCluster

pytestmark = pytest.mark.lab


def _config(lab: LabCluster, tmp_path: Path, **slurm: Any) -> Path:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(tmp_path / "state"),
        "first_window_seconds": 300,
        "slurm": {"bin_dir": lab.bin_dir, **slurm},
        "connectors": {"events": {"output": str(tmp_path / "events.jsonl")}},
    }))
    return config


def _sync(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slurm_sync.cli", "-c", str(config), *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "200"},
    )


def _events(tmp_path: Path, job_ids: set[int]) -> list[tuple[int, str]]:
    path = tmp_path / "events.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [(e["job_id"], e["event"]) for e in lines if e["job_id"] in job_ids]


def test_short_jobs_are_caught_once_and_dry_run_changes_nothing(
    lab: LabCluster, tmp_path: Path
) -> None:
    config = _config(lab, tmp_path)
    short = lab.submit("#!/bin/sh\nexit 0\n", "--job-name=short")
    failing = lab.submit("#!/bin/sh\nexit 3\n", "--job-name=fails")
    for job_id in (short, failing):
        lab.wait_state(job_id, "COMPLETED", "FAILED")
    ids = {short, failing}
    # Wait on the windowed query the syncer makes: on 22.05 it sees a just-ended job a few
    # seconds after a -j query does (the syncer's overlapping windows catch it next cycle).
    lab.wait("sacct's window to show both jobs ended", lambda: len([
        j for j in json.loads(lab.cmd("sacct", "--json", "-X", "-a", "-S", "now-300",
                                      "-E", "now"))["jobs"]
        if j["job_id"] in ids and j.get("time", {}).get("end")]) == 2)

    dry = _sync(config, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = {(a["key"].split("/")[1], a["kind"]) for a in json.loads(dry.stdout)["actions"]}
    assert {(str(i), k) for i in ids for k in ("start", "stop")} <= planned
    assert not (tmp_path / "events.jsonl").exists()
    assert not (tmp_path / "state").exists()

    first = _sync(config, "--json")
    assert first.returncode == 0, first.stderr
    assert sorted(_events(tmp_path, ids)) == sorted(
        (i, e) for i in ids for e in ("started", "finished"))
    finished = {json.loads(line)["job_id"]: json.loads(line)
                for line in (tmp_path / "events.jsonl").read_text().splitlines()
                if json.loads(line)["event"] == "finished"}
    assert finished[failing]["state"] == "FAILED"
    assert finished[short]["state"] == "COMPLETED"

    again = _sync(config, "--json")
    assert again.returncode == 0, again.stderr
    assert len(_events(tmp_path, ids)) == 4, "a second run must not write the events again"

    status = _sync(config, "status")
    assert status.returncode == 0 and "events" in status.stdout, status.stderr


def test_a_second_run_during_the_first_exits_75(lab: LabCluster, tmp_path: Path) -> None:
    config = _config(lab, tmp_path)
    with RunLock(str(tmp_path / "state")):
        blocked = _sync(config)
    assert blocked.returncode == 75, blocked.stderr
    assert "holds" in blocked.stderr


def test_failing_slurm_plans_no_stop(lab: LabCluster, tmp_path: Path) -> None:
    job_id = lab.submit("#!/bin/sh\nexit 0\n", "--job-name=quick")
    lab.wait_state(job_id, "COMPLETED")
    broken = tmp_path / "bin"
    broken.mkdir()
    for name in ("squeue", "sacct"):
        (broken / name).write_text("#!/bin/sh\necho 'slurm_load_jobs error: Unable to contact "
                                   "slurm controller' >&2\nexit 1\n")
        (broken / name).chmod(0o755)
    config = _config(lab, tmp_path, commands={"squeue": str(broken / "squeue"),
                                               "sacct": str(broken / "sacct")})
    result = _sync(config, "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Unable to contact slurm controller" in result.stderr
    assert _events(tmp_path, {job_id}) == []


def test_bad_config_exits_2_naming_the_key(lab: LabCluster, tmp_path: Path) -> None:
    config = _config(lab, tmp_path)
    data = json.loads(config.read_text())
    data["connectors"]["events"]["outptu"] = "/tmp/x"
    config.write_text(json.dumps(data))
    result = _sync(config)
    assert result.returncode == 2
    assert "$.connectors.events.outptu: unknown key 'outptu'" in result.stderr
    assert "did you mean 'output'?" in result.stderr
    assert not (tmp_path / "state").exists()


def test_quiet_for_cron_and_every_slurm_call_logged_with_vv(
    lab: LabCluster, tmp_path: Path
) -> None:
    config = _config(lab, tmp_path)
    data = json.loads(config.read_text())
    config.write_text(json.dumps({**data, "log_format": "json"}))
    quiet = _sync(config, "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    loud = _sync(config, "-vv")
    calls = [json.loads(line) for line in loud.stderr.splitlines()
             if json.loads(line)["message"] == "slurm call"]
    commands = [c["argv"].split()[0].rsplit("/", 1)[-1] for c in calls]
    # One squeue listing and one sacct window per cycle, never one call per job: at most one
    # squeue of full records (by job id, for runs not yet synced; with squeue --version), and
    # scontrol once for the cluster's name. At most two more sacct calls, each for many jobs:
    # the lookup of tracked runs outside the window, and on 21.08-23.02 the exit codes Slurm's
    # JSON lost (earlier tests' jobs).
    assert 1 <= commands.count("sacct") <= 3, [c["argv"] for c in calls]
    assert 1 <= commands.count("squeue") <= 3 and commands.count("scontrol") <= 1
    full = [c["argv"] for c in calls if "--json" in c["argv"] and "squeue" in c["argv"]]
    assert len(full) <= 1 and all("--jobs=" in argv for argv in full), full
    assert all(c["exit-code"] == 0 for c in calls)


def test_metrics_file_for_node_exporter(lab: LabCluster, tmp_path: Path) -> None:
    config = _config(lab, tmp_path)
    data = json.loads(config.read_text())
    metrics = tmp_path / "slurm_sync.prom"
    config.write_text(json.dumps({**data, "metrics_file": str(metrics)}))
    job_id = lab.submit("#!/bin/sh\nexit 0\n", "--job-name=metrics")
    lab.wait_state(job_id, "COMPLETED")
    lab.wait("sacct to record it", lambda: '"end"' in lab.cmd(
        "sacct", "--json", "-X", "-a", "-j", str(job_id)))
    assert _sync(config, "-q").returncode == 0
    text = metrics.read_text()
    values = {line.split()[0]: float(line.split()[1])
              for line in text.splitlines() if line and not line.startswith("#")}
    assert values["slurm_sync_last_run_exit_code"] == 0
    assert values['slurm_sync_actions{connector="events",outcome="done"}'] >= 2
    assert values['slurm_sync_outbox_depth{connector="events"}'] == 0
    assert 'slurm_sync_slurm_call_seconds{command="sacct"}' in values
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".slurm_sync.")]


def test_loop_runs_cycles_until_interrupted(lab: LabCluster, tmp_path: Path) -> None:
    import signal
    import sqlite3
    import time

    config = _config(lab, tmp_path)
    config.write_text(json.dumps({**json.loads(config.read_text()), "log_format": "json"}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "--loop", "1", "-vv"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    # two cycles recorded (a loaded machine may take seconds for one), then the interrupt
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        db = tmp_path / "state" / "state.db"
        if db.exists():
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                try:
                    if conn.execute("SELECT count(*) FROM runs").fetchone()[0] >= 2:
                        break
                except sqlite3.OperationalError:
                    pass  # not created yet
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    sacct_calls = [line for line in stderr.splitlines() if '"message": "slurm call"' in line
                   and "/sacct " in line]
    assert len(sacct_calls) >= 2, "the loop ran one cycle only"
    assert "last run" in _sync(config, "status").stdout


def test_check_says_what_is_wrong(lab: LabCluster, tmp_path: Path) -> None:
    config = _config(lab, tmp_path, state_save_location=lab.info["state_save_location"])
    good = _sync(config, "check")
    assert good.returncode == 0, good.stdout + good.stderr
    assert f"Slurm {lab.info['release']}" in good.stdout
    data = json.loads(config.read_text())
    data["connectors"]["events"]["output"] = str(tmp_path / "missing" / "events.jsonl")
    config.write_text(json.dumps(data))
    bad = _sync(config, "check")
    assert bad.returncode == 1
    assert "missing does not exist" in bad.stdout
    assert not (tmp_path / "state").exists(), "check must change nothing"


def test_a_syncer_stopped_for_a_while_catches_up_from_its_watermark(
    lab: LabCluster, tmp_path: Path
) -> None:
    """Jobs that ran and ended while no syncer ran are caught by the next run, whose window
    starts at the last run's watermark, however long ago: not at first_window_seconds."""
    config = _config(lab, tmp_path)
    data = json.loads(config.read_text())
    data["first_window_seconds"] = 20
    data["sacct_overlap_seconds"] = 5
    config.write_text(json.dumps(data))
    assert _sync(config, "-q").returncode == 0  # the watermark is now
    # the syncer is down; jobs come and go
    ids = {lab.submit("#!/bin/sh\nexit 0\n", f"--job-name=away{i}") for i in range(3)}
    lab.wait("the jobs to end", lambda: all(lab.state(i) == "COMPLETED" for i in ids))
    ended = time.monotonic()
    lab.wait("sacct's window to show the jobs ended", lambda: len([
        j for j in json.loads(lab.cmd("sacct", "--json", "-X", "-a", "-S", "now-300",
                                      "-E", "now"))["jobs"]
        if j["job_id"] in ids and j.get("time", {}).get("end")]) == len(ids))
    # longer than first_window_seconds and the overlap: only the watermark can reach them
    time.sleep(max(0.0, 30 - (time.monotonic() - ended)))
    assert _sync(config, "-q").returncode == 0
    assert sorted(_events(tmp_path, ids)) == sorted(
        (i, e) for i in ids for e in ("started", "finished"))
