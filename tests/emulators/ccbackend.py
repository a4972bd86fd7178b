"""A cc-backend (ClusterCockpit) emulator: the job REST API a Slurm sync tool talks to.

    >>> emu = CCBackend("1.5.4", clusters={"fritz": {"subclusters": {"main": "*"}}},
    ...                 tokens={"secret"})
    >>> with emu:                                                       # doctest: +SKIP
    ...     requests.post(emu.url + "/api/jobs/start_job/", json=job,
    ...                   headers={"X-Auth-Token": "secret"}).status_code
    201

It mirrors cc-backend 1.4.4 and 1.5.4 (``internal/api/rest.go``, ``importer.SanityChecks``, the
``job`` and ``job_cache`` tables), so a connector meets the same status codes and bodies:

- ``POST|PUT /api/jobs/start_job/``: Go ``encoding/json`` decoding (unknown fields refused, keys
  matched case-insensitively, Go integer widths), SanityChecks, the 86400 s duplicate rule, and on
  1.5 the ``job_cache`` table that ``commit()`` (cc-backend's commit-job-worker) empties into
  ``job``.
- ``POST|PUT /api/jobs/stop_job/``: lookup by jobId (cluster, startTime optional), newest db id.
- ``GET /api/jobs/``: filters, paging and ``startTime`` descending order, over ``job`` only.

Every error is ``{"status": <HTTP reason>, "error": <message>}``, as cc-backend's ``handleError``.
Tokens are opaque strings: JWT signatures, roles, the IP allow-list and NATS are not emulated, and
neither is archiving (``monitoringStatus`` stays as sent).
"""

from __future__ import annotations

import copy
import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any, Union

import hostlist

from tests.emulators.base import Emulator, Faults, Reply, Request, Route

__all__ = ["DEFAULT_CLUSTERS", "DEFAULT_TOKEN", "CCBackend", "DecodeError"]

DEFAULT_TOKEN = "cc-emulator-token"
DEFAULT_CLUSTERS: Mapping[str, Any] = {"testcluster": {"subclusters": {"main": "*"}}}
SECONDS_PER_DAY = 86400  # cc-backend's duplicate window for jobId + cluster

# --- Go types, and decoding JSON the way encoding/json with DisallowUnknownFields does ---------

INT32, INT64, INT, STRING, FLOAT64 = "int32", "int64", "int", "string", "float64"
_INT_BITS = {INT32: 32, INT64: 64, INT: 64}


@dataclass(frozen=True)
class ListOf:
    """A Go slice; JSON null decodes to nil (None)."""

    elem: Kind


@dataclass(frozen=True)
class MapOf:
    """A Go ``map[string]T``; JSON null decodes to nil (None)."""

    elem: Kind


@dataclass(frozen=True)
class Struct:
    """A Go struct: ``fields`` maps JSON names to kinds; ``pointer`` for ``*T`` (null -> nil)."""

    name: str
    fields: Mapping[str, Kind]
    pointer: bool = False


Kind = Union[str, ListOf, MapOf, Struct]
_KEEP = object()  # JSON null into a Go value type: the target keeps what it had


class DecodeError(ValueError):
    """The body would not decode into the Go type; cc-backend answers 400."""


def _go_type(kind: Kind) -> str:
    if isinstance(kind, ListOf):
        return "[]" + _go_type(kind.elem)
    if isinstance(kind, MapOf):
        return "map[string]" + _go_type(kind.elem)
    if isinstance(kind, Struct):
        return ("*" if kind.pointer else "") + "schema." + kind.name
    return kind


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _mismatch(value: Any, kind: Kind, where: str) -> DecodeError:
    return DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                       f"{where} of type {_go_type(kind)}")


def _zero(kind: Kind) -> Any:
    """Go's zero value for ``kind``: nil for slices, maps and pointers."""
    if isinstance(kind, Struct):
        return None if kind.pointer else {name: _zero(sub) for name, sub in kind.fields.items()}
    if isinstance(kind, (ListOf, MapOf)):
        return None
    return {STRING: "", FLOAT64: 0.0}.get(kind, 0)


