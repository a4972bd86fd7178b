"""Mode native, pure: the QOS limit an account's balance calls for, and what the service has
not been told yet.

    limit = Limit.of("lab", "bank_lab", native, balance, unsettled, usage, assoc)
    if limit.needs_write:
        actions.append(limit.action())   # create / attach / set GrpTRESMins, as needed

``GrpTRESMins = used + running + what the balance pays for``: Slurm counts the QOS's past usage
and the time limits of its running jobs against the limit, while the service's balance already
has them taken off.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from slurm_sync.actions import Action
from slurm_sync.connector import Snapshot, View, delivery_key
from slurm_sync.connectors.bank.cost import actual_cost, estimate
from slurm_sync.connectors.bank.model import LIMIT, START, STOP
from slurm_sync.connectors.bank.qos import AccountQos, QosUsage
from slurm_sync.connectors.bank.settings import NativeSettings, Prices

__all__ = ["LIMIT_SLACK_MINUTES", "Limit", "unsettled_su"]

#: a limit this close to the one Slurm holds is left alone: slurmctld shows used and running
#: minutes each rounded down, so their sum is up to two below the reservations while jobs run
#: (seen on the lab: a 2-cpu, 5-minute job showed 1 + 8); a write each cycle for that would
#: be a sacctmgr call a minute for nothing
LIMIT_SLACK_MINUTES = 2


@dataclass(frozen=True)
class Limit:
    """One account's QOS limit: what Slurm holds and what the balance says it should be."""

    account: str
    qos: str
    tres: str
    balance: Decimal | None  # None: unlimited
    minutes: int | None  # the GrpTRESMins to hold; None: no limit
    current: int | None
    exists: bool
    attached: bool
    users: tuple[str, ...]
    used: int = 0
    running: int = 0

    @classmethod
    def of(cls, account: str, qos: str, native: NativeSettings, balance: Decimal | None,
           unsettled: Decimal, usage: QosUsage | None, assoc: AccountQos) -> Limit:
        """``GrpTRESMins = used + running + what the balance pays for``. ``unsettled`` is what
        the service has not been told yet (runs started or ended since the last report)."""
        used = usage.used.get(native.tres, 0) if usage else 0
        running = usage.running.get(native.tres, 0) if usage else 0
        minutes = None
        if balance is not None:
            minutes = used + running + native.minutes(balance + unsettled)
        return cls(account, qos, native.tres, balance, minutes,
                   usage.limit.get(native.tres) if usage else None, usage is not None,
                   qos in assoc.qos and assoc.default_qos == qos,
                   assoc.users_without, used, running)

    @property
    def needs_write(self) -> bool:
        if not self.exists or not self.attached or self.users:
            return True
        if (self.minutes is None) != (self.current is None):
            return True
        return (self.minutes is not None and self.current is not None
                and abs(self.minutes - self.current) > LIMIT_SLACK_MINUTES)

    def action(self) -> Action:
        shown = "no limit" if self.minutes is None else f"{self.tres}={self.minutes}"
        said = ("unlimited" if self.balance is None else f"{self.balance} SU")
        steps = []
        if not self.exists:
            steps.append(f"create QOS {self.qos} (Flags=NoDecay)")
        if not self.attached or self.users:
            steps.append(f"make it the default QOS of account {self.account}")
        steps.append(f"GrpTRESMins {self.current if self.current is not None else 'none'} -> "
                     f"{shown}")
        why = (f"account {self.account}: balance {said}; used {self.used} + running "
               f"{self.running} min; " + ", ".join(steps))
        key = f"{self.account}/{self.qos}/{self.minutes}"
        return Action("bank", LIMIT, key, {
            "account": self.account, "qos": self.qos, "tres": self.tres,
            "minutes": self.minutes, "create": not self.exists,
            "set": self.exists and self.minutes != self.current,
            "attach": not self.attached, "users": list(self.users)}, why)


def unsettled_su(view: View, snapshot: Snapshot, prices: Prices) -> dict[str, Decimal]:
    """Per account, what the service's balance will still move by once this cycle's reports
    are in: minus the estimate of a run started and not reported, plus estimate - actual of a
    run whose start was reported and whose end was not, minus the actual of a run neither
    was reported for. Slurm's usage has all of these already."""
    out: dict[str, Decimal] = defaultdict(Decimal)
    seen: set[str] = set()
    for job in view.ended:
        key = delivery_key(job)
        if (job.source != "sacct" or not job.state.finished or not job.start_time
                or not job.hosts or key in seen):
            continue
        seen.add(key)
        if snapshot.done(STOP, key):
            continue
        actual = actual_cost(job, prices)
        if isinstance(actual, str):
            continue
        guess = estimate(job, prices)
        if snapshot.done(START, key) and isinstance(guess, Decimal):
            out[job.account or ""] += guess - actual
        else:
            out[job.account or ""] -= actual
    for job in view.active:
        key = delivery_key(job)
        if not job.start_time or not job.hosts or key in seen or snapshot.done(START, key):
            continue
        seen.add(key)
        guess = estimate(job, prices)
        if isinstance(guess, Decimal):
            out[job.account or ""] -= guess
    return dict(out)
