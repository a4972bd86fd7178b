"""What connectors plan and what applying a plan gave: small values passed between the engine,
the connectors and the store.

    >>> action = Action(connector="events", kind="start", key="lab2411/42/1790000000",
    ...                 payload={"job_id": 42}, reason="running, not delivered")
    >>> Outcome.done(action).status
    <Status.DONE: 'done'>

An ``Action`` is what a connector wants done for one job (start a record, stop it, submit,
cancel, hold...). Its ``key`` identifies the job's delivery across runs (usually
``cluster/job_id/start_time``) so a retried or repeated action is recognised as the same one.
An ``Outcome`` says how applying it went; only TRANSIENT outcomes are retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

__all__ = ["Action", "Outcome", "RunKey", "Status"]


class Status(str, Enum):
    """How applying one action went."""

    DONE = "done"  # the service now has it
    ALREADY_DONE = "already_done"  # it had it already (idempotent success: 422 on start, ...)
    TRANSIENT = "transient"  # timeout, 5xx, 429: retried later from the outbox
    PERMANENT = "permanent"  # the service refuses this payload: recorded, reported, not retried
    SKIPPED = "skipped"  # not attempted, with the reason

    @property
    def delivered(self) -> bool:
        """`s.delivered` is true when the service has what the action meant to give it."""
        return self in (Status.DONE, Status.ALREADY_DONE)


@dataclass(frozen=True)
class Action:
    """One thing a connector wants done, printable as one row of a plan."""

    connector: str
    kind: str
    key: str
    payload: Mapping[str, Any] = field(default_factory=dict, hash=False)
    reason: str = ""


@dataclass(frozen=True)
class Outcome:
    """How applying ``action`` went; ``retry_after`` (seconds) is a hint for TRANSIENT ones."""

    action: Action
    status: Status
    detail: str = ""
    retry_after: float | None = None

    @classmethod
    def done(cls, action: Action, detail: str = "") -> Outcome:
        return cls(action, Status.DONE, detail)

    @classmethod
    def already_done(cls, action: Action, detail: str = "") -> Outcome:
        return cls(action, Status.ALREADY_DONE, detail)

    @classmethod
    def transient(
        cls, action: Action, detail: str, retry_after: float | None = None
    ) -> Outcome:
        return cls(action, Status.TRANSIENT, detail, retry_after)

    @classmethod
    def permanent(cls, action: Action, detail: str) -> Outcome:
        return cls(action, Status.PERMANENT, detail)

    @classmethod
    def skipped(cls, action: Action, detail: str) -> Outcome:
        return cls(action, Status.SKIPPED, detail)


@dataclass(frozen=True, order=True)
class RunKey:
    """A delivery key ``cluster/job_id/start_time`` (``sync.connector.delivery_key``) taken
    apart; runs of one job sort by start.

    >>> RunKey.parse("lab2411/42/1790000000")
    RunKey(cluster='lab2411', job_id=42, start=1790000000)
    >>> RunKey.parse("acme/pipeline/7") is None
    True
    """

    cluster: str
    job_id: int
    start: int

    @classmethod
    def parse(cls, key: str) -> RunKey | None:
        """The parts of ``key``, None for a key of another form."""
        parts = key.split("/")
        if len(parts) != 3 or not all(p.isascii() and p.isdigit() for p in parts[1:]):
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))

    @property
    def job(self) -> tuple[str, int]:
        """The job this run belongs to: (cluster, job id)."""
        return self.cluster, self.job_id
