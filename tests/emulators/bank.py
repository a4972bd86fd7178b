"""An emulator of the myBRC allocation service (the ColdFront fork behind ucb-rit's
slurm-banking-plugins), for the Bank connector's tests.

The service keeps, per account (a Slurm account, a ColdFront project), an allocation of service
units (SU) and their usage, and per user within the account a second allocation and usage. The
emulator speaks the part of the myBRC REST API that the plugins and the reconciliation scripts use:

``GET /can_submit_job/{job_cost}/{user_id}/{account_id}/``
    ``200 {"success": bool, "message": str}``; the job_submit plugin reads only ``success``.
    Checked in ColdFront's order: each argument non-empty after stripping; ``job_cost`` a
    decimal, not negative, at most 11 digits and 2 decimal places; ``user_id`` a known cluster
    UID; ``account_id`` a known account. Any of these failing is ``400 {"success": false,
    "message": ...}``. Then a user who is no member of the account, or an account without an
    active compute allocation, is ``200`` with ``success: false``. An account with an infinite
    allocation always passes. Otherwise the job passes unless ``cost + account usage >
    account allocation`` or ``cost + user usage > user allocation`` (reaching the allocation
    exactly still passes). ``emu.allow_all_jobs = True`` is ColdFront's ``ALLOW_ALL_JOBS``:
    every request passes, before any validation.
``POST /jobs/``
    Creates a job record; ``201`` with the record. When the record has an ``amount`` and valid
    dates (see below), the amount is added to both the account's and the user's usage, even
    when that overdraws ("permitted by design"). A jobslurmid that already has a record is a
    ``400`` naming ``jobslurmid`` and changes nothing: that is what Django REST framework's
    unique check on the primary key does, and the spank plugin, which can POST the same job
    from several contexts, relies on the server refusing the repeats.
``PUT /jobs/{jobslurmid}/``
    Updates the record; ``200`` with it. With an ``amount`` and valid dates, both usages move by
    ``amount - stored amount``, each floored at 0, so the same PUT twice changes nothing the
    second time. A PUT for a job with no record creates it and adds the full amount: ColdFront
    does this so that a lost start POST is made good by the completion PUT, and reconciliation
    relies on it. ``emu.put_upserts = False`` answers ``404 {"detail": "Not found."}`` instead.
    Fields left out keep their stored values; ``nodes`` are added to the stored ones. The user
    and the account must match the stored ones (``400`` naming the field).
``GET /jobs/{jobslurmid}/``
    The record, or ``404 {"detail": "Not found."}``.

Job records use the spec's field names: ``jobslurmid`` (required, at most 150 characters),
``userid`` (required, the cluster UID as a string), ``accountid`` (required, the account name),
``amount`` (decimal, 0 to 100000000.00, at most 2 decimal places; 0.00 when left out),
``submitdate``, ``startdate``, ``enddate`` (ISO 8601, nullable), ``jobstatus``, ``partition``,
``qos`` (at most 50 characters, nullable), ``nodes`` (``[{"name": ...}]``, names at most 30
characters), ``num_cpus``, ``num_req_nodes``, ``num_alloc_nodes`` (integers, nullable),
``raw_time``, ``cpu_time`` (numbers, nullable). Records come back in the same shape, ``amount`` as
a string with 2 decimal places and dates in UTC with a ``Z``. Malformed input is answered as
Django REST framework answers it: ``400`` with ``{field: [message, ...]}``, so the key names the
bad field, all bad fields at once, and ``{"non_field_errors": [...]}`` for checks across fields
(dates out of order; a user who is no member of the account; an account with no active compute
allocation). Keys the record does not have are ignored, as the real server ignores them.

"Valid dates" (ColdFront's ``validate_job_dates``): the record has ``submitdate`` and
``startdate`` (and, for a PUT, ``enddate``); the job did not start before the allocation's
``start``; for a PUT it did not end after the allocation's ``end``. Otherwise the record is stored
but no usage changes: the real service logs a warning and carries on.

Every request needs ``Authorization: Token <token>``; otherwise ``401 {"detail": ...}`` with
``WWW-Authenticate: Token``, as Django REST framework's TokenAuthentication answers.
``emu.down = True`` answers every request ``503``; ``emu.faults`` gives latency, a share of 5xx,
timeouts and rate limits (see ``base``).

Where neither the reference notes nor the ColdFront source settle a point, the emulator does the
simplest thing:

- It serves at the root; ``emu.url`` plays the plugins' ``[API] url`` (myBRC's ``/mybrc-rest``
  or ColdFront's ``/api`` prefix belongs in that url). Paths must end with a slash; one without
  is a 404 (Django would redirect a GET and fail a POST).
- Every account counts as one with a computing allowance (ColdFront lets accounts without an
  allowance prefix through unchecked). Give an account an infinite allocation to get that.
- One token, with every right: there are no read-only users.
- A PUT whose body ``jobslurmid`` differs from the one in the path is a ``400`` naming
  ``jobslurmid``.
- Dates without a zone are UTC. An allocation without ``start`` or ``end`` is unbounded that way.
- Bodies are read as JSON whatever the Content-Type; an empty body is ``{}``.
- ``GET /jobs/`` (the paginated list) and ``PATCH`` are not emulated (405).

Amounts given to the test helpers are rounded half-up to 2 decimal places, as the plugins round
costs; amounts on the wire with more places are refused, as ColdFront refuses them.
"""

