"""The allocation services the Bank connector talks to, behind one small interface.

    service = MybrcService(ServiceClient(url, headers={"Authorization": f"Token {token}"}))
    service.can_pay(Decimal("4.50"), uid=5001, account="fc_lab")   # Answer(ok=True, ...)
    service.balance("fc_lab", uid=5001, hint=Decimal("12.00"))     # Decimal('12.00')
    service.report_start(action, record)                           # an Outcome

The connector decides what to ask and what an answer means for a job; a service class only
knows its own wire format. Adding a ColdFront-style service is one more class with these five
methods, and one more value of the connector's ``api`` setting.

myBRC (ucb-rit's ColdFront fork, the API slurm-banking-plugins speak) has no call that tells a
balance: ``balance`` finds it by bisecting ``can_submit_job`` to the cent, starting from the
last balance seen, so an unchanged balance costs two requests.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from sync.actions import Action, Outcome
from sync.http import ServiceClient, outcome_of

__all__ = ["SERVICES", "AllocationService", "Answer", "MybrcService", "Unanswered"]

CENT = Decimal("0.01")
#: The largest cost myBRC accepts (11 digits, 2 of them decimals); a balance that pays this
#: much is taken as unlimited.
MYBRC_MAX = Decimal("999999999.99")


@dataclass(frozen=True)
class Answer:
    """The service's word on one cost: ``ok`` True or False, or None when it gave none (down,
    timed out, a 5xx, a 401: ``message`` says which)."""

    ok: bool | None
    message: str = ""
    #: the request was malformed in the service's eyes (myBRC: HTTP 400); ``ok`` is False
    refused: bool = False


class Unanswered(Exception):
    """The service gave no answer to a question a balance needed."""


class AllocationService(Protocol):
    """What the Bank connector needs of an allocation service."""

    def can_pay(self, amount: Decimal, uid: int, account: str) -> Answer:
        """Whether ``uid`` may spend ``amount`` more service units in ``account``."""

    def balance(self, account: str, uid: int, hint: Decimal | None = None) -> Decimal | None:
        """What ``uid`` may still spend in ``account`` (None: no limit); raises
        ``Unanswered``. ``hint`` is the last balance seen, to ask less."""

    def report_start(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        """Record a run that started, charged its estimate."""

    def report_end(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        """Record a run that ended, charged its actual amount (idempotent)."""

    def check(self) -> list[str]:
        """Problems with the address or the token, for ``slurm-sync check``."""

    def close(self) -> None:
        """Release the HTTP session."""


class MybrcService:
    """The myBRC REST API (``/can_submit_job/``, ``/jobs/``), as slurm-banking-plugins use it."""

    def __init__(self, client: ServiceClient) -> None:
        self.client = client

    def can_pay(self, amount: Decimal, uid: int, account: str) -> Answer:
        reply = self.client.get(f"/can_submit_job/{amount}/{uid}/{account}/")
        body = reply.body if isinstance(reply.body, Mapping) else {}
        if reply.ok and isinstance(body.get("success"), bool):
            return Answer(body["success"], str(body.get("message") or ""))
        if reply.status == 400:
            return Answer(False, reply.describe(), refused=True)
        return Answer(None, reply.describe())

    def balance(self, account: str, uid: int, hint: Decimal | None = None) -> Decimal | None:
        def pays(amount: Decimal) -> bool:
            answer = self.can_pay(amount, uid, account)
            if answer.ok is None:
                raise Unanswered(answer.message)
            return answer.ok

        if hint is not None and hint >= 0:
            if pays(hint):
                if hint >= MYBRC_MAX or not pays(hint + CENT):
                    return hint  # unchanged: two requests
                low, high = hint + CENT, None
            else:
                low, high = Decimal("0.00"), hint
        else:
            low, high = Decimal("0.00"), None
        if high is None:  # grow until a cost is refused
            step = max(low, Decimal(1))
            while True:
                probe = min(low + step, MYBRC_MAX)
                if not pays(probe):
                    high = probe
                    break
                if probe >= MYBRC_MAX:
                    return None
                low, step = probe, step * 2
        elif not pays(low):
            return Decimal("0.00")  # cannot pay even nothing: no allocation, not a member
        # low pays, high does not: bisect in cents
        lo, hi = int(low / CENT), int(high / CENT)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pays(mid * CENT):
                lo = mid
            else:
                hi = mid
        return lo * CENT

    def report_start(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        reply = self.client.post("/jobs/", json=dict(record))
        body = reply.body if isinstance(reply.body, Mapping) else {}
        if reply.status == 400 and "already exists" in str(body.get("jobslurmid", "")):
            return Outcome.already_done(action, "the service has this job already")
        return outcome_of(action, reply)

    def report_end(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        reply = self.client.put(f"/jobs/{record['jobslurmid']}/", json=dict(record))
        return outcome_of(action, reply)

    def check(self) -> list[str]:
        reply = self.client.get("/jobs/0/")
        if reply.status in (200, 404):
            return []
        return [f"allocation service: {reply.describe()}"]

    def close(self) -> None:
        self.client.close()


#: the connector's ``api`` setting -> the class that speaks it
SERVICES: dict[str, type[MybrcService]] = {"mybrc": MybrcService}
