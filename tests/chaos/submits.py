"""Jobs submitted to the simulated Slurm while it runs: the stand-in ``sbatch`` adds them,
``scancel`` ends them, a simulated scheduler (``tests/chaos/bkagent.py``) starts them, and
``squeue``/``sacct`` show them beside the timeline's jobs, in the same record templates.

    job_id, out, err, code = sbatch(work, argv, script, now=time.time(), seed=7)
    code, out, err = scancel(work, ["--ctld", "--signal=TERM", "--full", "60001_2"], now)
    for job, state, extra in shown(load(work), now, min_job_age):  # what squeue/sacct show
        ...

Everything lives in ``work/submitted.json``, read and written under the flock of
``work/faults.lock`` that the stand-ins' fault queue uses too (never both at once):
``{"next_id": N, "jobs": [entry, ...]}``, one entry per sbatch call that submitted something,
with its argv, name, comment, script and one task per array task (one for a plain job).

A task's life, in real time:
- PENDING from submission; the scheduler starts it ``wait`` seconds later (seeded: mostly a few
  seconds, some long enough for the connector to see it pending and cancel it) and its agent
  acquires the Buildkite job at once. A task whose Buildkite job no longer wants an agent is
  held pending (``hold``, seeded for most tasks: a busy cluster) until it is scancel'd, so a
  cancel the connector forgets is left behind for the checks to see; the others start and
  their agent is refused (exit 27).
- RUNNING until its agent ends it: COMPLETED when the Buildkite job passed, FAILED 143 after a
  SIGTERM or a Buildkite cancel, FAILED 27 when the acquire was refused.
- ``scancel ID`` (a job id, an array's id for all its tasks, or ``ARRAY_TASK``) ends it at once:
  CANCELLED, pending or running. ``scancel --signal=TERM`` marks a running task signalled (its
  agent stops); a pending one is refused, as slurmctld does.
- squeue shows it COMPLETING for a second after the end, then the end state for MinJobAge;
  sacct shows it from submission on. An array's tasks that have not started show as one record
  under the array's id (``12_[0-3]``); a task gets its own job id when it starts or is
  cancelled while others still pend, and the last one keeps the array's id, as in Slurm.
"""

from __future__ import annotations

import fcntl
import json
import os
import pwd
import random
import re
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.chaos.timeline import CORES_PER_SOCKET, CPU_HOSTS, SOCKETS, Job, Run, SlurmState

__all__ = ["FIRST_ID", "load", "locked", "pending_wait", "sbatch", "scancel", "shown",
           "task_state"]

STATE_FILE = "submitted.json"
FIRST_ID = 100_000  # far above the timeline's ids
COMPLETING_SECONDS = 1
SUBMIT_FAILED = ("sbatch: error: Batch job submission failed: Unable to contact slurm "
                 "controller (connect failure)\n")
SUBMIT_LOST = ("sbatch: error: Batch job submission failed: Socket timed out on send/recv "
               "operation\n")
SCANCEL_FAILED = "scancel: error: Unable to contact slurm controller (connect failure)\n"
_ARRAY = re.compile(r"^(\d+)-(\d+)$")
_TASK = re.compile(r"^(\d+)_(\d+)$")


class locked:
    """``work/submitted.json`` read and (with ``write``) written back under the exclusive flock
    of ``work/faults.lock``."""

    def __init__(self, work: Path, write: bool = True) -> None:
        self.work = work
        self.write = write

    def __enter__(self) -> dict[str, Any]:
        self.lock = open(self.work / "faults.lock", "a+")
        fcntl.flock(self.lock, fcntl.LOCK_EX if self.write else fcntl.LOCK_SH)
        path = self.work / STATE_FILE
        self.state: dict[str, Any] = (json.loads(path.read_text()) if path.exists()
                                      else {"next_id": FIRST_ID, "jobs": []})
        return self.state

    def __exit__(self, kind: object, *exc: object) -> None:
        try:
            if self.write and kind is None:
                path = self.work / STATE_FILE
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(self.state))
                os.replace(tmp, path)
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            self.lock.close()


def load(work: Path) -> list[dict[str, Any]]:
    """Every submission so far (entries as in the module docstring)."""
    if not (work / STATE_FILE).exists():
        return []
    with locked(work, write=False) as state:
        return list(state["jobs"])


# --- sbatch -------------------------------------------------------------------------------------