from __future__ import annotations

import math
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from .base import Emulator, Faults, Reply, Request, Route

__all__ = ["Bank", "su"]

CENT = Decimal("0.01")
ZERO = Decimal("0.00")
INFINITE = Decimal("Infinity")
MAX_DIGITS = 11  # ColdFront's DECIMAL_MAX_DIGITS
MAX_PLACES = 2  # ColdFront's DECIMAL_MAX_PLACES
ALLOCATION_MAX = Decimal("100000000.00")
INT32 = (-(2**31), 2**31 - 1)
FIRST_AUTO_UID = 50001

#: The fields of a job record, in the order the service returns them.
JOB_FIELDS = (
    "jobslurmid", "submitdate", "startdate", "enddate", "userid", "accountid", "amount",
    "jobstatus", "partition", "qos", "nodes", "num_cpus", "num_req_nodes", "num_alloc_nodes",
    "raw_time", "cpu_time",
)
REQUIRED = frozenset({"jobslurmid", "userid", "accountid"})
NOT_NULL = frozenset({"jobslurmid", "userid", "accountid", "amount", "nodes"})

_DATETIME = re.compile(
    r"(?P<year>\d{4})-(?P<month>\d{1,2})-(?P<day>\d{1,2})"
    r"[T ](?P<hour>\d{1,2}):(?P<minute>\d{1,2})"
    r"(?::(?P<second>\d{1,2})(?:[.,](?P<micro>\d{1,6})\d{0,6})?)?"
    r"\s*(?P<tz>Z|[+-]\d{2}(?::?\d{2})?)?\Z"
)
_DATETIME_HELP = ("Datetime has wrong format. Use one of these formats instead: "
                  "YYYY-MM-DDThh:mm[:ss[.uuuuuu]][+HH:MM|-HH:MM|Z].")


def su(value: Decimal | float | str) -> Decimal:
    """``value`` as service units: a Decimal rounded half-up to 2 places (infinity stays)."""
    number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if number.is_nan():
        raise ValueError(f"not a number of service units: {value!r}")
    if number.is_infinite():
        return number
    return number.quantize(CENT, rounding=ROUND_HALF_UP)


@dataclass
class _Member:
    """A user's allocation and usage within one account."""

    allocation: Decimal
    usage: Decimal = ZERO


@dataclass
class _Account:
    """An account (ColdFront project); ``allocation`` None: no active compute allocation."""

    name: str
    allocation: Decimal | None = None
    usage: Decimal = ZERO
    start: datetime | None = None
    end: datetime | None = None
    members: dict[str, _Member] = field(default_factory=dict)  # by cluster UID


@dataclass
class _Job:
    """A stored job record, in Python values."""

    jobslurmid: str
    userid: str
    accountid: str
    amount: Decimal = ZERO
    submitdate: datetime | None = None
    startdate: datetime | None = None
    enddate: datetime | None = None
    jobstatus: str | None = None
    partition: str | None = None
    qos: str | None = None
    nodes: list[str] = field(default_factory=list)
    num_cpus: int | None = None
    num_req_nodes: int | None = None
    num_alloc_nodes: int | None = None
    raw_time: float | None = None
    cpu_time: float | None = None

    def render(self) -> dict[str, Any]:
        """The record as the service returns it."""
        out: dict[str, Any] = {}
        for name in JOB_FIELDS:
            value = getattr(self, name)
            if isinstance(value, datetime):
                value = _render_datetime(value)
            elif isinstance(value, Decimal):
                value = str(value)
            elif name == "nodes":
                value = [{"name": node} for node in value]
            out[name] = value
        return out


