"""The embedded sink: job lifecycle events as JSON lines, so a first run needs no outside service.

    "connectors": {"events": {"output": "/var/log/slurm-sync/events.jsonl"}}   # or "-": stdout

Each job run gives a ``started`` event once it has started (from squeue while it runs, or from
the sacct window when it started and ended between two cycles) and a ``finished`` event with its
state, exit code, times and nodes once sacct reports it ended. The store remembers what was
written, so each event is written once; a crash between the write and the store's record can
repeat one line, which the event's ``key``/``event`` pair lets a reader drop.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Mapping
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import (
    Connector,
    Direction,
    Scope,
    SlurmNeeds,
    Snapshot,
    View,
    delivery_key,
)
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import JobFilter

__all__ = ["EventsConnector"]

START, STOP = "start", "stop"


def _common(job: Job) -> dict[str, Any]:
    return {
        "cluster": job.cluster,
        "job_id": job.job_id,
        "display_id": job.display_id,
        "name": job.name,
        "user": job.user,
        "account": job.account,
        "partition": job.partition,
        "start_time": job.start_time,
        "nodes": list(job.hosts),
        "cpus": job.cpus,
    }


def started_event(job: Job) -> dict[str, Any]:
    """The ``started`` event of one job run."""
    gpus = {a.hostname: list(a.gpu_ids) for a in job.allocations if a.gpu_ids}
    cores = {a.hostname: list(a.cpu_ids) for a in job.allocations if a.cpu_ids is not None}
    return {"event": "started", **_common(job), "gpus": gpus, "cpu_ids": cores}


def finished_event(job: Job) -> dict[str, Any]:
    """The ``finished`` event of one job run, from sacct."""
    elapsed = job.end_time - job.start_time if job.end_time and job.start_time else None
    return {
        "event": "finished",
        **_common(job),
        "state": job.state.value,
        "end_time": job.end_time,
        "elapsed": elapsed,
        "return_code": job.exit_code.return_code,
        "signal": job.exit_code.signal,
    }


class EventsConnector(Connector):
    """Writes ``started`` and ``finished`` events to a JSON-lines file or standard output."""

    name: ClassVar[str] = "events"
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": {"type": "boolean"},
            "output": {
                "type": "string",
                "minLength": 1,
                "description": "a file to append JSON lines to, or '-' for standard output",
            },
        },
    }

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.output = str(settings.get("output", "-"))

    def needs(self) -> SlurmNeeds:
        # Running jobs for 'started' while their allocation is still known; the sacct window for
        # short jobs and for every 'finished'.
        return SlurmNeeds(squeue=JobFilter(states=("R", "CG", "S")), sacct=True, detail="new")

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> list[Action]:
        starts: dict[str, Job] = {}
        stops: dict[str, Job] = {}
        # squeue first: while a job runs it knows the cores and GPUs; sacct fills in the rest.
        for job in (*view.active, *view.ended):
            if job.start_time is None or not scope.covers(job):
                continue
            key = delivery_key(job)
            # a listed record (squeue's plain listing) has no allocation: the engine gives
            # the full record of a run not yet started, so a listed one is never written
            if (direction.includes(Direction.START) and not snapshot.done(START, key)
                    and job.source != "squeue-list"):
                starts.setdefault(key, job)
            ended = job.state.finished and job.source == "sacct"
            if ended and direction.includes(Direction.STOP) and not snapshot.done(STOP, key):
                stops.setdefault(key, job)
        actions = [
            Action(self.name, START, key, started_event(job), "started, not yet written")
            for key, job in sorted(starts.items(), key=lambda kv: kv[1].start_time or 0)
        ]
        actions += [
            Action(self.name, STOP, key, finished_event(job), f"ended {job.state.value.lower()}")
            for key, job in sorted(stops.items(), key=lambda kv: kv[1].end_time or 0)
        ]
        return actions

    def check(self) -> list[str]:
        if self.output == "-":
            return []
        directory = os.path.dirname(os.path.abspath(self.output)) or "."
        if os.path.exists(self.output) and not os.access(self.output, os.W_OK):
            return [f"{self.output} is not writable"]
        if not os.path.isdir(directory):
            return [f"{directory} does not exist (the output file's folder)"]
        if not os.access(directory, os.W_OK):
            return [f"{directory} is not writable"]
        return []

    def apply(self, action: Action) -> Outcome:
        event = {"key": action.key, **action.payload}
        line = json.dumps(event, ensure_ascii=False) + "\n"
        try:
            line.encode("utf-8")
        except UnicodeEncodeError:  # text no encoder writes (a lone surrogate): escape it all
            line = json.dumps(event) + "\n"
        try:
            if self.output == "-":
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                _append(self.output, line.encode("utf-8"))
        except OSError as exc:
            return Outcome.transient(action, f"cannot write {self.output}: {exc.strerror}")
        return Outcome.done(action)


def _append(path: str, data: bytes) -> None:
    """Append ``data`` to ``path`` and, for a regular file, wait until it is on disk.

    A character device (``/dev/null``) or a FIFO is a valid output too: neither can be synced
    (fsync says EINVAL), and a FIFO is opened without waiting for a reader (no reader is an
    error now, ENXIO, instead of a cycle that hangs)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o644)
    try:
        os.set_blocking(fd, True)
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if regular:
            os.fsync(fd)
    finally:
        os.close(fd)