def _option(argv: Sequence[str], *names: str) -> str | None:
    """The last value of ``--name=value``/``--name value``/``-x value`` in argv."""
    found = None
    for i, arg in enumerate(argv):
        key, eq, value = arg.partition("=")
        if key in names:
            found = value if eq else (argv[i + 1] if i + 1 < len(argv) else "")
    return found


def _minutes(text: str | None) -> int:
    """sbatch's --time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``) in whole minutes."""
    if not text:
        return 60
    days = 0
    if "-" in text:
        head, text = text.split("-", 1)
        days = int(head)
    parts = [int(p) for p in text.split(":")]
    if len(parts) == 1:
        minutes = parts[0]
    elif len(parts) == 2:
        minutes = parts[0] + (1 if parts[1] else 0)
    else:
        minutes = parts[0] * 60 + parts[1] + (1 if parts[2] else 0)
    return days * 1440 + minutes


def pending_wait(seed: int, job_id: int, task: int | None) -> tuple[float, float, bool]:
    """The seeded (wait, runtime, hold) of one task: how long it pends, how long its step runs,
    and whether it is held pending once its Buildkite job is moot."""
    rng = random.Random(f"{seed}:{job_id}:{task}")
    wait = rng.uniform(0.3, 5.0) if rng.random() < 0.8 else rng.uniform(12.0, 25.0)
    runtime = rng.uniform(0.0, 1.5) if rng.random() < 0.3 else rng.uniform(2.0, 20.0)
    return wait, runtime, rng.random() < 0.7


def sbatch(work: Path, argv: Sequence[str], script: str, *, now: float, seed: int,
           fault: str = "", ppid: int = 0) -> tuple[int | None, str, str, int]:
    """What ``sbatch ARGV`` with ``script`` on stdin does: (job id or None, stdout, stderr,
    exit code). ``fault``: ``fail`` submits nothing; ``lost`` submits and says it failed;
    ``hang:N`` and ``kill:D`` submit (the caller sleeps or kills, see slurmsim.main)."""
    if not script.startswith("#!"):
        return None, "", ("sbatch: error: This does not look like a batch script.  The first "
                          "line must start with #! followed by the path to an interpreter.\n"), 1
    array = _option(argv, "--array", "-a")
    size = 0
    if array is not None:
        match = _ARRAY.match(array)
        if match is None or int(match[1]) != 0:
            return None, "", f"sbatch: error: Invalid job array specification: {array}\n", 1
        size = int(match[2]) + 1
    if fault == "fail":
        return None, "", SUBMIT_FAILED, 1
    cpus = _option(argv, "--cpus-per-task", "-c")
    entry = {
        "t": now, "fault": fault, "ppid": ppid, "args": list(argv), "script": script,
        "name": _option(argv, "--job-name", "-J") or "sbatch",
        "comment": _option(argv, "--comment") or "",
        "partition": _option(argv, "--partition", "-p") or "main",
        "account": _option(argv, "--account", "-A") or "ci",
        "user": pwd.getpwuid(os.getuid()).pw_name,
        "time_limit": _minutes(_option(argv, "--time", "-t")),
        "cpus": int(cpus) if cpus and cpus.isdigit() else 1,
        "array_size": size,
    }
    with locked(work) as state:
        job_id = int(state["next_id"])
        state["next_id"] = job_id + 1
        tasks = []
        for task in (range(size) if size else [None]):
            wait, runtime, hold = pending_wait(seed, job_id, task)
            tasks.append({"task": task, "job_id": None if size else job_id, "wait": wait,
                          "runtime": runtime, "hold": hold, "start": None, "end": None,
                          "state": None, "exit_code": 0, "signal": 0, "cancelled": None,
                          "signalled": None, "host": CPU_HOSTS[(job_id + (task or 0)) % len(
                              CPU_HOSTS)]})
        entry["job_id"] = job_id
        entry["tasks"] = tasks
        state["jobs"].append(entry)
    if fault == "lost":
        return job_id, "", SUBMIT_LOST, 1
    return job_id, f"{job_id}\n", "", 0


# --- scancel ------------------------------------------------------------------------------------


def _targets(state: dict[str, Any], word: str) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """The (entry, task) pairs scancel's id ``word`` names: ``12_3`` one task of array 12;
    ``12`` a plain job, every task of array 12, or a task whose own id is 12."""
    match = _TASK.match(word)
    out = []
    for entry in state["jobs"]:
        for task in entry["tasks"]:
            if match is not None:
                if entry["array_size"] and entry["job_id"] == int(match[1]) and task[
                        "task"] == int(match[2]):
                    out.append((entry, task))
            elif word.isdigit() and (entry["job_id"] == int(word) or task["job_id"] == int(
                    word)):
                out.append((entry, task))
    return out