class _Invalid(Exception):
    """One field's errors, in Django REST framework's shape (a list of messages, or nested)."""

    def __init__(self, detail: str | list[Any] | dict[str, Any]) -> None:
        super().__init__(detail)
        self.detail: list[Any] | dict[str, Any] = [detail] if isinstance(detail, str) else detail


class Bank(Emulator):
    """The myBRC/ColdFront allocation service, in memory; see the module docstring.

    >>> with Bank(token="s3cret") as bank:                     # doctest: +SKIP
    ...     bank.set_allocation("fc_lab", 1000)
    ...     bank.set_user_allocation("fc_lab", 40001, 300)
    ...     requests.get(bank.url + "/can_submit_job/250.00/40001/fc_lab/",
    ...                  headers={"Authorization": "Token s3cret"}).json()
    {'success': True, 'message': 'A job with job_cost 250.00 can be submitted.'}
    """

    def __init__(self, token: str = "bank-token", faults: Faults | None = None) -> None:
        super().__init__(faults)
        self.token = token
        #: Every request answers 503 while True.
        self.down = False
        #: ColdFront's ALLOW_ALL_JOBS: can_submit_job says yes to anything.
        self.allow_all_jobs = False
        #: A PUT for a job without a record creates it (ColdFront); False: 404.
        self.put_upserts = True
        self._accounts: dict[str, _Account] = {}
        self._users: dict[str, str] = {}  # cluster UID -> username
        self._jobs: dict[str, _Job] = {}

    def __enter__(self) -> Bank:
        self.start()
        return self

    # --- test helpers --------------------------------------------------------------------------

    def reset(self, faults: Faults | None = None) -> None:
        """Forget every account, user, job and request, and switch all faults and flags off.

        For a server shared between tests: starting and stopping one costs about half a second.
        """
        with self.lock:
            self.faults = faults or Faults()
            self.down = False
            self.allow_all_jobs = False
            self.put_upserts = True
            self._accounts.clear()
            self._users.clear()
            self._jobs.clear()
            self.seen.clear()
            self._hits.clear()

    def add_user(self, username: str, uid: int | str) -> None:
        """Make ``username`` a cluster user with ``uid`` (helpers also make users on first use)."""
        uid = str(uid)
        with self.lock:
            known = self._uid_of(username)
            if known is not None and known != uid:
                raise ValueError(f"user {username} already has uid {known}")
            if uid in self._users and self._users[uid] != username:
                raise ValueError(f"uid {uid} already belongs to {self._users[uid]}")
            self._users[uid] = username

    def set_allocation(self, account: str, amount: Decimal | float | str | None, *,
                       start: datetime | None = None, end: datetime | None = None) -> None:
        """Give ``account`` (made if new) an allocation of ``amount`` SU, from ``start`` to ``end``.

        ``amount`` None: the account has no active compute allocation; ``float("inf")`` or
        ``"Infinity"``: it has infinite service units and every job may be submitted.
        """
        with self.lock:
            entry = self._account(account, create=True)
            entry.allocation = None if amount is None else su(amount)
            entry.start = None if start is None else _utc(start)
            entry.end = None if end is None else _utc(end)

    def set_user_allocation(self, account: str, user_or_uid: int | str,
                            amount: Decimal | float | str) -> None:
        """Make the user a member of ``account`` (both made if new) with ``amount`` SU of it.

        ``user_or_uid``: a UID (an int, or a string of digits) or a username. A new UID gets the
        username ``user<uid>``; a new username gets the next free UID from 50001.
        """
        with self.lock:
            entry = self._account(account, create=True)
            uid = self._uid(user_or_uid, create=True)
            member = entry.members.get(uid)
            if member is None:
                entry.members[uid] = _Member(su(amount))
            else:
                member.allocation = su(amount)

    def set_usage(self, account: str, amount: Decimal | float | str) -> None:
        """Set the account's usage, as if earlier jobs had been charged."""
        with self.lock:
            self._account(account).usage = su(amount)

    def set_user_usage(self, account: str, user_or_uid: int | str,
                       amount: Decimal | float | str) -> None:
        """Set the user's usage within ``account``."""
        with self.lock:
            self._member(account, user_or_uid).usage = su(amount)

    def usage(self, account: str) -> Decimal:
        """The account's usage in SU."""
        with self.lock:
            return self._account(account).usage

    def user_usage(self, account: str, user_or_uid: int | str) -> Decimal:
        """The user's usage within ``account`` in SU."""
        with self.lock:
            return self._member(account, user_or_uid).usage

    def job_ids(self) -> list[str]:
        """Every jobslurmid with a record."""
        with self.lock:
            return sorted(self._jobs)

    def job(self, jobslurmid: str | int) -> dict[str, Any] | None:
        """The stored record of a job, as the API returns it, or None."""
        with self.lock:
            record = self._jobs.get(str(jobslurmid))
            return None if record is None else record.render()

    # --- the service ---------------------------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        return [
            ("GET", r"/can_submit_job/(?P<job_cost>[^/]*)/(?P<user_id>[^/]*)/"
                    r"(?P<account_id>[^/]*)/", self._can_submit_job),
            ("POST", r"/jobs/", self._create),
            ("PUT", r"/jobs/(?P<jobslurmid>[^/.]+)/", self._update),
            ("GET", r"/jobs/(?P<jobslurmid>[^/.]+)/", self._retrieve),
        ]

    def authorize(self, request: Request) -> Reply | None:
        header = request.header("authorization") or ""
        parts = header.split()
        if not parts or parts[0].lower() != "token":
            return self._unauthorized("Authentication credentials were not provided.")
        if len(parts) == 1:
            return self._unauthorized("Invalid token header. No credentials provided.")
        if len(parts) > 2:
            return self._unauthorized(
                "Invalid token header. Token string should not contain spaces.")
        if parts[1] != self.token:
            return self._unauthorized("Invalid token.")
        return None

    def error_body(self, status: int, message: str) -> Any:
        return {"detail": message}

    def _fault(self) -> Reply | None:
        if self.down:
            return Reply(503, self.error_body(503, "Service Unavailable"))
        return super()._fault()

    def _unauthorized(self, message: str) -> Reply:
        return Reply(401, {"detail": message}, {"WWW-Authenticate": "Token"})

    def _can_submit_job(self, request: Request) -> Reply:
        raw_cost, raw_uid, raw_account = (urllib.parse.unquote(request.params[name]) for name
                                          in ("job_cost", "user_id", "account_id"))

        def answer(status: int, success: bool, message: str) -> Reply:
            return Reply(status, {"success": success, "message": message})

        affirmative = answer(200, True, f"A job with job_cost {raw_cost} can be submitted.")
        if self.allow_all_jobs:
            return affirmative
        text_cost, uid, name = raw_cost.strip(), raw_uid.strip(), raw_account.strip()
        for label, text in (("job_cost", text_cost), ("user_id", uid), ("account_id", name)):
            if not text:
                return answer(400, False, f"{label} {text} is not a nonempty string.")
        try:
            cost = Decimal(text_cost)
        except InvalidOperation as exc:
            return answer(400, False, f"Encountered exception {exc} when converting job_cost "
                                      f"{text_cost} to a decimal.")
        if not cost.is_finite():
            return answer(400, False, f"job_cost {text_cost} is not a finite decimal.")
        sign, digits, exponent = cost.as_tuple()
        if sign:
            return answer(400, False, f"job_cost {cost} is not nonnegative.")
        if len(digits) > MAX_DIGITS:
            return answer(400, False, f"job_cost {cost} has greater than {MAX_DIGITS} digits.")
        if abs(int(exponent)) > MAX_PLACES:
            return answer(400, False, f"job_cost {cost} has greater than {MAX_PLACES} decimal "
                                      f"places.")
        if uid not in self._users:
            return answer(400, False, f"No user exists with user_id {uid}.")
        account = self._accounts.get(name)
        if account is None:
            return answer(400, False, f"No account exists with account_id {name}.")
        refusal = self._membership_problem(uid, account)
        if refusal is not None:
            return answer(200, False, refusal)
        assert account.allocation is not None  # _membership_problem saw to it
        if account.allocation.is_infinite():
            return affirmative
        member = account.members[uid]
        if cost + account.usage > account.allocation:
            return answer(200, False, f"Adding job_cost {cost} to account balance "
                                      f"{account.usage} would exceed account allocation "
                                      f"{account.allocation}.")
        if cost + member.usage > member.allocation:
            return answer(200, False, f"Adding job_cost {cost} to user balance {member.usage} "
                                      f"would exceed user allocation {member.allocation}.")
        return affirmative

    def _create(self, request: Request) -> Reply:
        data = self._body(request)
        if isinstance(data, Reply):
            return data
        clean = self._validate(data, existing=None, path_id=None)
        if isinstance(clean, Reply):
            return clean
        self._charge(clean, existing=None, end_expected=False)
        record = self._store(clean, existing=None)
        return Reply(201, record.render())

    def _update(self, request: Request) -> Reply:
        jobslurmid = urllib.parse.unquote(request.params["jobslurmid"])
        existing = self._jobs.get(jobslurmid)
        if existing is None and not self.put_upserts:
            return Reply(404, self.error_body(404, "Not found."))
        data = self._body(request)
        if isinstance(data, Reply):
            return data
        clean = self._validate(data, existing=existing, path_id=jobslurmid)
        if isinstance(clean, Reply):
            return clean
        self._charge(clean, existing=existing, end_expected=True)
        record = self._store(clean, existing=existing)
        return Reply(200, record.render())

    def _retrieve(self, request: Request) -> Reply:
        record = self._jobs.get(urllib.parse.unquote(request.params["jobslurmid"]))
        if record is None:
            return Reply(404, self.error_body(404, "Not found."))
        return Reply(200, record.render())

    # --- accounting ----------------------------------------------------------------------------

    def _charge(self, clean: Mapping[str, Any], existing: _Job | None,
                end_expected: bool) -> None:
        """Move the usages for a validated record, as ColdFront's create and update do."""
        if "amount" not in clean:
            return
        account = self._accounts[clean["accountid"]]
        if not _dates_valid(clean, account, end_expected):
            return
        member = account.members[clean["userid"]]
        amount: Decimal = clean["amount"]
        if existing is None:
            account.usage += amount
            member.usage += amount
        else:
            difference = amount - existing.amount
            account.usage = max(account.usage + difference, ZERO)
            member.usage = max(member.usage + difference, ZERO)

    def _store(self, clean: Mapping[str, Any], existing: _Job | None) -> _Job:
        """Save a validated record: fields left out keep their values, nodes are added."""
        if existing is None:
            record = _Job(clean["jobslurmid"], clean["userid"], clean["accountid"])
            self._jobs[record.jobslurmid] = record
        else:
            record = existing
        for name, value in clean.items():
            if name == "nodes":
                record.nodes.extend(n for n in value if n not in record.nodes)
            else:
                setattr(record, name, value)
        return record

    def _membership_problem(self, uid: str, account: _Account) -> str | None:
        """Why ``uid`` cannot run jobs in ``account``, or None."""
        if uid not in account.members:
            return f"User {self._users[uid]} is not a member of account {account.name}."
        if account.allocation is None:
            return f"Account {account.name} has no active compute allocation."
        return None

    # --- validation ----------------------------------------------------------------------------

    def _body(self, request: Request) -> dict[str, Any] | Reply:
        """The request's JSON object, or the 400 to send."""
        if not request.body.strip():
            return {}
        try:
            data = request.json()
        except ValueError as exc:
            return Reply(400, {"detail": f"JSON parse error - {exc}"})
        if not isinstance(data, dict):
            return Reply(400, {"non_field_errors": [
                f"Invalid data. Expected a dictionary, but got {type(data).__name__}."]})
        return data

    def _validate(self, data: Mapping[str, Any], existing: _Job | None,
                  path_id: str | None) -> dict[str, Any] | Reply:
        """The record's fields as Python values, or the 400 naming what is wrong."""
        clean: dict[str, Any] = {}
        errors: dict[str, Any] = {}
        for name in JOB_FIELDS:
            if name not in data:
                if name in REQUIRED:
                    errors[name] = ["This field is required."]
                continue
            value = data[name]
            try:
                if value is None:
                    if name in NOT_NULL:
                        raise _Invalid("This field may not be null.")
                    clean[name] = None
                else:
                    clean[name] = self._field(name, value, existing, path_id)
            except _Invalid as exc:
                errors[name] = exc.detail
        if errors:
            return Reply(400, errors)
        problem = _date_order_problem(clean)
        if problem is None:
            account = self._accounts[clean["accountid"]]
            problem = self._membership_problem(clean["userid"], account)
        if problem is not None:
            return Reply(400, {"non_field_errors": [problem]})
        return clean

    def _field(self, name: str, value: Any, existing: _Job | None, path_id: str | None) -> Any:
        """One field's value, checked; raises _Invalid."""
        if name == "jobslurmid":
            text = _text(value, 150, blank=False)
            if path_id is not None and text != path_id:
                raise _Invalid(f"jobslurmid {text} does not match the job in the URL, "
                               f"{path_id}.")
            if existing is None and text in self._jobs:
                raise _Invalid("job with this jobslurmid already exists.")
            return text
        if name == "userid":
            uid = str(value) if isinstance(value, (str, int)) and not isinstance(value, bool) \
                else repr(value)
            if uid not in self._users:
                raise _Invalid(f"UserProfile for cluster_uid {uid} does not exist.")
            if existing is not None and existing.userid != uid:
                raise _Invalid(f"Specified user {self._users[uid]} does not match already "
                               f"associated user {self._users[existing.userid]}.")
            return uid
        if name == "accountid":
            account = value if isinstance(value, str) else str(value)
            if account not in self._accounts:
                raise _Invalid(f"Object with name={account} does not exist.")
            if existing is not None and existing.accountid != account:
                raise _Invalid(f"Specified account {account} does not match already "
                               f"associated account {existing.accountid}.")
            return account
        if name == "amount":
            return _amount(value)
        if name in ("submitdate", "startdate", "enddate"):
            return _datetime(value)
        if name in ("jobstatus", "partition", "qos"):
            return _text(value, 50, blank=True)
        if name == "nodes":
            return _nodes(value)
        if name in ("num_cpus", "num_req_nodes", "num_alloc_nodes"):
            return _integer(value)
        return _number(value)

    # --- lookups -------------------------------------------------------------------------------

    def _account(self, name: str, create: bool = False) -> _Account:
        if name not in self._accounts:
            if not create:
                raise KeyError(f"no account {name}")
            self._accounts[name] = _Account(name)
        return self._accounts[name]

    def _member(self, account: str, user_or_uid: int | str) -> _Member:
        uid = self._uid(user_or_uid)
        member = self._account(account).members.get(uid)
        if member is None:
            raise KeyError(f"{user_or_uid} is no member of {account}")
        return member

    def _uid_of(self, username: str) -> str | None:
        return next((uid for uid, name in self._users.items() if name == username), None)

    def _uid(self, user_or_uid: int | str, create: bool = False) -> str:
        """The UID of a user given by UID or by name; new ones made when ``create``."""
        if isinstance(user_or_uid, int) or user_or_uid.isdigit():
            uid = str(user_or_uid)
            if uid not in self._users:
                if not create:
                    raise KeyError(f"no user with uid {uid}")
                self._users[uid] = f"user{uid}"
            return uid
        known = self._uid_of(user_or_uid)
        if known is not None:
            return known
        if not create:
            raise KeyError(f"no user {user_or_uid}")
        number = FIRST_AUTO_UID
        while str(number) in self._users:
            number += 1
        self._users[str(number)] = user_or_uid
        return str(number)


