"""The values that pass from ``observe`` to ``plan`` (``Observed``), the Bank's action kinds,
and the keys it records them under.

    observed = Observed(
        uids={"alice": 5001},                                   # NSS, one lookup per user
        checks={"c/7/1790000000": Check(Decimal("4.50"), Answer(True))},   # can_submit_job
        accounts=(AccountBalance("lab", "bank_lab", assoc, usage, Decimal("12.00")),))
    plan(settings, view, snapshot, Direction.BOTH, Scope(), observed)

``Observed`` holds what the service, NSS and Slurm's QOS side answered, nothing decided: which
job is approved, held, released or denied, and which limit is written, is ``plan``'s word.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from slurm_sync.connectors.bank.qos import AccountQos, QosUsage
from slurm_sync.connectors.bank.service import Answer
from slurm_sync.slurm.model import Job

__all__ = [
    "APPROVE",
    "DENY",
    "HOLD",
    "HOLD_MARK",
    "LIMIT",
    "RELEASE",
    "START",
    "STOP",
    "AccountBalance",
    "Check",
    "Observed",
    "check_key",
    "uid_of",
]

APPROVE, HOLD, RELEASE, START, STOP = "approve", "hold", "release", "start", "stop"
DENY = "deny"
LIMIT = "limit"
#: how a hold's comment starts, so its owner (``squeue -o %k``) knows who held the job
HOLD_MARK = "slurm-sync bank:"


def check_key(job: Job) -> str:
    """A pending job is checked once per submission: ``cluster/job_id/submit_time``."""
    return f"{job.cluster or '-'}/{job.job_id}/{job.submit_time or 0}"


def uid_of(job: Job, uids: Mapping[str, int | None]) -> int | None:
    """The job owner's uid: squeue gives it; sacct's JSON does not, so ``uids`` (what NSS
    said of each user this cycle) does."""
    if job.uid is not None:
        return job.uid
    return uids.get(job.user) if job.user else None


@dataclass(frozen=True)
class Check:
    """What was asked of the service for one pending job, and its answer. ``total`` is the
    job's estimate plus the account's other approved pending jobs; both are None when nothing
    was asked (the job cannot be estimated, costs nothing, or its owner has no uid)."""

    total: Decimal | None = None
    answer: Answer | None = None


@dataclass(frozen=True)
class AccountBalance:
    """Mode native, one account: its QOS, Slurm's association and usage of that QOS (None: no
    such QOS yet), and what the service says it can still spend (None: no limit)."""

    account: str
    qos: str
    assoc: AccountQos
    usage: QosUsage | None
    balance: Decimal | None


def _frozen(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Observed:
    """What ``observe`` read in one cycle, for ``plan``:

    - ``uids``: user name -> uid (None: NSS knows no such user), for each owner without one;
    - ``checks``: check key (``check_key``) -> what the service said of that pending job, for
      each pending job observe considered (not approved yet, or held by the bank);
    - ``accounts``: mode native, the accounts whose balance and QOS are known this cycle.
    """

    uids: Mapping[str, int | None] = field(default_factory=dict)
    checks: Mapping[str, Check] = field(default_factory=dict)
    accounts: tuple[AccountBalance, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "uids", _frozen(self.uids))
        object.__setattr__(self, "checks", _frozen(self.checks))
        object.__setattr__(self, "accounts", tuple(self.accounts))