def _own_id(state: dict[str, Any], entry: dict[str, Any], task: dict[str, Any]) -> None:
    """A task leaving the array's pending record gets its own job id; the last keeps the
    array's."""
    if task["job_id"] is not None:
        return
    others = [t for t in entry["tasks"] if t is not task and t["job_id"] is None]
    if others:
        task["job_id"] = int(state["next_id"])
        state["next_id"] += 1
    else:
        task["job_id"] = entry["job_id"]


def scancel(work: Path, argv: Sequence[str], now: float, fault: str = ""
            ) -> tuple[int, str, str]:
    """``scancel [--ctld] [-v] [--signal=SIG [--full]] [--name=N] [--user=U] ID...``: (exit
    code, stdout, stderr). Only our submissions are known here; an id that is not one of
    them, or one that has ended, is reported as Slurm does on the signal path and ignored on
    the cancel path."""
    if fault == "fail":
        return 1, "", SCANCEL_FAILED
    sig = _option(argv, "--signal", "-s")
    name = _option(argv, "--name", "-n")
    user = _option(argv, "--user", "-u")
    words = [a for i, a in enumerate(argv) if not a.startswith("-")
             and not (i > 0 and argv[i - 1] in ("-s", "-n", "-u", "--signal", "--name",
                                                "--user"))]
    errors: list[str] = []
    code = 0
    with locked(work) as state:
        chosen: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
        if not words and (name or user):
            chosen = [(str(e["job_id"]), e, t) for e in state["jobs"] for t in e["tasks"]
                      if (not name or e["name"] == name) and (not user or e["user"] == user)]
        for word in words:
            found = [(word, e, t) for e, t in _targets(state, word)
                     if (not name or e["name"] == name) and (not user or e["user"] == user)]
            if not found and sig is not None:
                errors.append(f"scancel: error: Kill job error on job id {word}: Invalid job "
                              "id specified")
                code = 1
            chosen += found
        by_word: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
        for word, entry, task in chosen:
            by_word.setdefault(word, []).append((entry, task))
        for word, pairs in by_word.items():
            live = [(e, t) for e, t in pairs if t["end"] is None]
            if not live:
                if sig is not None:
                    errors.append(f"scancel: error: Kill job error on job id {word}: Job/step "
                                  "already completing or completed")
                    code = 1
                continue
            for entry, task in live:
                if sig is not None:
                    if task["start"] is None:
                        errors.append(f"scancel: error: Kill job error on job id {word}: Job "
                                      "is pending execution")
                        code = 1
                    else:
                        task["signalled"] = task["signalled"] or now
                    continue
                # a full cancel: pending or running, it ends now
                if task["start"] is None:
                    _own_id(state, entry, task)
                task["cancelled"] = now
                task["end"] = now
                task["state"] = "CANCELLED"
                task["signal"] = 15
    return code, "", "".join(f"{line}\n" for line in dict.fromkeys(errors))


# --- what Slurm shows ---------------------------------------------------------------------------


def task_state(entry: dict[str, Any], task: dict[str, Any], now: float,
               min_job_age: int) -> SlurmState | None:
    """What squeue shows of one task at ``now`` (None: gone, MinJobAge after its end)."""
    submitted = int(entry["t"])
    if task["start"] is None:
        if task["cancelled"] is None:
            return SlurmState("PENDING", None, 0, 0, 0, "Resources", eligible=submitted,
                              submission=submitted)
        at = int(task["cancelled"])
        if now >= task["cancelled"] + min_job_age:
            return None
        return SlurmState("CANCELLED", None, at, at, 0, eligible=submitted,
                          submission=submitted)
    start = int(task["start"])
    if task["end"] is None or now < task["end"]:
        return SlurmState("RUNNING", 0, start, start + entry["time_limit"] * 60, 0,
                          allocation=True, gpus=True, eligible=submitted, submission=submitted)
    end = max(start, int(task["end"]))
    if now < task["end"] + COMPLETING_SECONDS:
        return SlurmState("COMPLETING", 0, start, end, 0, allocation=True, eligible=submitted,
                          submission=submitted)
    if now < task["end"] + min_job_age:
        return SlurmState(task["state"], 0, start, end, 0, allocation=True,
                          eligible=submitted, submission=submitted)
    return None