# --- field parsers (Django REST framework's rules and messages) --------------------------------

def _text(value: Any, max_length: int, blank: bool) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _Invalid("Not a valid string.")
    text = str(value).strip()
    if not text and not blank:
        raise _Invalid("This field may not be blank.")
    if len(text) > max_length:
        raise _Invalid(f"Ensure this field has no more than {max_length} characters.")
    return text


def _amount(value: Any) -> Decimal:
    text = str(value).strip()
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise _Invalid("A valid number is required.") from None
    if not number.is_finite():
        raise _Invalid("A valid number is required.")
    _sign, digits, exponent = number.as_tuple()
    exponent = int(exponent)
    if exponent >= 0:
        total, places = len(digits) + exponent, 0
    else:
        total, places = max(len(digits), -exponent), -exponent
    if total > MAX_DIGITS:
        raise _Invalid(f"Ensure that there are no more than {MAX_DIGITS} digits in total.")
    if places > MAX_PLACES:
        raise _Invalid(f"Ensure that there are no more than {MAX_PLACES} decimal places.")
    if total - places > MAX_DIGITS - MAX_PLACES:
        raise _Invalid(f"Ensure that there are no more than {MAX_DIGITS - MAX_PLACES} digits "
                       f"before the decimal point.")
    if number < 0:
        raise _Invalid(f"Ensure this value is greater than or equal to {ZERO}.")
    if number > ALLOCATION_MAX:
        raise _Invalid(f"Ensure this value is less than or equal to {ALLOCATION_MAX}.")
    return number.quantize(CENT)