def _decode_scalar(value: Any, kind: str, where: str) -> Any:
    """Go refuses a fraction or exponent for an integer (``1.0`` too), bools for numbers and
    numbers that overflow the integer's width."""
    if kind == STRING:
        if isinstance(value, str):
            return value
    elif kind == FLOAT64:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        limit = 2 ** (_INT_BITS[kind] - 1)
        if -limit <= value < limit:
            return value
    raise _mismatch(value, kind, where)


def _decode(value: Any, kind: Kind, where: str) -> Any:
    """``value`` (parsed JSON) as Go would store it in ``kind``; ``_KEEP`` for a null Go ignores."""
    if value is None:
        if isinstance(kind, (ListOf, MapOf)) or (isinstance(kind, Struct) and kind.pointer):
            return None
        return _KEEP
    if isinstance(kind, Struct):
        return _decode_struct(value, kind)
    if isinstance(kind, ListOf):
        if not isinstance(value, list):
            raise _mismatch(value, kind, where)
        return [_element(item, kind.elem, where) for item in value]
    if isinstance(kind, MapOf):
        if not isinstance(value, dict):
            raise _mismatch(value, kind, where)
        return {key: _element(item, kind.elem, where) for key, item in value.items()}
    return _decode_scalar(value, kind, where)


def _element(value: Any, kind: Kind, where: str) -> Any:
    """A slice element or map value: a null there becomes the element type's zero value."""
    decoded = _decode(value, kind, where)
    return _zero(kind) if decoded is _KEEP else decoded


def _field_for(key: str, fields: Mapping[str, Kind]) -> str | None:
    """Go matches a JSON key to a field exactly first, then case-insensitively."""
    if key in fields:
        return key
    folded = key.casefold()
    return next((name for name in fields if name.casefold() == folded), None)