def sacct_state(entry: dict[str, Any], task: dict[str, Any]) -> SlurmState:
    """What sacct shows of one task (no lag: slurmdbd hears at once)."""
    submitted = int(entry["t"])
    if task["start"] is None:
        if task["cancelled"] is None:
            return SlurmState("PENDING", None, 0, 0, 0, eligible=submitted, submission=submitted)
        at = int(task["cancelled"])
        return SlurmState("CANCELLED", None, at, at, 0, eligible=submitted, submission=submitted)
    start = int(task["start"])
    if task["end"] is None:
        return SlurmState("RUNNING", 0, start, 0, 0, eligible=submitted, submission=submitted)
    return SlurmState(task["state"], 0, start, max(start, int(task["end"])), 0,
                      eligible=submitted, submission=submitted)


def as_job(entry: dict[str, Any], task: dict[str, Any]) -> Job:
    """A task as the timeline's Job (one run), for the record templates."""
    host = task["host"]
    first = (task["job_id"] or entry["job_id"]) % (SOCKETS * CORES_PER_SOCKET - entry["cpus"] + 1)
    run = Run(start=int(task["start"] or 0),
              end=int(task["end"]) if task["end"] is not None else 0,
              state=task["state"] or "COMPLETED", exit_code=task["exit_code"],
              signal=task["signal"], hosts=[host],
              cores=[list(range(first, first + entry["cpus"]))], gpus=[[]], start_lag=0,
              end_lag=0)
    array = bool(entry["array_size"])
    return Job(job_id=task["job_id"] or entry["job_id"], name=entry["name"], user=entry["user"],
               account=entry["account"], partition=entry["partition"], submit=int(entry["t"]),
               cpus_per_node=entry["cpus"], nodes=1, gpus_per_node=0,
               time_limit=entry["time_limit"], runs=[run] if task["start"] is not None else [],
               cancel_at=(int(task["cancelled"]) if task["start"] is None
                          and task["cancelled"] is not None else None),
               array_job_id=entry["job_id"] if array else 0,
               array_task_id=task["task"] if array else None,
               array_size=entry["array_size"])


def shown(entries: Sequence[dict[str, Any]], now: float, min_job_age: int | None
          ) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], SlurmState]]:
    """What squeue (``min_job_age`` given) or sacct (None) shows at ``now``: (entry, tasks,
    state), one per record; an array's tasks that have not started are one record."""
    for entry in entries:
        if entry["t"] > now:
            continue
        pending: list[dict[str, Any]] = []
        for task in entry["tasks"]:
            st = (task_state(entry, task, now, min_job_age) if min_job_age is not None
                  else sacct_state(entry, task))
            if st is None:
                continue
            if entry["array_size"] and st.state == "PENDING":
                pending.append(task)
                continue
            yield entry, [task], st
        if pending:
            submitted = int(entry["t"])
            yield entry, pending, SlurmState("PENDING", None, 0, 0, 0, "Resources",
                                             eligible=submitted, submission=submitted)


def task_string(tasks: Sequence[dict[str, Any]]) -> str:
    """``0-3`` or ``0,2,5``: squeue's array_task_string of pending tasks."""
    ids = sorted(t["task"] for t in tasks)
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}" if len(ids) > 1 else str(ids[0])
    return ",".join(map(str, ids))


def kill_caller_later(ppid: int, delay: float, log: Any) -> None:
    """Fork a process that SIGKILLs ``ppid`` (sbatch's caller, a slurm-sync cycle) ``delay``
    seconds from now, after sbatch has printed its answer and exited: the kill lands between
    sbatch returning and the cycle recording it. A pidfd is taken first, so a pid the kernel
    gives to another process meanwhile is never hit."""
    try:
        pidfd = os.pidfd_open(ppid)
    except (AttributeError, OSError):
        return
    if os.fork() != 0:
        os.close(pidfd)
        return
    try:  # the child: away from sbatch's pipes and session, so the caller reads EOF at once
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        time.sleep(delay)
        sent = 0
        try:
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        except OSError:
            sent = 1
        log({"t": time.time(), "t_end": time.time(), "cmd": "kill", "args": [str(ppid)],
             "ppid": ppid, "fault": "sbatch-kill", "rc": sent})
    finally:
        os._exit(0)