def _datetime(value: Any) -> datetime:
    match = _DATETIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise _Invalid(_DATETIME_HELP)
    parts = match.groupdict()
    zone = timezone.utc
    if parts["tz"] not in (None, "Z"):
        offset = parts["tz"].replace(":", "")
        minutes = int(offset[1:3]) * 60 + int(offset[3:5] or 0)
        zone = timezone(timedelta(minutes=-minutes if offset[0] == "-" else minutes))
    try:
        return datetime(int(parts["year"]), int(parts["month"]), int(parts["day"]),
                        int(parts["hour"]), int(parts["minute"]), int(parts["second"] or 0),
                        int((parts["micro"] or "0").ljust(6, "0")), tzinfo=zone)
    except ValueError:
        raise _Invalid(_DATETIME_HELP) from None


def _nodes(value: Any) -> list[str]:
    if not isinstance(value, list):
        raise _Invalid({"non_field_errors": [
            f'Expected a list of items but got type "{type(value).__name__}".']})
    names: list[str] = []
    errors: list[dict[str, Any]] = []
    for item in value:
        if not isinstance(item, dict):
            errors.append({"non_field_errors": [
                f"Invalid data. Expected a dictionary, but got {type(item).__name__}."]})
            continue
        if "name" not in item:
            errors.append({"name": ["This field is required."]})
            continue
        if item["name"] is None:
            errors.append({"name": ["This field may not be null."]})
            continue
        try:
            names.append(_text(item["name"], 30, blank=False))
            errors.append({})
        except _Invalid as exc:
            errors.append({"name": exc.detail})
    if any(errors):
        raise _Invalid(errors)
    return names