def _decode_struct(value: Any, struct: Struct,
                   into: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Decode an object into a copy of ``into`` (defaults) or else the struct's zero value."""
    if not isinstance(value, dict):
        raise DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go value of type "
                          f"{_go_type(struct)}")
    result = dict(into) if into is not None else {n: _zero(k) for n, k in struct.fields.items()}
    for key, raw in value.items():
        name = _field_for(key, struct.fields)
        if name is None:
            raise DecodeError(f'json: unknown field "{key}"')
        decoded = _decode(raw, struct.fields[name], f"{struct.name}.{name}")
        if decoded is not _KEEP:
            result[name] = decoded
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"invalid character '{name[0]}' looking for beginning of value")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def decode_body(body: bytes, struct: Struct, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """A request body decoded like ``json.NewDecoder(body).Decode(&v)`` with unknown fields
    disallowed: only the first JSON value is read, an empty body is ``EOF``, null keeps ``v``."""
    text = body.decode("utf-8", errors="replace").lstrip(" \t\r\n")
    if not text:
        raise DecodeError("EOF")
    try:
        value, _ = _JSON.raw_decode(text)
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    base = {**_zero(struct), **defaults}
    return base if value is None else _decode_struct(value, struct, base)


# --- cc-backend's schema, per version -------------------------------------------------------

_RESOURCE = Struct("Resource", {"hostname": STRING, "hwthreads": ListOf(INT),
                                "accelerators": ListOf(STRING), "configuration": STRING},
                   pointer=True)
_TAG = Struct("Tag", {"type": STRING, "name": STRING, "scope": STRING, "id": INT64},
              pointer=True)
_JOB_LINK = Struct("JobLink", {"id": INT64, "jobId": INT64}, pointer=True)
_STATISTICS = Struct("JobStatistics", {
    "unit": Struct("Unit", {"base": STRING, "prefix": STRING}),
    "avg": FLOAT64, "min": FLOAT64, "max": FLOAT64})
_JOB_FIELDS: Mapping[str, Kind] = {
    "id": INT64, "jobId": INT64, "user": STRING, "project": STRING, "cluster": STRING,
    "subCluster": STRING, "partition": STRING, "arrayJobId": INT64, "numNodes": INT32,
    "numHwthreads": INT32, "numAcc": INT32, "monitoringStatus": INT32, "smt": INT32,
    "jobState": STRING, "startTime": INT64, "duration": INT32, "walltime": INT64,
    "resources": ListOf(_RESOURCE), "metaData": MapOf(STRING), "tags": ListOf(_TAG),
    "energy": FLOAT64, "footprint": MapOf(FLOAT64), "energyFootprint": MapOf(FLOAT64),
    "concurrentJobs": Struct("JobLinkResultList", {"items": ListOf(_JOB_LINK), "count": INT}),
    "statistics": MapOf(_STATISTICS),
}
# Fields Go leaves out of the JSON when empty (``omitempty``).
_OMITEMPTY = frozenset({"partition", "tags", "arrayJobId", "walltime", "smt", "monitoringStatus",
                        "numAcc", "numHwthreads", "requestedMemory", "submitTime"})
_STOP_REQUEST_FIELDS: Mapping[str, Kind] = {
    "jobId": INT64, "cluster": STRING, "startTime": INT64, "jobState": STRING, "stopTime": INT64}
_STOP_REQUEST_DEFAULTS = {"jobId": None, "cluster": None, "startTime": None}  # Go pointers


@dataclass(frozen=True)
class Flavor:
    """What differs between the cc-backend versions the emulator speaks."""

    name: str
    job: Struct
    stop_request: Struct
    defaults: Mapping[str, Any]
    states: frozenset[str]
    checks: Sequence[tuple[str, Callable[[Any], bool], str]]  # the tables' CHECK constraints
    list_params: frozenset[str]
    cached: bool  # new jobs go to job_cache first
    not_found: int  # stop_job of an unknown job
    stop_start_time_as_text: bool  # stop_job answers a schema.Job whose startTime is a time.Time


_LIST_PARAMS = frozenset({"state", "cluster", "start-time", "page", "items-per-page",
                          "with-metadata"})
_MONITORING_CHECK = ("monitoringStatus", lambda v: 0 <= v <= 3,
                     "monitoring_status BETWEEN 0 AND 3")

V14 = Flavor(
    name="1.4",
    job=Struct("JobMeta", {**_JOB_FIELDS, "exclusive": INT32}),
    stop_request=Struct("StopJobApiRequest", _STOP_REQUEST_FIELDS),
    defaults={"exclusive": 1, "monitoringStatus": 1},
    states=frozenset({"running", "completed", "failed", "cancelled", "stopped", "timeout",
                      "preempted", "out_of_memory"}),
    checks=(("exclusive", lambda v: v in (0, 1, 2), "exclusive IN (0, 1, 2)"), _MONITORING_CHECK),
    list_params=_LIST_PARAMS,
    cached=False,
    not_found=422,
    stop_start_time_as_text=True,
)
V15 = Flavor(
    name="1.5",
    job=Struct("Job", {**_JOB_FIELDS, "shared": STRING, "submitTime": INT64,
                       "requestedMemory": INT64}),
    stop_request=Struct("StopJobAPIRequest", _STOP_REQUEST_FIELDS),
    defaults={"shared": "none", "monitoringStatus": 1},
    states=frozenset({"boot_fail", "cancelled", "completed", "deadline", "failed", "node_fail",
                      "out_of_memory", "pending", "preempted", "running", "suspended",
                      "timeout"}),
    checks=(("shared", lambda v: v in ("none", "single_user", "multi_user"),
             "shared IN ('none', 'single_user', 'multi_user')"), _MONITORING_CHECK),
    list_params=_LIST_PARAMS | {"project"},
    cached=True,
    not_found=404,
    stop_start_time_as_text=False,
)

# Go's http.StatusText where Python's phrase has since been renamed.
_GO_STATUS_TEXT = {413: "Request Entity Too Large", 422: "Unprocessable Entity"}


def status_text(status: int) -> str:
    """Go's ``http.StatusText(status)``."""
    try:
        return _GO_STATUS_TEXT.get(status) or HTTPStatus(status).phrase
    except ValueError:
        return ""


class BadQuery(ValueError):
    """A GET /api/jobs/ parameter cc-backend refuses with 400."""


def _go_int(text: str) -> int:
    """``strconv.ParseInt(text, 10, 64)``: optional sign, ASCII digits, int64 range."""
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        raise BadQuery(f'strconv.ParseInt: parsing "{text}": invalid syntax')
    value = int(text)
    if not -(2**63) <= value < 2**63:
        raise BadQuery(f'strconv.ParseInt: parsing "{text}": value out of range')
    return value


@dataclass
class JobQuery:
    """The filter, page and options of one GET /api/jobs/."""

    states: list[str] = field(default_factory=list)
    cluster: str | None = None
    project: str | None = None
    start_time: tuple[int, int] | None = None
    page: int = 1
    items_per_page: int = 25
    with_metadata: bool = False

    def matches(self, job: Mapping[str, Any]) -> bool:
        """The SQL filter: state IN, cluster =, project =, start_time BETWEEN (inclusive)."""
        return ((not self.states or job["jobState"] in self.states)
                and (self.cluster is None or job["cluster"] == self.cluster)
                and (self.project is None or job["project"] == self.project)
                and (self.start_time is None
                     or self.start_time[0] <= job["startTime"] <= self.start_time[1]))


def _positive(text: str, name: str) -> int:
    value = _go_int(text)
    if value < 1:
        raise BadQuery(f"invalid query parameter value: {name} must be >= 1")
    return value


def _time_range(text: str) -> tuple[int, int]:
    """``start-time=<from>-<to>`` in epoch seconds, split on '-' as cc-backend does."""
    parts = text.split("-")
    if len(parts) != 2:
        raise BadQuery("invalid query parameter value: startTime")
    return _go_int(parts[0]), _go_int(parts[1])


def parse_job_query(query: Mapping[str, list[str]], flavor: Flavor) -> JobQuery:
    """cc-backend's getJobs parameter loop: any parameter it does not know is a 400, states are
    validated, and ``with-metadata`` counts by its presence alone (``=false`` enables it too)."""
    parsed = JobQuery()
    for key, values in query.items():
        if key not in flavor.list_params:
            raise BadQuery(f"invalid query parameter: {key}")
        first = values[0]
        if key == "state":
            if any(state not in flavor.states for state in values):
                raise BadQuery("invalid query parameter value: state")
            parsed.states.extend(values)
        elif key == "cluster":
            parsed.cluster = first
        elif key == "project":
            parsed.project = first
        elif key == "start-time":
            parsed.start_time = _time_range(first)
        elif key == "page":
            parsed.page = _positive(first, key)
        elif key == "items-per-page":
            parsed.items_per_page = _positive(first, key)
        elif key == "with-metadata":
            parsed.with_metadata = True
    return parsed


def _node_list(nodes: str | Iterable[str]) -> frozenset[str] | None:
    """A subcluster's nodes: a list of names, a hostlist expression, or ``"*"`` (None)."""
    if nodes == "*":
        return None
    if isinstance(nodes, str):
        return frozenset(hostlist.expand_hostlist(nodes))
    return frozenset(nodes)


def _rfc3339(epoch: int) -> str:
    """How Go encodes a ``time.Time`` (server zone taken as UTC)."""
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Panic(Exception):
    """Where cc-backend would dereference a nil pointer; answered 500."""


# --- the emulator ----------------------------------------------------------------------------


class CCBackend(Emulator):
    """cc-backend's job API at ``version`` "1.4.4" or "1.5.4".

    ``clusters`` maps a cluster name to ``{"subclusters": {name: nodes}}`` where nodes is a list
    of hostnames, a hostlist expression ("a05[01-04]") or "*". ``tokens`` are the accepted API
    tokens. On 1.5 a started job waits in ``job_cache`` until ``commit()`` or, when
    ``commit_interval`` is set, until that many seconds (by ``clock``) have passed; this is checked
    at each request. State lives in ``jobs`` (the ``job`` table) and ``job_cache``; each row is a
    dict with the JSON field names plus its database ``id``. Read or change it under ``lock``.
    """

    def __init__(
        self,
        version: str = "1.5.4",
        clusters: Mapping[str, Any] | None = None,
        tokens: Iterable[str] | None = None,
        commit_interval: float | None = None,
        faults: Faults | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.version = version
        self.flavor = self._flavor(version)
        self.clusters = {name: {sc: _node_list(nodes)
                                for sc, nodes in config["subclusters"].items()}
                         for name, config in (clusters or DEFAULT_CLUSTERS).items()}
        self.tokens = frozenset(tokens if tokens is not None else {DEFAULT_TOKEN})
        self.commit_interval = commit_interval
        self.clock = clock
        self.jobs: list[dict[str, Any]] = []
        self.job_cache: list[dict[str, Any]] = []
        self._cached_at: dict[int, float] = {}
        self._last_id = {"job": 0, "job_cache": 0}
        super().__init__(faults)

    @staticmethod
    def _flavor(version: str) -> Flavor:
        for flavor in (V14, V15):
            if version == flavor.name or version.startswith(flavor.name + "."):
                return flavor
        raise ValueError(f"cc-backend version {version!r}: the emulator speaks 1.4.x and 1.5.x")

    def routes(self) -> Sequence[Route]:
        return [
            ("POST", r"/api/jobs/start_job/", self.start_job),
            ("PUT", r"/api/jobs/start_job/", self.start_job),
            ("POST", r"/api/jobs/stop_job/", self.stop_job),
            ("PUT", r"/api/jobs/stop_job/", self.stop_job),
            ("GET", r"/api/jobs/", self.list_jobs),
        ]

    # --- helpers for tests ---------------------------------------------------------------------

    def job(self, job_id: int, cluster: str | None = None) -> list[dict[str, Any]]:
        """Every stored row (job_cache, then job) with this jobId, and cluster when given."""
        with self.lock:
            self._autocommit()
            return [j for j in (*self.job_cache, *self.jobs)
                    if j["jobId"] == job_id and (cluster is None or j["cluster"] == cluster)]

    def all_jobs(self) -> list[dict[str, Any]]:
        """Every stored row: job_cache first, then job."""
        with self.lock:
            self._autocommit()
            return [*self.job_cache, *self.jobs]

    def reset(self) -> None:
        """Empty both tables, restart the ids, clear the request log and switch faults off, so
        one running emulator can serve many tests."""
        with self.lock:
            self.jobs.clear()
            self.job_cache.clear()
            self._cached_at.clear()
            self._last_id = {"job": 0, "job_cache": 0}
            self.seen.clear()
            self._hits.clear()  # the base class's rate-limit window
            self.faults = Faults()

    def commit(self) -> list[dict[str, Any]]:
        """What cc-backend's commit-job-worker does: move every job_cache row into job, where it
        gets a new database id. Returns the moved rows; a no-op on 1.4."""
        with self.lock:
            return self._move(list(self.job_cache))

    # --- auth and errors -----------------------------------------------------------------------

    def error_body(self, status: int, message: str) -> Any:
        """cc-backend's ``ErrorResponse``: the Go status text and the message."""
        return {"status": status_text(status), "error": message}

    def _error(self, status: int, message: str) -> Reply:
        return Reply(status, self.error_body(status, message))

    def authorize(self, request: Request) -> Reply | None:
        """``X-Auth-Token`` first; only when it is empty, ``Authorization`` with any "Bearer "
        prefix trimmed (cc-backend's JWT lookup). Failures are 401 in the ErrorResponse shape."""
        token = request.header("X-Auth-Token") or ""
        if not token:
            token = request.header("Authorization") or ""
            token = token[len("Bearer "):] if token.startswith("Bearer ") else token
        if not token:
            return self._error(401, "unauthorized")
        if token not in self.tokens:
            return self._error(401, "token is invalid")
        return None

    # --- start_job -----------------------------------------------------------------------------

    def start_job(self, request: Request) -> Reply:
        """Decode (400), force jobState=running, SanityChecks (400), the duplicate rule over
        committed jobs (422), insert (500 on a broken CHECK or UNIQUE constraint), then 201
        ``{"msg": "success"}``."""
        self._autocommit()
        try:
            job = decode_body(request.body, self.flavor.job, self.flavor.defaults)
        except DecodeError as exc:
            return self._error(400, f"parsing request body failed: {exc}")
        job["jobState"] = "running"
        try:
            problem = self._sanity_problem(job)
        except _Panic as exc:
            return self._error(500, str(exc))
        if problem:
            return self._error(400, problem)
        duplicate = self._duplicate_of(job)
        if duplicate is not None:
            return self._error(422, "a job with that jobId, cluster and startTime already "
                                    f"exists: dbid: {duplicate['id']}, jobid: {duplicate['jobId']}")
        failure = self._insert(job)
        if failure:
            return self._error(500, f"insert into database failed: {failure}")
        return Reply(201, {"msg": "success"})

    def _sanity_problem(self, job: dict[str, Any]) -> str | None:
        """``importer.SanityChecks``, in its order; assigns subCluster when none was given."""
        if job["cluster"] not in self.clusters:
            return f"no such cluster '{job['cluster']}'"
        problem = self._assign_subcluster(job)
        if problem:
            return problem
        if not job["resources"] or not job["user"]:
            return "'resources' and 'user' should not be empty"
        if job["numAcc"] < 0 or job["numHwthreads"] < 0 or job["numNodes"] < 1:
            return "'numNodes', 'numAcc' or 'numHWThreads' invalid"
        if len(job["resources"]) != job["numNodes"]:
            return "job resources and numNodes do not match"
        return None

    def _assign_subcluster(self, job: dict[str, Any]) -> str | None:
        """``archive.AssignSubCluster``: a given subCluster must exist; otherwise the first
        resource's hostname picks the subcluster whose nodes hold it, else the first subcluster
        when its nodes are "*", else "no subcluster found"."""
        cluster, subclusters = job["cluster"], self.clusters[job["cluster"]]
        if job["subCluster"]:
            if job["subCluster"] in subclusters:
                return None
            return f"already assigned subcluster {job['subCluster']} unknown (cluster: {cluster})"
        if not job["resources"]:
            return "job without any resources/hosts"
        first = job["resources"][0]
        if first is None:
            raise _Panic("runtime error: invalid memory address or nil pointer dereference")
        host = first["hostname"]
        for name, nodes in subclusters.items():
            if nodes is not None and host in nodes:
                job["subCluster"] = name
                return None
        first_name, first_nodes = next(iter(subclusters.items()), ("", frozenset()))
        if first_name and first_nodes is None:
            job["subCluster"] = first_name
            return None
        return f"no subcluster found for cluster {cluster} and host {host}"

    def _duplicate_of(self, job: Mapping[str, Any]) -> dict[str, Any] | None:
        """The committed job (``job`` table only, never job_cache) with the same jobId and
        cluster and ``new.startTime - existing.startTime < 86400``; a negative difference, a
        restart with an older startTime, counts as a duplicate too."""
        return next((old for old in self.jobs
                     if old["jobId"] == job["jobId"] and old["cluster"] == job["cluster"]
                     and job["startTime"] - old["startTime"] < SECONDS_PER_DAY), None)

    def _insert(self, job: dict[str, Any]) -> str | None:
        """INSERT into job (1.4) or job_cache (1.5): the table's CHECK constraints and its
        UNIQUE(job_id, cluster, start_time) apply; returns SQLite's message on failure."""
        for name, ok, constraint in self.flavor.checks:
            if not ok(job[name]):
                return f"CHECK constraint failed: {constraint}"
        table_name = "job_cache" if self.flavor.cached else "job"
        table = self.job_cache if self.flavor.cached else self.jobs
        key = (job["jobId"], job["cluster"], job["startTime"])
        if any((row["jobId"], row["cluster"], row["startTime"]) == key for row in table):
            return (f"UNIQUE constraint failed: {table_name}.job_id, {table_name}.cluster, "
                    f"{table_name}.start_time")
        job["id"] = self._next_id(table_name)
        table.append(job)
        if self.flavor.cached:
            self._cached_at[job["id"]] = self.clock()
        return None

    def _next_id(self, table: str) -> int:
        self._last_id[table] += 1
        return self._last_id[table]

    # --- the job_cache -------------------------------------------------------------------------

    def _autocommit(self) -> None:
        """Move the cached jobs whose ``commit_interval`` has run out (checked lazily)."""
        if self.commit_interval is None or not self.job_cache:
            return
        now = self.clock()
        self._move([row for row in self.job_cache
                    if now - self._cached_at[row["id"]] >= self.commit_interval])

    def _move(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        moved = []
        for row in rows:
            self.job_cache.remove(row)
            del self._cached_at[row["id"]]
            committed = {**row, "id": self._next_id("job")}
            self.jobs.append(committed)
            moved.append(committed)
        return moved

    # --- stop_job ------------------------------------------------------------------------------

    def stop_job(self, request: Request) -> Reply:
        """jobId is required (400); lookup in job_cache then job (1.5) or job (1.4), filtered by
        cluster and startTime when given, newest db id; unknown 404 (1.5) / 422 (1.4); not
        running 422; stopTime < startTime 400; a state outside the version's enum 400, an empty
        one is ``completed``. 200 with the job, duration = stopTime - startTime."""
        self._autocommit()
        try:
            stop = decode_body(request.body, self.flavor.stop_request, _STOP_REQUEST_DEFAULTS)
        except DecodeError as exc:
            return self._error(400, f"parsing request body failed: {exc}")
        if stop["jobId"] is None:
            return self._error(400, "the field 'jobId' is required")
        job = self._find(stop)
        if job is None:
            return self._error(self.flavor.not_found,
                               "finding job failed: sql: no rows in result set")
        problem = self._stop_problem(job, stop)
        if problem is not None:
            return problem
        job["jobState"] = stop["jobState"] or "completed"
        job["duration"] = stop["stopTime"] - job["startTime"]
        return Reply(200, self._render(job, with_metadata=False, stop_reply=True))

    def _find(self, stop: Mapping[str, Any]) -> dict[str, Any] | None:
        """``FindCached`` then ``Find`` (1.5) or ``Find`` (1.4): ``ORDER BY id DESC LIMIT 1``."""
        tables = (self.job_cache, self.jobs) if self.flavor.cached else (self.jobs,)
        for table in tables:
            rows = [row for row in table if row["jobId"] == stop["jobId"]
                    and stop["cluster"] in (None, row["cluster"])
                    and stop["startTime"] in (None, row["startTime"])]
            if rows:
                return max(rows, key=lambda row: row["id"])
        return None

    def _stop_problem(self, job: Mapping[str, Any], stop: Mapping[str, Any]) -> Reply | None:
        """``checkAndHandleStopJob``'s checks, in its order."""
        who = f"jobId {job['jobId']} (id {job['id']}) on {job['cluster']}"
        if job["jobState"] != "running":
            return self._error(422, f"{who} : job has already been stopped "
                                    f"(state is: {job['jobState']})")
        if job["startTime"] > stop["stopTime"]:
            return self._error(400, f"{who} : stopTime {stop['stopTime']} must be larger/equal "
                                    f"than startTime {job['startTime']}")
        if stop["jobState"] and stop["jobState"] not in self.flavor.states:
            return self._error(400, f"{who} : invalid requested job state: "
                                    f"\"{stop['jobState']}\"")
        return None

    # --- GET /api/jobs/ ------------------------------------------------------------------------

    def list_jobs(self, request: Request) -> Reply:
        """Committed jobs (``job`` table) only, filtered, startTime descending, one page;
        ``items`` echoes items-per-page and is not a total. metaData is null without
        ``with-metadata``."""
        self._autocommit()
        try:
            query = parse_job_query(request.query, self.flavor)
        except BadQuery as exc:
            return self._error(400, str(exc))
        rows = sorted((row for row in self.jobs if query.matches(row)),
                      key=lambda row: row["startTime"], reverse=True)
        first = (query.page - 1) * query.items_per_page
        page = rows[first:first + query.items_per_page]
        return Reply(200, {"jobs": [self._render(row, with_metadata=query.with_metadata)
                                    for row in page],
                           "items": query.items_per_page, "page": query.page})

    # --- rendering -----------------------------------------------------------------------------

    def _render(self, job: Mapping[str, Any], *, with_metadata: bool,
                stop_reply: bool = False) -> dict[str, Any]:
        """A stored row as cc-backend encodes it: ``omitempty`` fields left out when empty,
        metaData only when fetched. The stop_job reply is the row as ``Find`` reads it (no tags,
        no metaData); on 1.4 that is a ``schema.Job`` whose startTime is an RFC 3339 string."""
        out: dict[str, Any] = {}
        for name in self.flavor.job.fields:
            value = job.get(name)
            if name in _OMITEMPTY and not value:
                continue
            out[name] = _render_resources(value) if name == "resources" else value
        if not with_metadata:
            out["metaData"] = None
        if stop_reply:
            out.pop("tags", None)
            if self.flavor.stop_start_time_as_text:
                out["startTime"] = _rfc3339(job["startTime"])
                out.pop("statistics", None)
        return copy.deepcopy(out)  # sent after the lock is released


def _render_resources(resources: list[Any] | None) -> list[Any] | None:
    """``schema.Resource`` drops empty configuration, hwthreads and accelerators."""
    if resources is None:
        return None
    return [None if r is None else {k: v for k, v in r.items() if v or k == "hostname"}
            for r in resources]
