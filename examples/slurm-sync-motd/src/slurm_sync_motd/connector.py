"""The ``motd`` connector: a "who is running what" board for a site's login nodes.

    "connectors": {"motd": {"directory": "/run/slurm-sync-motd",
                            "motd_file": "/etc/motd.d/50-slurm-jobs",
                            "exclude_users": ["root"]}}

Each running job gets one line on the board (an ``announce``: a file in ``directory``), and
loses it once sacct says its run ended (a ``retire``: the file is removed). After each batch the
lines are gathered into ``motd_file``, which a login shows. A run that started and ended between
two cycles, or one of an excluded user, is never announced: ``plan`` records that as a fact, so
it is not looked at again and ``status`` counts it.

How it uses slurm-sync's connector contract (``slurm_sync.connector``):

- ``kinds``: ``announce`` is on the start side (``--direction start`` does it, ``--limit``
  counts it as a start) and batched; ``retire`` is on the stop side and destructive, so the stop
  guard holds it back when Slurm's answer is in doubt (a failed or empty query): a board that
  loses every line because squeue timed out would be wrong for everyone who logs in.
- ``observe`` lists the board (read only, it runs under ``--dry-run`` too) and returns a frozen
  ``Board``; ``plan`` is pure and uses it: a line already on the board (the state database was
  lost) is a fact, not a second write.
- ``apply_many`` writes or removes a batch of files and rebuilds ``motd_file`` once.
- ``check`` says whether the folders are there and writable, and changes nothing.
- ``add_commands`` adds ``slurm-sync motd show`` (``slurm_sync_motd.commands``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import (
    Connector,
    Direction,
    Fact,
    Kind,
    Plan,
    Scope,
    SlurmNeeds,
    Snapshot,
    View,
    delivery_key,
)
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.query import JobFilter
from slurm_sync_motd import board

__all__ = ["ANNOUNCE", "RETIRE", "Board", "MotdConnector", "notice_line"]

#: Put a running job's line on the board (start side; applied in batches).
ANNOUNCE = Kind("announce", Direction.START, batched=True)
#: Take an ended run's line off the board (stop side, destructive: the guard may hold it).
RETIRE = Kind("retire", Direction.STOP, destructive=True, batched=True)

DEFAULT_HEADER = "Jobs running now (slurm-sync; `slurm-sync motd show -u USER` for yours):"


@dataclass(frozen=True)
class Board:
    """What ``observe`` saw: the board's file names."""

    files: frozenset[str] = frozenset()


def notice_line(job: Job, show_names: bool = True) -> str:
    """One job's line on the board (pure: times are the job's, shown in UTC).

    >>> from slurm_sync.slurm.model import Job
    >>> notice_line(Job(job_id=42, name="train", user="alice", cluster="lab2411",
    ...                 hosts=("n1", "n2"), cpus=8, start_time=1795321801))
    'alice      42  train  on n1,n2 (8 cpus) since 2026-11-22 04:30 UTC'
    """
    since = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(job.start_time or 0))
    what = f"  {job.name}" if show_names and job.name else ""
    where = ",".join(job.hosts) or job.nodelist or "?"
    cpus = f" ({job.cpus} cpus)" if job.cpus else ""
    return f"{job.user or '?':<10} {job.display_id}{what}  on {where}{cpus} since {since}"


