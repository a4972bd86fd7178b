"""The Bank's effects: reports to the allocation service, holds and releases through Slurm's
runner API, and mode native's QOS writes through sacctmgr.

    outcome = apply_one(service, action)                          # start, stop
    outcomes = apply_batch(service, control, qos_admin, actions)  # hold, release, limit

Everything an action needs travels in its payload: an action read back from the outbox is
applied the same way. One outcome per action, never an exception for one action.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from slurm_sync.actions import Action, Outcome
from slurm_sync.connectors.bank.model import HOLD, LIMIT, RELEASE, START, STOP
from slurm_sync.connectors.bank.qos import QosAdmin
from slurm_sync.connectors.bank.service import AllocationService
from slurm_sync.errors import SlurmError
from slurm_sync.slurm.control import SlurmControl

__all__ = ["apply_batch", "apply_one", "write_limit"]

log = logging.getLogger(__name__)


def apply_one(service: AllocationService, action: Action, control: SlurmControl | None = None,
              qos_admin: QosAdmin | None = None) -> Outcome:
    """One report (start: ``POST``; end: ``PUT``, or added to the job's earlier runs); a hold,
    release or limit goes through ``apply_batch``."""
    record = action.payload.get("record")
    if action.kind == START and record is not None:
        return service.report_start(action, record)
    if action.kind == STOP and record is not None and action.payload.get("adds_to_earlier_runs"):
        return service.report_later_end(action, record)
    if action.kind == STOP and record is not None:
        return service.report_end(action, record)
    if action.kind in (HOLD, RELEASE, LIMIT):
        return apply_batch(service, control, qos_admin, [action])[0]
    return Outcome.permanent(action, f"the bank cannot apply {action.kind!r} with this payload")


def apply_batch(service: AllocationService, control: SlurmControl | None,
                qos_admin: QosAdmin | None, actions: Sequence[Action]) -> list[Outcome]:
    """Holds (each with its own comment), releases (one scontrol call) and limits; other
    kinds one by one."""
    if control is None:
        return [Outcome.transient(a, "not bound to Slurm") for a in actions]
    kinds = {a.kind for a in actions}
    if kinds == {LIMIT}:
        return [write_limit(qos_admin, a) for a in actions]
    if kinds - {HOLD, RELEASE}:
        return [apply_one(service, a, control, qos_admin) for a in actions]
    outcomes: dict[str, Outcome] = {}
    for kind in (HOLD, RELEASE):
        group = [a for a in actions if a.kind == kind]
        if not group:
            continue
        try:
            if kind == HOLD:
                for action in group:  # each its own comment
                    control.hold([int(action.payload["job_id"])],
                                 comment=str(action.payload["comment"]))
                    outcomes[action.key] = Outcome.done(action, "held")
            else:
                control.release([int(a.payload["job_id"]) for a in group])
                outcomes.update({a.key: Outcome.done(a, "released") for a in group})
        except (SlurmError, ValueError) as exc:
            for action in group:
                outcomes.setdefault(action.key, Outcome.transient(action, f"scontrol: {exc}"))
    return [outcomes[a.key] for a in actions]


def write_limit(qos_admin: QosAdmin | None, action: Action) -> Outcome:
    """Create the QOS, make it the account's default, set its limit: what is needed."""
    if qos_admin is None:
        return Outcome.skipped(action, "not bound to Slurm")
    p = action.payload
    minutes = None if p["minutes"] is None else int(p["minutes"])
    try:
        if p["create"]:
            qos_admin.create(p["qos"], p["tres"], minutes)
        elif p["set"]:
            qos_admin.set_limit(p["qos"], p["tres"], minutes)
        if p["attach"] or p["users"]:
            qos_admin.attach(p["qos"], p["account"], p["users"])
    except (SlurmError, ValueError) as exc:
        # not retried from the outbox: the next cycle plans from what Slurm then holds
        log.warning("QOS %s not written: %s", p["qos"], exc,
                    extra={"fields": {"connector": "bank"}})
        return Outcome.skipped(action, f"sacctmgr: {exc}")
    return Outcome.done(action, action.reason)
