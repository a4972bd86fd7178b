"""The events slurmctld's hook leaves in the spool folder, for a resident syncer to act on.

    >>> event_of("start.4242"), event_of("end.17"), event_of(".tmp.3"), event_of("start.x")
    (('start', 4242), ('end', 17), None, None)

``contrib/slurm-sync-hook`` runs as slurm.conf's PrologSlurmctld and EpilogSlurmctld and creates
one empty file per event, ``start.JOBID`` or ``end.JOBID``: the name is the whole record. A
resident ``slurm-sync run --loop`` with ``hook_spool`` set watches the folder (``Spool.wait``),
runs a cycle for the jobs named (``Spool.pending``, coalesced per job) and removes the files it
acted on (``Spool.remove``) once that cycle's outcomes are recorded. A file that stays (the
syncer killed mid-cycle) is acted on again by the next one: cycles are idempotent. A name of
another form is left alone (counted in ``Pending.foreign``).

The folder is polled (``os.scandir`` of a folder that holds a few names, every 0.1 s by
default): no inotify, which Python's standard library does not offer, and a poll also sees
events written while the syncer was down.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field

__all__ = ["EVENTS", "Backlog", "Pending", "Spool", "event_of"]

#: What the hook records: a job started (PrologSlurmctld) or ended (EpilogSlurmctld).
EVENTS = ("start", "end")
_MAX_DIGITS = 10  # Slurm job ids are 32-bit


def event_of(name: str) -> tuple[str, int] | None:
    """``(event, job id)`` of a spool file's name, None for a name of another form (pure)."""
    what, dot, digits = name.partition(".")
    if (not dot or what not in EVENTS or not digits.isascii() or not digits.isdigit()
            or len(digits) > _MAX_DIGITS):
        return None
    job_id = int(digits)
    return (what, job_id) if job_id > 0 else None


@dataclass(frozen=True)
class Pending:
    """The events waiting in the spool: job id -> the events recorded for it, and the file
    names they came from (to remove once acted on); ``foreign``: names of another form."""

    jobs: dict[int, frozenset[str]] = field(default_factory=dict)
    names: tuple[str, ...] = ()
    foreign: int = 0
    mtimes: dict[str, float] = field(default_factory=dict)  # name -> when it was recorded


@dataclass(frozen=True)
class Backlog:
    """What waits in the spool, for ``status`` and the metrics: how many events, when the
    oldest was recorded (None: none), and whether the folder could be read at all."""

    waiting: int
    oldest: float | None
    readable: bool


class Spool:
    """The hook's spool folder, read by the resident syncer."""

    def __init__(self, path: str, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.path = path
        self._clock = clock
        self._sleep = sleep

    def pending(self, limit: int | None = None, skip: Collection[str] = ()) -> Pending:
        """The events in the folder but those named in ``skip``, at most ``limit`` jobs (the
        oldest files first); a folder that is missing or unreadable has none (``check``
        reports it)."""
        found: list[tuple[float, str, str, int]] = []
        foreign = 0
        try:
            with os.scandir(self.path) as entries:
                for entry in entries:
                    parsed = event_of(entry.name)
                    if parsed is None:
                        foreign += 1
                        continue
                    if entry.name in skip:
                        continue
                    try:
                        mtime = entry.stat(follow_symlinks=False).st_mtime
                    except OSError:
                        continue  # removed meanwhile
                    found.append((mtime, entry.name, *parsed))
        except OSError:
            return Pending()
        found.sort()
        jobs: dict[int, set[str]] = {}
        names: list[str] = []
        for _, name, what, job_id in found:
            if limit is not None and job_id not in jobs and len(jobs) >= limit:
                continue
            jobs.setdefault(job_id, set()).add(what)
            names.append(name)
        mtimes = {name: mtime for mtime, name, _, _ in found}
        return Pending(jobs={j: frozenset(w) for j, w in jobs.items()}, names=tuple(names),
                       foreign=foreign, mtimes={n: mtimes[n] for n in names})

    def backlog(self) -> Backlog:
        """The events waiting now (a resident syncer takes each within a second or so)."""
        if not os.access(self.path, os.R_OK | os.X_OK) or not os.path.isdir(self.path):
            return Backlog(waiting=0, oldest=None, readable=False)
        pending = self.pending()
        return Backlog(waiting=len(pending.names),
                       oldest=min(pending.mtimes.values(), default=None), readable=True)

    def remove(self, names: Iterable[str]) -> None:
        """Remove the event files acted on; one already gone is no error (an event of the same
        name written after the read is lost with it, and its job synced by that same cycle
        or the next regular one)."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, name))

    def wait(self, timeout: float, interval: float = 0.1, skip: Collection[str] = (),
             stop: Callable[[], bool] = lambda: False) -> bool:
        """Sleep until an event file not named in ``skip`` is in the folder (True) or
        ``timeout`` seconds passed or ``stop()`` is true (False); ``skip``'s names are waited
        for ``interval`` at most, as they are due again soon."""
        deadline = self._clock() + timeout
        while True:
            if self._has_event(skip):
                return True
            left = deadline - self._clock()
            if left <= 0 or stop():
                return False
            self._sleep(min(interval, left))
            if skip:
                return False

    def _has_event(self, skip: Collection[str] = ()) -> bool:
        try:
            with os.scandir(self.path) as entries:
                return any(event_of(e.name) is not None and e.name not in skip for e in entries)
        except OSError:
            return False