def _integer(value: Any) -> int:
    text = re.sub(r"\.0*\s*$", "", str(value))
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(text)
    except ValueError:
        raise _Invalid("A valid integer is required.") from None
    if number < INT32[0]:
        raise _Invalid(f"Ensure this value is greater than or equal to {INT32[0]}.")
    if number > INT32[1]:
        raise _Invalid(f"Ensure this value is less than or equal to {INT32[1]}.")
    return number


def _number(value: Any) -> float:
    try:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError
        number = float(value)
    except ValueError:
        raise _Invalid("A valid number is required.") from None
    if not math.isfinite(number):
        raise _Invalid("A valid number is required.")
    return number


# --- dates -------------------------------------------------------------------------------------

def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def _render_datetime(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _date_order_problem(clean: Mapping[str, Any]) -> str | None:
    """ColdFront's check that submit <= start <= end, where given."""
    submit, start, end = (clean.get(k) for k in ("submitdate", "startdate", "enddate"))
    if submit and start and start < submit:
        return f"Job start date {start} occurs before Job submit date {submit}."
    if start and end and end < start:
        return f"Job end date {end} occurs before Job start date {start}."
    if submit and end and end < submit:
        return f"Job end date {end} occurs before Job submit date {submit}."
    return None


def _dates_valid(clean: Mapping[str, Any], account: _Account, end_expected: bool) -> bool:
    """Whether the record's dates let it be charged (ColdFront's ``validate_job_dates``)."""
    needed: Iterable[str] = ("submitdate", "startdate", "enddate") if end_expected \
        else ("submitdate", "startdate")
    if any(clean.get(k) is None for k in needed):
        return False
    if account.start is not None and clean["startdate"] < account.start:
        return False
    return not (end_expected and account.end is not None and clean["enddate"] > account.end)
