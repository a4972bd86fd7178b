"""The hook's cost per job, and start-to-record latency of the resident syncer (issue 15).

    python bench/hook_bench.py cost [--runs 2000]
    python bench/hook_bench.py latency --run-dir lab/run --version 24.11 [--jobs 20]
    python bench/hook_bench.py burst --run-dir lab/run-fat --version 24.11 [--jobs 1000]

``cost``: contrib/slurm-sync-hook started as slurmscriptd starts it (fork and exec of the
script with SLURM_SCRIPT_CONTEXT and SLURM_JOB_ID in its environment, then a wait), ``runs``
times with /bin/sh, into a spool folder on the same disk as the lab; each run's wall time from
the spawn to the reaped exit, p50/p99/max.

``latency`` and ``burst`` run on a lab cluster whose slurm.conf has the hook (lab/slurm-lab's):
a resident ``slurm-sync run --loop 3600 -vv`` (the regular cycle once an hour, so only events
drive it) with the events connector, its output file polled every 10 ms by this process.
A job's start is slurmctld's own log line (``sched: Allocate JobId=N`` or the backfill
scheduler's ``Started JobId=N``, millisecond timestamps); its record is the moment its
``started`` line appeared in the events file. ``latency`` submits jobs one at a time (each
waits for the previous one's record) and reports p50/p95/max; ``burst`` submits one held
array of ``jobs`` tasks, releases it, and reports when the last task started, when the last
record appeared, and the Slurm calls the syncer made meanwhile (from its -vv log).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOOK = ROOT / "contrib" / "slurm-sync-hook"
# an array task is "JobId=ARRAY_TASK(ID)": the id in brackets is the task's own
_ID = r"JobId=(?:\d+_\d+\((\d+)\)|(\d+))"
_START = re.compile(r"^\[(\S+)\] .*(?:Allocate|Started) " + _ID)
# 26.05 logs no Allocate line for a job that starts within its submission's RPC
_SUBMIT = re.compile(r"^\[(\S+)\] _slurm_rpc_submit_batch_job: " + _ID)
# the PrologSlurmctld (the hook) finished: its event is in the spool
_PROLOG_DONE = re.compile(r"^\[(\S+)\] prolog_running_decr: Configuration for " + _ID)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def cost(runs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-hook-bench-", dir="/var/tmp"))
    spool = work / "spool"
    spool.mkdir()
    hook = work / "slurm-sync-hook"
    hook.write_text(HOOK.read_text().replace("SPOOL=/var/spool/slurm-sync/events",
                                             f"SPOOL={spool}"))
    hook.chmod(0o755)
    took = []
    for index in range(runs):
        env = {"PATH": "/usr/bin:/bin", "SLURM_JOB_ID": str(100000 + index),
               "SLURM_SCRIPT_CONTEXT": "prolog_slurmctld" if index % 2 else "epilog_slurmctld"}
        began = time.perf_counter()
        pid = os.posix_spawn(str(hook), [str(hook)], env)
        _, status = os.waitpid(pid, 0)
        took.append(time.perf_counter() - began)
        assert os.waitstatus_to_exitcode(status) == 0
    assert len(os.listdir(spool)) == runs
    ms = [t * 1000 for t in took]
    print(f"hook runs: {runs}; wall per run ms: p50 {_percentile(ms, .5):.2f}, "
          f"p99 {_percentile(ms, .99):.2f}, max {max(ms):.2f} (target p99 <= 10 ms); "
          f"load {os.getloadavg()[0]:.1f}")


class Lab:
    def __init__(self, run_dir: Path, version: str) -> None:
        self.info = json.loads((run_dir / version / "lab.json").read_text())
        self.bin = Path(self.info["bin_dir"])
        self.log = Path(self.info["state_save_location"]).parent / "log" / "slurmctld.log"

    def cmd(self, *argv: str, stdin: str | None = None) -> str:
        return subprocess.run([str(self.bin / argv[0]), *argv[1:]], input=stdin, text=True,
                              capture_output=True, check=True, timeout=120).stdout

    def starts(self, offset: int) -> dict[int, float]:
        """Job id -> its start (epoch seconds, ms) from slurmctld's log past ``offset``: the
        scheduler's line, else (26.05, a job started within its submission's RPC) the
        submission's, which is no later than the start (a latency measured from it is an
        upper bound)."""
        submitted = self._times(offset, _SUBMIT)
        return {**submitted, **self._times(offset, _START)}

    def prologs_done(self, offset: int) -> dict[int, float]:
        """Job id -> when its PrologSlurmctld (the hook) finished, from slurmctld's log."""
        return self._times(offset, _PROLOG_DONE)

    def _times(self, offset: int, pattern: re.Pattern[str]) -> dict[int, float]:
        found: dict[int, float] = {}
        with self.log.open(errors="replace") as log:
            log.seek(offset)
            for line in log:
                match = pattern.match(line)
                if match:
                    job = int(match.group(2) or match.group(3))
                    found.setdefault(job, datetime.fromisoformat(match.group(1)).timestamp())
        return found


