"""The allocation services the Bank connector talks to, behind one small interface, and
myBRC's wire format (its job record, its error bodies).

    service = MybrcService(ServiceClient(url, headers={"Authorization": f"Token {token}"}))
    service.can_pay(Decimal("4.50"), uid=5001, account="fc_lab")   # Answer(ok=True, ...)
    service.balance("fc_lab", uid=5001, hint=Decimal("12.00"))     # Decimal('12.00')
    service.report_start(action, record)                           # an Outcome

The connector decides what to ask and what an answer means for a job; a service class only
knows its own wire format. Adding a ColdFront-style service is one more class with these five
methods, and one more value of the connector's ``api`` setting.

myBRC (ucb-rit's ColdFront fork, the API slurm-banking-plugins speak) has no call that tells a
balance: ``balance`` finds it by searching ``can_submit_job`` (galloping from the last balance
seen, then bisecting), to the cent or the resolution asked for; an unchanged balance costs two
requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import ROUND_UP, Decimal
from typing import Any, Protocol

from slurm_sync.actions import Action, Outcome
from slurm_sync.http import ServiceClient, outcome_of
from slurm_sync.slurm.model import Job

__all__ = [
    "SERVICES",
    "AllocationService",
    "Answer",
    "MybrcService",
    "Unanswered",
    "drf_error",
    "job_record",
]

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

    def balance(self, account: str, uid: int, hint: Decimal | None = None,
                resolution: Decimal = CENT) -> Decimal | None:
        """What ``uid`` may still spend in ``account``, to within ``resolution`` and never
        more (None: no limit); raises ``Unanswered``. ``hint`` is the last balance seen, so
        an unchanged one costs few requests."""

    def report_start(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        """Record a run that started, charged its estimate."""

    def report_end(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        """Record a run that ended, charged its actual amount (idempotent)."""

    def report_later_end(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        """Record the end of a requeued job's later run on the job's one record: its actual
        amount is added to what the record holds for the earlier runs (idempotent)."""

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

    def balance(self, account: str, uid: int, hint: Decimal | None = None,
                resolution: Decimal = CENT) -> Decimal | None:
        step_su = max(resolution.quantize(CENT, rounding=ROUND_UP), CENT)
        top = int(MYBRC_MAX / step_su)

        def pays(k: int) -> bool:
            answer = self.can_pay(min(k * step_su, MYBRC_MAX), uid, account)
            if answer.ok is None:
                raise Unanswered(answer.message)
            return answer.ok

        # find lo (pays) and hi (does not), in steps of step_su, galloping from the hint
        if hint is not None and hint >= 0:
            k = min(int(hint / step_su), top)
            if pays(k):
                if k >= top:
                    return None
                if not pays(k + 1):
                    return k * step_su  # unchanged: two requests
                lo, hi, stride = k + 1, None, 2
            else:
                hi, stride = k, 1
                while True:  # down
                    probe = max(hi - stride, 0)
                    if pays(probe):
                        lo = probe
                        break
                    if probe == 0:
                        return Decimal("0.00")  # cannot pay even nothing
                    hi, stride = probe, stride * 2
        else:
            lo, hi, stride = 0, None, max(1, int(Decimal(1) / step_su))
        while hi is None:  # up
            probe = min(lo + stride, top)
            if not pays(probe):
                hi = probe
            elif probe >= top:
                return None  # pays the most the API can ask: unlimited
            else:
                lo, stride = probe, stride * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if pays(mid):
                lo = mid
            else:
                hi = mid
        if lo == 0 and not pays(0):
            return Decimal("0.00")
        return (lo * step_su).quantize(CENT)

    def report_start(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        reply = self.client.post("/jobs/", json=dict(record))
        body = reply.body if isinstance(reply.body, Mapping) else {}
        if reply.status == 400 and "already exists" in str(body.get("jobslurmid", "")):
            return Outcome.already_done(action, "the service has this job already")
        return outcome_of(action, reply)

    def report_end(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        reply = self.client.put(f"/jobs/{record['jobslurmid']}/", json=dict(record))
        return outcome_of(action, reply)

    def report_later_end(self, action: Action, record: Mapping[str, Any]) -> Outcome:
        """myBRC keeps one record per job id: read it, then PUT this run's dates with the
        amount it holds plus this run's. A record that already carries this run's start and an
        end is this very report, delivered before (a lost reply, a kill): nothing is added
        twice."""
        path = f"/jobs/{record['jobslurmid']}/"
        reply = self.client.get(path)
        if reply.status == 404:
            return self.report_end(action, record)  # no earlier run was recorded
        body = reply.body if isinstance(reply.body, Mapping) else None
        if not reply.ok or body is None:
            return outcome_of(action, reply) if not reply.ok else Outcome.transient(
                action, f"GET {path}: the reply is not a job record")
        held_start, this_start = body.get("startdate"), record.get("startdate")
        try:
            held = Decimal(str(body.get("amount") or "0"))
        except ArithmeticError:
            return Outcome.transient(action, f"GET {path}: amount {body.get('amount')!r} is "
                                             "not a number")
        if held_start == this_start:
            if body.get("enddate"):
                return Outcome.already_done(action, "the service has this run's end already")
            held = Decimal(0)  # the record was made for this run: nothing earlier on it
        elif isinstance(held_start, str) and isinstance(this_start, str) and (
                _instant(held_start) > _instant(this_start)):
            return Outcome.permanent(
                action, f"the service's record of job {record['jobslurmid']} holds a later run "
                        f"(start {held_start}); this run's {record.get('amount')} SU are not "
                        "added to it")
        amount = (held + Decimal(str(record["amount"]))).quantize(CENT)
        reply = self.client.put(path, json={**record, "amount": str(amount)})
        outcome = outcome_of(action, reply)
        if outcome.status.delivered:
            return Outcome(action, outcome.status,
                           f"{outcome.detail}; {held} SU of earlier runs + {record['amount']}")
        return outcome

    def check(self) -> list[str]:
        reply = self.client.get("/jobs/0/")
        if reply.status in (200, 404):
            return []
        return [f"allocation service: {reply.describe()}"]

    def close(self) -> None:
        self.client.close()


def _iso(epoch: int | None) -> str | None:
    if not epoch:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def job_record(job: Job, amount: Decimal, uid: int, *, ended: bool) -> dict[str, Any]:
    """The myBRC job record of one run (start: the estimate; end: the actual amount)."""
    record: dict[str, Any] = {
        "jobslurmid": str(job.job_id), "userid": str(uid), "accountid": job.account or "",
        "amount": str(amount), "jobstatus": "RUNNING" if not ended else job.state.value,
        "partition": job.partition, "qos": job.qos,
        "submitdate": _iso(job.submit_time), "startdate": _iso(job.start_time),
        "nodes": [{"name": h} for h in job.hosts],
        "num_cpus": job.tres_allocated.get("cpu") or job.cpus,
        "num_alloc_nodes": job.node_count,
    }
    if ended:
        elapsed = (job.end_time or 0) - (job.start_time or 0)
        hours = round(max(elapsed, 0) / 3600, 6)
        record.update({"enddate": _iso(job.end_time), "raw_time": hours,
                       "cpu_time": round(hours * (record["num_cpus"] or 0), 6)})
    return record


def drf_error(body: Mapping[str, Any]) -> str:
    """myBRC's error bodies (Django REST framework): ``{"detail": "..."}``, or per field
    ``{field: [message, ...]}``, as ``field: message; ...``."""
    if isinstance(body.get("detail"), str):
        return str(body["detail"])
    parts = []
    for name, value in list(body.items())[:3]:
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            parts.append(f"{name}: {value[0]}")
    return "; ".join(parts)


def _instant(text: str) -> datetime:
    """An ISO 8601 date of a job record as an aware datetime (naive ones taken as UTC)."""
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return datetime.min.replace(tzinfo=timezone.utc)
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


#: the connector's ``api`` setting -> what makes a service of it from an HTTP client (any
#: class with the methods of AllocationService; it need not derive from MybrcService)
SERVICES: dict[str, Callable[[ServiceClient], AllocationService]] = {"mybrc": MybrcService}
