"""Bank: service-unit accounting against an allocation service (the myBRC / ColdFront API of
slurm-banking-plugins), from outside Slurm.

    "connectors": {"bank": {
        "url": "https://mybrc.example.org/mybrc-rest", "token": {"file": "/etc/slurm-sync/bank"},
        "prices": {"savio": "0.75", "savio_bigmem": "1.67", "debug": "0"},
        "unpriced": "refuse", "mode": "hold", "on_unreachable": "fail_open"}}

One cycle, one module each:

    observe (observe.py): the service's answers for pending jobs, NSS's uids, in mode native
             Slurm's QOS side and each account's balance: an ``Observed`` value (model.py)
    plan    (plan.py):    pure: approve, hold or release pending jobs (mode ``hold``), deny
             (mode ``report``), report each started run (``POST /jobs/`` with the estimate)
             and each ended run (``PUT /jobs/{id}/`` with the actual amount), write each
             account's QOS limit (mode ``native``, limits.py)
    apply   (apply.py):   the HTTP calls (service.py); holds and releases through the runner
             API; QOS writes through sacctmgr (qos.py)

Settings (settings.py) are parsed once, with every default there; costs are cost.py's;
``slurm-sync bank reconcile`` is commands.py's. A service that cannot be reached is
``fail_open`` (the plugins' behaviour: approve, and say so) or ``fail_closed`` (treat as cannot
pay), logged either way. Reports wait in the outbox and the sacct window when the service is
down.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
from slurm_sync.connector import (
    Connector,
    Direction,
    Kind,
    Plan,
    Scope,
    SlurmContext,
    SlurmNeeds,
    Snapshot,
    View,
)
from slurm_sync.connectors.bank import commands
from slurm_sync.connectors.bank.apply import apply_batch, apply_one
from slurm_sync.connectors.bank.model import (
    APPROVE,
    DENY,
    HOLD,
    LIMIT,
    RELEASE,
    START,
    STOP,
    Observed,
)
from slurm_sync.connectors.bank.observe import observe
from slurm_sync.connectors.bank.plan import plan
from slurm_sync.connectors.bank.qos import QosAdmin
from slurm_sync.connectors.bank.service import SERVICES, AllocationService, drf_error
from slurm_sync.connectors.bank.settings import SCHEMA, BankSettings
from slurm_sync.errors import SlurmError
from slurm_sync.http import ServiceClient
from slurm_sync.slurm.control import SlurmControl
from slurm_sync.slurm.query import JobFilter

__all__ = ["BankConnector"]


class BankConnector(Connector):
    """Service units: enforce before start, report at start and end."""

    name: ClassVar[str] = "bank"
    schema: ClassVar[Mapping[str, Any]] = SCHEMA
    kinds: ClassVar[tuple[Kind, ...]] = (
        Kind(APPROVE, Direction.START),  # a fact: the service approved a pending job
        Kind(RELEASE, Direction.START, batched=True),
        Kind(LIMIT, Direction.START, batched=True),
        Kind(START, Direction.START),  # the run's start reported, charged its estimate
        Kind(HOLD, Direction.STOP, destructive=True, batched=True),
        Kind(STOP, Direction.STOP, destructive=True),  # the run's end, its actual amount
        Kind(DENY, Direction.START),  # a fact, mode report: "would hold", once per submission
    )

    @classmethod
    def add_commands(cls, commands_: Any) -> None:
        commands.add_commands(commands_)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.config = BankSettings.from_mapping(settings)
        token = self.secret("token").reveal()
        client = ServiceClient(self.config.url, headers={"Authorization": f"Token {token}"},
                               timeout=self.config.timeout, retries=1, error_message=drf_error)
        self.service: AllocationService = SERVICES[self.config.api](client)
        self.control: SlurmControl | None = None
        self.qos_admin: QosAdmin | None = None

    def bind(self, slurm: SlurmContext) -> None:
        self.control = SlurmControl(slurm.reader.runner, slurm.reader)
        self.qos_admin = QosAdmin(slurm.reader.runner)

    def needs(self) -> SlurmNeeds:
        # Pending jobs to check, running ones to report; the window for every start and end.
        return SlurmNeeds(squeue=JobFilter(states=("PD", "R", "CG", "S")), sacct=True)

    def close(self) -> None:
        self.service.close()

    def observe(self, view: View, snapshot: Snapshot) -> Observed:
        return observe(self.config, view, snapshot, self.service, self.qos_admin,
                       self.concurrency)

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> Plan:
        return plan(self.config, view, snapshot, direction, scope,
                    observed if isinstance(observed, Observed) else Observed())

    def apply(self, action: Action) -> Outcome:
        return apply_one(self.service, action, self.control, self.qos_admin)

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        return apply_batch(self.service, self.control, self.qos_admin, actions)

    def check(self) -> list[str]:
        problems = self.service.check()
        if self.config.mode == "native" and self.qos_admin is not None:
            try:
                problems += [f"mode native: {p}" for p in self.qos_admin.enforcement().problems()]
            except SlurmError as exc:
                problems.append(f"mode native: {exc}")
        return problems