class MotdConnector(Connector):
    """Keeps one line per running job on a board folder, and a motd file made from it."""

    name: ClassVar[str] = "motd"
    schema: ClassVar[Mapping[str, Any]] = {
        "type": "object",
        "additionalProperties": False,
        "required": ["directory"],
        "properties": {
            "directory": {
                "type": "string",
                "pattern": "^/",
                "description": "the board: one file per running job (made on first use)",
            },
            "motd_file": {
                "type": "string",
                "pattern": "^/",
                "description": "rebuilt from the board after each change (e.g. in /etc/motd.d)",
            },
            "header": {"type": "string", "description": "the motd file's first line"},
            "exclude_users": {
                "type": "array",
                "items": {"type": "string", "minLength": 1},
                "uniqueItems": True,
                "description": "users whose jobs are never announced",
            },
            "show_job_names": {
                "type": "boolean",
                "description": "put job names on the board (default true; names can be private)",
            },
        },
    }
    kinds: ClassVar[tuple[Kind, ...]] = (ANNOUNCE, RETIRE)

    @classmethod
    def add_commands(cls, commands: Any) -> None:
        from slurm_sync_motd.commands import add_commands

        add_commands(commands)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.directory = str(settings["directory"])
        self.motd_file = settings.get("motd_file")
        self.header = str(settings.get("header", DEFAULT_HEADER))
        self.exclude = frozenset(settings.get("exclude_users", ()))
        self.show_names = bool(settings.get("show_job_names", True))

    def needs(self) -> SlurmNeeds:
        # Running jobs from squeue (to announce them while they run), and the sacct window
        # for the runs that ended (to retire them on Slurm's word, never from an absence).
        return SlurmNeeds(squeue=JobFilter(states=("R",)), sacct=True)

    def observe(self, view: View, snapshot: Snapshot) -> Board:
        return Board(board.list_board(self.directory))

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> Plan:
        seen = observed if isinstance(observed, Board) else Board()
        actions: list[Action] = []
        facts: list[Fact] = []
        announcing: set[str] = set()
        # The engine merges every connector's needs into one squeue: other states come too.
        running = [j for j in view.active if j.state is JobState.RUNNING
                   and j.start_time is not None and scope.covers(j)]
        if direction.includes(Direction.START):
            for job in sorted(running, key=lambda j: (j.start_time or 0, j.job_id)):
                key = delivery_key(job)
                if snapshot.done(ANNOUNCE.name, key) or key in announcing:
                    continue
                name = board.file_name(key)
                if job.user in self.exclude:
                    facts.append(Fact(ANNOUNCE.name, key,
                                      f"user {job.user} is in exclude_users: not announced"))
                elif name in seen.files:
                    facts.append(Fact(ANNOUNCE.name, key, f"{name} is on the board already"))
                else:
                    announcing.add(key)
                    actions.append(Action(self.name, ANNOUNCE.name, key, {
                        "file": name, "line": notice_line(job, self.show_names)},
                        "running, not on the board"))
        ended = [j for j in view.ended if j.source == "sacct" and j.state.finished
                 and j.start_time is not None and scope.covers(j)]
        queued = snapshot.queued.get(ANNOUNCE.name, frozenset())
        for job in sorted(ended, key=lambda j: (j.end_time or 0, j.job_id)):
            key = delivery_key(job)
            name = board.file_name(key)
            on_board = name in seen.files or key in announcing or key in queued
            never = not on_board and not snapshot.done(ANNOUNCE.name, key)
            if never and direction.includes(Direction.START):
                facts.append(Fact(ANNOUNCE.name, key, f"ended ({job.state.value}) before a "
                                  f"cycle saw it running: not announced"))
            if not direction.includes(Direction.STOP) or snapshot.done(RETIRE.name, key):
                continue
            if on_board:
                actions.append(Action(self.name, RETIRE.name, key, {"file": name},
                                      f"ended {job.state.value.lower()}"))
            else:
                facts.append(Fact(RETIRE.name, key, "ended: nothing on the board to take off"))
        return Plan(tuple(actions), tuple(facts))

    def apply(self, action: Action) -> Outcome:
        return self.apply_many([action])[0]

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for action in actions:
            name = str(action.payload["file"])
            try:
                if action.kind == ANNOUNCE.name:
                    board.write(self.directory, name, str(action.payload["line"]))
                    outcomes.append(Outcome.done(action, name))
                elif board.remove(self.directory, name):
                    outcomes.append(Outcome.done(action, name))
                else:
                    outcomes.append(Outcome.already_done(action, f"{name} was not on the board"))
            except OSError as exc:
                outcomes.append(Outcome.transient(
                    action, f"cannot change {os.path.join(self.directory, name)}: {exc.strerror}"))
        if self.motd_file and any(o.status.delivered for o in outcomes):
            try:
                board.render(str(self.motd_file), self.header, board.read_lines(self.directory))
            except OSError as exc:
                # The board changed but the motd does not show it: the batch is sent again
                # (writing and removing the files again is harmless) until the motd follows.
                why = f"cannot rewrite {self.motd_file}: {exc.strerror}"
                outcomes = [Outcome.transient(o.action, why) if o.status.delivered else o
                            for o in outcomes]
        return outcomes

    def check(self) -> list[str]:
        problems = []
        existing = self.directory
        while not os.path.exists(existing):  # the board's folder is made on first use
            existing = os.path.dirname(existing)
        if not os.path.isdir(existing):
            problems.append(f"{self.directory} (directory): {existing} is not a folder")
        elif not os.access(existing, os.W_OK | os.X_OK):
            problems.append(f"{self.directory} (directory): {existing} is not writable")
        if self.motd_file:
            folder = os.path.dirname(str(self.motd_file))
            if not os.path.isdir(folder):
                problems.append(f"{self.motd_file} (motd_file): {folder} does not exist")
            elif not os.access(folder, os.W_OK | os.X_OK):
                problems.append(f"{self.motd_file} (motd_file): {folder} is not writable")
        return problems