class Resident:
    def __init__(self, lab: Lab, work: Path) -> None:
        self.out = work / "events.jsonl"
        self.log = work / "syncer.log"
        config = work / "config.json"
        config.write_text(json.dumps({
            "state_dir": str(work / "state"), "first_window_seconds": 300,
            "log_format": "json", "hook_spool": lab.info["hook_spool"],
            "slurm": {"bin_dir": str(lab.bin)},
            "connectors": {"events": {"output": str(self.out)}}}))
        for name in os.listdir(lab.info["hook_spool"]):
            os.unlink(os.path.join(lab.info["hook_spool"], name))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slurm_sync.cli", "-c", str(config), "-vv", "run", "--loop",
             "3600"], stdout=subprocess.DEVNULL, stderr=self.log.open("w"))
        self.config = config
        self.seen: dict[int, float] = {}
        self.finished: dict[int, float] = {}
        self.display: dict[int, str] = {}  # job id -> "ARRAY_TASK" as Slurm shows it
        self._offset = 0
        deadline = time.time() + 300
        while not self._cycles(work / "state" / "state.db"):  # the first, regular cycle
            assert time.time() < deadline and self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)

    @staticmethod
    def _cycles(db: Path) -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
        except sqlite3.OperationalError:
            return 0

    def poll(self) -> None:
        """Note when each ``started`` line appeared."""
        if not self.out.exists():
            return
        with self.out.open() as events:
            events.seek(self._offset)
            chunk = events.read()
        complete = chunk[:chunk.rfind("\n") + 1]
        self._offset += len(complete.encode())
        now = time.time()
        for line in complete.splitlines():
            event = json.loads(line)
            if event["event"] == "started":
                self.seen.setdefault(event["job_id"], now)
                self.display[event["job_id"]] = str(event.get("display_id", ""))
            elif event["event"] == "finished":
                self.finished.setdefault(event["job_id"], now)

    def calls(self) -> list[str]:
        return [json.loads(line).get("argv", "") for line in self.log.read_text().splitlines()
                if line.startswith("{") and "slurm call" in line]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


def latency(lab: Lab, jobs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-latency-"))
    resident = Resident(lab, work)
    offset = lab.log.stat().st_size
    delays = []
    try:
        for _ in range(jobs):
            job = int(lab.cmd("sbatch", "--parsable", "--output=/dev/null", "--chdir=/tmp",
                              stdin="#!/bin/sh\nsleep 3\n").split(";")[0])
            deadline = time.time() + 60
            while job not in resident.seen:
                assert time.time() < deadline, f"job {job} not recorded in 60 s"
                resident.poll()
                time.sleep(0.01)
            start = lab.starts(offset)[job]
            delays.append(resident.seen[job] - start)
        deadline = time.time() + 120
        while not set(resident.seen) <= set(resident.finished):
            assert time.time() < deadline, "the jobs' ends were not recorded in 120 s"
            resident.poll()
            time.sleep(0.05)
    finally:
        resident.stop()
    # the safety net after the events: what would the regular cycle do now?
    dry = subprocess.run([sys.executable, "-m", "slurm_sync.cli", "-c", str(resident.config),
                          "run", "--dry-run", "--json"], capture_output=True, text=True,
                         check=True, timeout=300)
    left = json.loads(dry.stdout)["actions"]
    print(f"start-to-record latency of {jobs} single jobs, s: p50 "
          f"{statistics.median(delays):.2f}, p95 {_percentile(delays, .95):.2f}, max "
          f"{max(delays):.2f} (targets 1 and 2); their ends all recorded; the regular cycle "
          f"then plans {len(left)} action(s) (target 0); load {os.getloadavg()[0]:.1f}; "
          f"work {work}")


def burst(lab: Lab, jobs: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-burst-"))
    resident = Resident(lab, work)
    offset = lab.log.stat().st_size
    try:
        array = int(lab.cmd("sbatch", "--parsable", "--hold", f"--array=1-{jobs}",
                            "--output=/dev/null", "--chdir=/tmp",
                            stdin="#!/bin/sh\nexec sleep 600\n").split(";")[0])
        calls_before = len(resident.calls())
        released = time.time()
        lab.cmd("scontrol", "release", str(array))
        deadline = released + 600

        def ours() -> set[int]:  # the first cycle also records earlier runs' jobs
            return {j for j, shown in resident.display.items()
                    if shown.startswith(f"{array}_")}

        while len(ours()) < jobs:
            assert time.time() < deadline, f"{len(ours())} of {jobs} recorded in 600 s"
            resident.poll()
            time.sleep(0.01)
        tasks = ours()
        starts = lab.starts(offset)
        prologs = lab.prologs_done(offset)
        calls = resident.calls()[calls_before:]
    finally:
        resident.stop()
        lab.cmd("scancel", str(array))
    last_start = max(t for j, t in starts.items() if j in tasks)
    last_prolog = max(t for j, t in prologs.items() if j in tasks)
    last_record = max(resident.seen[j] for j in tasks)
    lags = [resident.seen[j] - prologs[j] for j in tasks if j in prologs]
    kinds: dict[str, int] = {}
    for argv in calls:
        words = str(argv).split()
        kind = " ".join([os.path.basename(words[0]), *words[1:2]]) if words else "?"
        kinds[kind] = kinds.get(kind, 0) + 1
    print(f"burst of {jobs} starts: released at 0 s, last start +{last_start - released:.1f} s, "
          f"last hook (PrologSlurmctld) done +{last_prolog - released:.1f} s, last record "
          f"+{last_record - released:.1f} s: {last_record - last_start:.1f} s after the last "
          f"start (target <= 10 s); each job's record after its hook ran: p50 "
          f"{statistics.median(lags):.2f} s, p95 {_percentile(lags, .95):.2f} s, max "
          f"{max(lags):.2f} s; {len(calls)} Slurm calls {kinds}; load "
          f"{os.getloadavg()[0]:.1f}; work {work}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("cost", "latency", "burst"))
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--run-dir", type=Path, default=ROOT / "lab" / "run")
    parser.add_argument("--version", default="24.11")
    args = parser.parse_args()
    if args.what == "cost":
        cost(args.runs)
    elif args.what == "latency":
        latency(Lab(args.run_dir, args.version), args.jobs or 20)
    else:
        burst(Lab(args.run_dir, args.version), args.jobs or 1000)
    return 0


if __name__ == "__main__":
    sys.exit(main())
