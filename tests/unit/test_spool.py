"""slurmctld's hook (contrib/slurm-sync-hook) and the spool the resident syncer reads (issue 15).

The hook runs for every job on the controller: whatever goes wrong, it exits 0 (a failing
PrologSlurmctld holds or requeues the job) and the job's event is at worst dropped, for the
regular cycle to catch up. Each shell a controller may have as /bin/sh runs it here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from slurm_sync.spool import Backlog, Spool, event_of

HOOK = Path(__file__).resolve().parents[2] / "contrib" / "slurm-sync-hook"
SHELLS = [s for s in ("dash", "bash", "busybox") if shutil.which(s)]


def _hook(tmp_path: Path, spool: Path) -> Path:
    """The shipped hook with its SPOOL line pointing at ``spool`` (as an admin edits it)."""
    text = HOOK.read_text()
    assert "\nSPOOL=/var/spool/slurm-sync/events\n" in text
    copy = tmp_path / "slurm-sync-hook"
    copy.write_text(text.replace("\nSPOOL=/var/spool/slurm-sync/events\n", f"\nSPOOL={spool}\n"))
    copy.chmod(0o755)
    return copy


def _run(shell: str, hook: Path, **env: str) -> subprocess.CompletedProcess[str]:
    argv = [shell, "sh", str(hook)] if shell == "busybox" else [shell, str(hook)]
    return subprocess.run(argv, env={"PATH": "/usr/bin:/bin", **env}, capture_output=True,
                          text=True, check=False, timeout=10)


@pytest.mark.parametrize("shell", SHELLS)
def test_the_hook_records_a_start_and_an_end_as_one_file_each(tmp_path: Path, shell: str) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    hook = _hook(tmp_path, spool)
    for context in ("prolog_slurmctld", "epilog_slurmctld", "prolog_slurmctld"):
        done = _run(shell, hook, SLURM_SCRIPT_CONTEXT=context, SLURM_JOB_ID="4242")
        assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    assert sorted(os.listdir(spool)) == ["end.4242", "start.4242"]  # the second start coalesced
    assert all((spool / name).stat().st_size == 0 for name in os.listdir(spool))


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize("case", ["missing", "a file", "read-only", "no context", "other context",
                                  "no job id", "job id not a number"])
def test_the_hook_exits_0_and_says_nothing_whatever_is_wrong(tmp_path: Path, shell: str,
                                                             case: str) -> None:
    if case == "read-only" and os.geteuid() == 0:
        # root writes anywhere: the hook runs as nobody, in a folder nobody may read
        tmp_path = Path(tempfile.mkdtemp(prefix="slurm-sync-hook-"))
        tmp_path.chmod(0o755)
    spool = tmp_path / "spool"
    if case == "a file":
        spool.write_text("")
    elif case != "missing":
        spool.mkdir()
    if case == "read-only":
        spool.chmod(0o500)
    env = {"SLURM_SCRIPT_CONTEXT": "epilog_slurmctld", "SLURM_JOB_ID": "7"}
    if case == "no context":
        del env["SLURM_SCRIPT_CONTEXT"]
    elif case == "other context":
        env["SLURM_SCRIPT_CONTEXT"] = "prolog_slurmd"
    elif case == "no job id":
        del env["SLURM_JOB_ID"]
    elif case == "job id not a number":
        env["SLURM_JOB_ID"] = "7;rm -rf /"
    hook = _hook(tmp_path, spool)
    if case == "read-only" and os.geteuid() == 0:
        argv_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        if not shutil.which("setpriv"):
            pytest.skip("no setpriv to drop root")
        done = subprocess.run([*argv_user, shell, str(hook)], env={"PATH": "/usr/bin:/bin", **env},
                              capture_output=True, text=True, check=False, timeout=10)
    else:
        done = _run(shell, hook, **env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    if spool.is_dir():
        assert os.listdir(spool) == []


def test_pending_coalesces_per_job_and_takes_the_oldest_jobs_first(tmp_path: Path) -> None:
    for age, name in enumerate(["start.9", "start.3", "end.3", "end.5", ".tmp", "notes.txt"]):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (1000 - age, 1000 - age))
    pending = Spool(str(tmp_path)).pending()
    assert pending.jobs == {9: {"start"}, 3: {"start", "end"}, 5: {"end"}}
    assert pending.foreign == 2 and set(pending.names) == {"start.9", "start.3", "end.3", "end.5"}
    oldest = Spool(str(tmp_path)).pending(limit=2)
    assert oldest.jobs == {5: {"end"}, 3: {"start", "end"}}  # end.5 is the oldest file
    skipped = Spool(str(tmp_path)).pending(skip={"end.5"})
    assert 5 not in skipped.jobs
    Spool(str(tmp_path)).remove(["start.9", "start.9", "gone.1"])
    assert not (tmp_path / "start.9").exists()
    assert Spool(str(tmp_path / "missing")).pending().jobs == {}


def test_backlog_counts_the_waiting_events_and_says_when_the_folder_cannot_be_read(
        tmp_path: Path) -> None:
    assert Spool(str(tmp_path)).backlog() == Backlog(waiting=0, oldest=None, readable=True)
    for age, name in enumerate(["start.9", "end.9", "start.4", "notes.txt"]):
        (tmp_path / name).write_text("")
        os.utime(tmp_path / name, (2000 - age, 2000 - age))
    assert Spool(str(tmp_path)).backlog() == Backlog(waiting=3, oldest=1998.0, readable=True)
    assert Spool(str(tmp_path / "missing")).backlog().readable is False
    assert Spool(str(tmp_path / "notes.txt")).backlog().readable is False


def test_wait_wakes_on_an_event_and_times_out_without_one(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path))
    began = time.monotonic()
    assert spool.wait(0.3) is False and time.monotonic() - began >= 0.3
    (tmp_path / "notes.txt").write_text("")  # not an event: still nothing to wake for
    timer = threading.Timer(0.2, lambda: (tmp_path / "start.11").write_text(""))
    timer.start()
    began = time.monotonic()
    assert spool.wait(10) is True
    assert time.monotonic() - began < 5
    timer.join()


def test_event_names() -> None:
    assert event_of("start.1") == ("start", 1)
    assert event_of("end.4294967294") == ("end", 4294967294)
    for name in ("start.0", "start.", "start.12345678901", "stop.3", "start.3.tmp", "start.٣"):
        assert event_of(name) is None, name
