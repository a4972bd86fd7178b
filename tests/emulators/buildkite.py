"""A Buildkite emulator: the REST API v2 builds listing, the agent API v3 that
``buildkite-agent start --acquire-job`` talks to, and the Stacks API, over one in-memory model
of organizations > pipelines > builds > jobs.

    >>> with Buildkite() as bk:                                       # doctest: +SKIP
    ...     new = bk.add_build("climate", jobs=[{"step_key": "test", "command": "echo hi",
    ...                                          "agent_query_rules": ["queue=slurm"]}])
    ...     requests.get(bk.url + "/v2/organizations/acme/builds",
    ...                  headers={"Authorization": f"Bearer {bk.api_token}"}).json()

Contracts follow /work/shared/reference/buildkite.md and the public Buildkite docs
(``pages/apis/rest_api*.md``, ``pages/apis/agent_api/stacks.md``) and agent sources
(``api/*.go``, ``core/client.go``, ``agent/job_runner.go``). Where those are silent the
emulator picks the simplest behaviour; each such choice is marked **[choice]** in the
docstring of the route or helper it concerns.

Tokens (three kinds, as in Buildkite):

* ``api_token``: a REST API access token, sent as ``Authorization: Bearer <token>``. Basic auth
  is refused. It may read every organization (**[choice]**: no scopes are modelled).
* ``agent_token``: the cluster agent token (``bkct_…``), sent as ``Authorization: Token <token>``
  to ``POST /v3/register``, ``GET /v3/metrics/queue`` and every Stacks API route. It belongs to
  one organization (the default one); its agents and stacks see only that organization's jobs.
* per-agent access tokens (returned by register) for ``connect``, ``disconnect`` and
  ``acquire``, and per-job tokens (returned by acquire) for the job's ``start``, ``finish``,
  ``chunks`` and state. The access token of the agent holding a job is accepted there too.

A wrong or missing token is answered ``401 {"message": …}``; a token is never echoed back.

Every error body has the documented shape ``{"message": "…"}``.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import gzip
import json
import math
import secrets
import time
import urllib.parse
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .base import Emulator, Faults, Reply, Request

__all__ = [
    "ACTIVE",
    "FINISHED",
    "JOB_STATES",
    "NOT_YET_ELIGIBLE",
    "STACK_LIMITS",
    "Agent",
    "Build",
    "Buildkite",
    "Event",
    "Job",
    "NewBuild",
    "Organization",
    "Pipeline",
    "Queue",
    "Stack",
]

#: Every job state Buildkite names (REST job data model, agent-stack-k8s ``api/job_states.go``).
JOB_STATES = frozenset({
    "pending", "waiting", "waiting_failed", "blocked", "blocked_failed", "unblocked",
    "unblocked_failed", "scheduled", "assigned", "accepted", "running", "passed", "failed",
    "timed_out", "timing_out", "canceled", "canceling", "skipped", "broken", "expired",
    "limited", "limiting",
})
#: States a job never leaves.
FINISHED = frozenset({
    "passed", "failed", "timed_out", "canceled", "skipped", "broken", "expired",
    "waiting_failed", "blocked_failed", "unblocked", "unblocked_failed",
})
#: States in which an agent holds the job.
ACTIVE = frozenset({"assigned", "accepted", "running", "canceling", "timing_out"})
#: States an acquire answers 423 Locked for (waiting on a dependency, a block step or a
#: concurrency group). **[choice]**: the reference names only "waiting"; the others are the
#: states that likewise mean "not yet runnable".
NOT_YET_ELIGIBLE = frozenset({"pending", "waiting", "blocked", "limited", "limiting"})
_FAILING = frozenset({"failed", "timed_out", "expired", "canceled"})
_BUILD_FILTER_STATES = frozenset({
    "creating", "scheduled", "running", "passed", "failing", "failed", "blocked", "canceling",
    "canceled", "skipped", "not_run", "finished",
})
_JOB_TYPES = frozenset({"script", "waiter", "manual", "trigger"})
_JOB_KEYS = frozenset({
    "id", "step_key", "key", "name", "label", "command", "agent_query_rules", "type", "state",
    "priority", "env", "parallel_group_index", "parallel_group_total", "soft_failed",
})

#: Stacks API limits per stack and endpoint scope, requests per second (stacks.md).
STACK_LIMITS: Mapping[str, int] = {
    "list-scheduled-jobs": 10,
    "batch-reserve": 10,
    "show-job": 1000,
    "batch-load-job-states": 20,
    "finish-job": 100,
    "stack-notification": 200,
    "default": 10,
}
_STACK_TYPES = frozenset({"kubernetes", "elastic", "custom"})
_DEFAULT_QUEUE_ALIAS = "__default__"
_WEB = "https://buildkite.com"


# --- model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    """One entry of a job's timeline: a state change, a stack notification, a reservation or a
    stack finish."""

    at: float
    kind: str
    value: str


@dataclass(eq=False)
class Organization:
    slug: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    pipelines: dict[str, Pipeline] = field(default_factory=dict, repr=False)
    queues: dict[str, Queue] = field(default_factory=dict, repr=False)
    stacks: dict[str, Stack] = field(default_factory=dict, repr=False)


@dataclass(eq=False)
class Pipeline:
    slug: str
    org: Organization = field(repr=False)
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    builds: list[Build] = field(default_factory=list, repr=False)
    next_number: int = 1


@dataclass(eq=False)
class Build:
    id: str
    number: int
    pipeline: Pipeline = field(repr=False)
    branch: str
    commit: str
    message: str
    created_at: float
    meta_data: dict[str, str]
    env: dict[str, str]
    jobs: list[Job] = field(default_factory=list, repr=False)
    state_override: str | None = None
    cancel_reason: str | None = None


@dataclass(eq=False)
class Agent:
    id: str
    name: str
    org: str
    access_token: str = field(repr=False)
    tags: list[str] = field(default_factory=list)
    hostname: str = ""
    connected: bool = False
    job_id: str | None = None


@dataclass(eq=False)
class Job:
    id: str
    build: Build = field(repr=False)
    seq: int
    type: str
    name: str | None
    step_key: str | None
    command: str | None
    agent_query_rules: list[str]
    priority: int
    env: dict[str, str]
    state: str
    created_at: float
    scheduled_at: float
    runnable_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    exit_status: int | None = None
    signal: str | None = None
    signal_reason: str | None = None
    soft_failed: bool = False
    agent: Agent | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    reserved_by: str | None = None
    reserved_until: float = 0.0
    stack_finish_detail: str | None = None
    retried: bool = False
    retried_in_job_id: str | None = None
    retries_count: int | None = None
    retry_source: dict[str, str] | None = None
    parallel_group_index: int | None = None
    parallel_group_total: int | None = None
    timeline: list[Event] = field(default_factory=list, repr=False)
    chunks: dict[int, bytes] = field(default_factory=dict, repr=False)

    @property
    def queue_rule(self) -> str | None:
        """The ``queue=`` agent query rule's value, if any."""
        for rule in self.agent_query_rules:
            key, sep, value = rule.partition("=")
            if sep and key == "queue":
                return value
        return None


@dataclass(eq=False)
class Queue:
    """A cluster queue; ``dispatch_paused`` is what the Stacks API reports."""

    key: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    dispatch_paused: bool = False


@dataclass(eq=False)
class Stack:
    key: str
    type: str
    queue_key: str
    metadata: dict[str, str]
    org: str
    id: str = field(default_factory=lambda: str(uuid.uuid4()))
    last_connected_on: float = 0.0


@dataclass(frozen=True)
class NewBuild:
    """What ``add_build`` returns."""

    id: str
    number: int
    job_ids: tuple[str, ...]
    web_url: str


class _Window:
    """A sliding-window request counter. Refused requests are not counted, so a client that
    waits ``reset`` seconds gets through again."""

    def __init__(self, limit: int, seconds: float) -> None:
        self.limit = limit
        self.seconds = seconds
        self.hits: deque[float] = deque()

    def _trim(self, now: float) -> None:
        while self.hits and now - self.hits[0] >= self.seconds:
            self.hits.popleft()

    def full(self, now: float) -> bool:
        self._trim(now)
        return len(self.hits) >= self.limit

    def take(self, now: float) -> None:
        self.hits.append(now)

    def remaining(self, now: float) -> int:
        self._trim(now)
        return max(0, self.limit - len(self.hits))

    def reset(self, now: float) -> int:
        self._trim(now)
        if not self.hits:
            return max(1, math.ceil(self.seconds))
        return max(1, math.ceil(self.hits[0] + self.seconds - now))


# --- helpers -----------------------------------------------------------------------------------


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    stamp = datetime.fromtimestamp(t, timezone.utc)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond // 1000:03d}Z"


def _parse_iso(text: str) -> float:
    """ISO 8601 to epoch seconds; a naive time is UTC. ValueError when unparsable."""
    value = text.strip()
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    stamp = datetime.fromisoformat(value)
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return stamp.timestamp()


def _credential(request: Request, scheme: str) -> str | None:
    header = request.header("Authorization") or ""
    prefix = scheme + " "
    if not header.startswith(prefix):
        return None
    return header[len(prefix):].strip() or None


def _multi(query: Mapping[str, list[str]], name: str) -> list[str]:
    """Values of ``name`` and of the Rails array form ``name[]``."""
    return [v for key in (name, name + "[]") for v in query.get(key, []) if v != ""]


def _last(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    return values[-1] if values else None


def _flag(query: Mapping[str, list[str]], name: str, default: bool) -> bool:
    value = _last(query, name)
    if value is None:
        return default
    return value.lower() in ("true", "1", "yes")


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"message": message}, dict(headers or {}))


def _json_body(request: Request) -> Any:
    """The request body as JSON (``{}`` when empty); ValueError when it is not JSON."""
    if not request.body:
        return {}
    return request.json()


class _BadRequest(Exception):
    """Raised inside a route to answer with ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --- the emulator ------------------------------------------------------------------------------


class Buildkite(Emulator):
    """Buildkite's REST v2 builds API, agent API v3 and Stacks API on one loopback port.

    ``rest_limit``/``rest_user_limit`` requests per ``rest_window`` seconds mirror the REST
    per-organization (200/min) and per-user (50/min) limits; ``stack_limits`` override
    :data:`STACK_LIMITS` per scope (per stack, per ``stack_window`` seconds).
    ``locked_retry_after`` is the ``Retry-After`` of a 423 acquire; ``job_status_interval`` is
    what register tells agents about how often to check for cancellation. ``max_list_depth``
    (None = unlimited) makes deep build listings answer 400 as Buildkite does. ``clock``
    stamps model times (created_at, …) so tests can place builds in time; rate windows use
    the monotonic clock.
    """

    def __init__(
        self,
        *,
        org: str = "acme",
        api_token: str = "bkua_emulator_api_token",
        agent_token: str = "bkct_emulator_agent_token",
        faults: Faults | None = None,
        rest_limit: int = 200,
        rest_user_limit: int = 50,
        rest_window: float = 60.0,
        stack_limits: Mapping[str, int] | None = None,
        stack_window: float = 1.0,
        locked_retry_after: float = 1.0,
        job_status_interval: float = 1,
        max_list_depth: int | None = None,
        max_stacks: int | None = None,
        default_queue: str = "default",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.default_org = org
        self.api_token = api_token
        self.agent_token = agent_token
        self.api_tokens: dict[str, str] = {api_token: str(uuid.uuid4())}  # token -> user id
        self.agent_tokens: dict[str, str] = {agent_token: org}  # cluster token -> org slug
        self.rest_limit = rest_limit
        self.rest_user_limit = rest_user_limit
        self.rest_window = rest_window
        self.stack_limits = {**STACK_LIMITS, **(stack_limits or {})}
        self.stack_window = stack_window
        self.locked_retry_after = locked_retry_after
        self.job_status_interval = job_status_interval
        self.max_list_depth = max_list_depth
        self.max_stacks = max_stacks
        self.default_queue = default_queue
        self.clock = clock
        self.orgs: dict[str, Organization] = {org: Organization(org)}
        self.jobs: dict[str, Job] = {}
        self.builds: dict[str, Build] = {}
        self.agents: dict[str, Agent] = {}  # access token -> agent
        self._windows: dict[tuple[str, ...], _Window] = {}
        self._seq = 0
        super().__init__(faults)

    # --- routes ----------------------------------------------------------------------------

    def routes(self) -> Sequence[tuple[str, str, Callable[[Request], Reply]]]:
        org = r"/v2/organizations/(?P<org>[^/]+)"
        builds = org + r"/pipelines/(?P<pipeline>[^/]+)/builds"
        build = builds + r"/(?P<number>\d+)"
        stack = r"/v3/stacks/(?P<key>[^/]+)"
        rest, st = self._rest, self._stack
        return [
            ("GET", r"/v2/builds", rest(self.list_all_builds)),
            ("GET", org + r"/builds", rest(self.list_org_builds)),
            ("GET", builds, rest(self.list_pipeline_builds)),
            ("GET", build, rest(self.get_build)),
            ("PUT", build + r"/cancel", rest(self.cancel_build_route)),
            ("PUT", build + r"/jobs/(?P<job>[^/]+)/retry", rest(self.retry_job_route)),
            ("GET", build + r"/jobs/(?P<job>[^/]+)/log", rest(self.job_log_route)),
            ("POST", r"/v3/register", self.register_agent),
            ("POST", r"/v3/connect", self.connect_agent),
            ("POST", r"/v3/disconnect", self.disconnect_agent),
            ("GET", r"/v3/metrics/queue", self.queue_metrics),
            ("PUT", r"/v3/jobs/(?P<job>[^/]+)/acquire", self.acquire_job),
            ("GET", r"/v3/jobs/(?P<job>[^/]+)", self.agent_job_state),
            ("PUT", r"/v3/jobs/(?P<job>[^/]+)/start", self.start_job),
            ("PUT", r"/v3/jobs/(?P<job>[^/]+)/finish", self.finish_job_route),
            ("POST", r"/v3/jobs/(?P<job>[^/]+)/chunks", self.upload_chunk),
            ("POST", r"/v3/stacks/register", self.register_stack),
            ("POST", stack + r"/deregister", st("default", self.deregister_stack)),
            ("GET", stack + r"/scheduled-jobs", st("list-scheduled-jobs", self.scheduled_jobs)),
            ("PUT", stack + r"/scheduled-jobs/batch-reserve",
             st("batch-reserve", self.batch_reserve)),
            ("POST", stack + r"/jobs/get-states", st("batch-load-job-states", self.job_states)),
            ("GET", stack + r"/jobs/(?P<job>[^/]+)", st("show-job", self.stack_job)),
            ("POST", stack + r"/jobs/(?P<job>[^/]+)/finish", st("finish-job", self.stack_finish)),
            ("POST", stack + r"/notifications", st("stack-notification", self.notify)),
        ]

    def error_body(self, status: int, message: str) -> Any:
        """Buildkite's error shape for every API: ``{"message": …}``."""
        return {"message": message}

    def authorize(self, request: Request) -> Reply | None:
        """Bearer API tokens for ``/v2``; ``Token`` cluster, agent-access or job tokens for
        ``/v3`` (see the module docstring). Runs before the route, so a 401 carries no
        rate-limit headers."""
        path = request.path
        if path.startswith("/v2/"):
            token = _credential(request, "Bearer")
            if token is None or token not in self.api_tokens:
                return _error(401, "Authentication required. Please supply a valid API "
                                   "Access Token: https://buildkite.com/docs/apis/rest-api"
                                   "#authentication")
            return None
        token = _credential(request, "Token")
        if token is None:
            return _error(401, "Missing or malformed Authorization header")
        if path in ("/v3/register", "/v3/metrics/queue") or path.startswith("/v3/stacks/"):
            ok = token in self.agent_tokens
        elif "job" in request.params and not path.endswith("/acquire"):
            job = self.jobs.get(request.params["job"])
            holder = job.agent.access_token if job is not None and job.agent else None
            if job is None:
                ok = token in self.agents or any(j.token == token for j in self.jobs.values())
            else:
                ok = token in (job.token, holder)
        else:
            ok = token in self.agents
        return None if ok else _error(401, "Invalid access token")

    # --- rate limits -----------------------------------------------------------------------

    def _window(self, key: tuple[str, ...], limit: int, seconds: float) -> _Window:
        window = self._windows.get(key)
        if window is None or window.limit != limit or window.seconds != seconds:
            window = self._windows[key] = _Window(limit, seconds)
        return window

    @staticmethod
    def _limit_headers(prefix: str, scope: str, window: _Window, now: float) -> dict[str, str]:
        return {
            f"{prefix}-Scope": scope,
            f"{prefix}-Remaining": str(window.remaining(now)),
            f"{prefix}-Limit": str(window.limit),
            f"{prefix}-Reset": str(window.reset(now)),
        }

    @staticmethod
    def _over(scope: str, window: _Window, now: float, headers: Mapping[str, str]) -> Reply:
        reset = window.reset(now)
        body = {
            "message": "You have exceeded your API rate limit. Please wait "
                       f"{reset} seconds before making more requests.",
            "scope": scope,
            "limit": window.limit,
            "current": len(window.hits) + 1,
            "reset": reset,
        }
        return Reply(429, body, dict(headers))

    def _rest(self, handler: Callable[[Request], Reply]) -> Callable[[Request], Reply]:
        """Wrap a REST route in the organization (``RateLimit-*``, scope ``rest``) and per-user
        (``RateLimit-User-*``, scope ``rest_user``) limits: both header sets on every answer,
        429 with ``{message, scope, limit, current, reset}`` when either is used up.
        **[choice]**: no ``Retry-After`` (the docs say to wait ``RateLimit-Reset``)."""

        def route(request: Request) -> Reply:
            now = time.monotonic()
            user = self.api_tokens[_credential(request, "Bearer") or ""]
            org = request.params.get("org", self.default_org)
            org_w = self._window(("rest", org), self.rest_limit, self.rest_window)
            user_w = self._window(("rest_user", user), self.rest_user_limit, self.rest_window)
            refused = [(s, w) for s, w in (("rest", org_w), ("rest_user", user_w)) if w.full(now)]
            if not refused:
                org_w.take(now)
                user_w.take(now)
            headers = {**self._limit_headers("RateLimit", "rest", org_w, now),
                       **self._limit_headers("RateLimit-User", "rest_user", user_w, now)}
            if refused:
                return self._over(*refused[0], now, headers)
            reply = self._guarded(handler, request)
            return Reply(reply.status, reply.body, {**reply.headers, **headers})

        return route

    def _stack(self, scope: str, handler: Callable[[Request], Reply]
               ) -> Callable[[Request], Reply]:
        """Wrap a Stacks API route in its per-stack, per-scope limit (``RateLimit-*`` headers on
        every answer, 429 when over) and answer 404 for a stack that is not registered."""

        def route(request: Request) -> Reply:
            key = request.params["key"]
            org = self.agent_tokens[_credential(request, "Token") or ""]
            now = time.monotonic()
            window = self._window(("stack", org, key, scope), self.stack_limits[scope],
                                  self.stack_window)
            full = window.full(now)
            if not full:
                window.take(now)
            headers = self._limit_headers("RateLimit", scope, window, now)
            if full:
                return self._over(scope, window, now, headers)
            if key not in self.orgs[org].stacks:
                return _error(404, f"Stack {key} not found", headers)
            reply = self._guarded(handler, request)
            return Reply(reply.status, reply.body, {**reply.headers, **headers})

        return route

    @staticmethod
    def _guarded(handler: Callable[[Request], Reply], request: Request) -> Reply:
        try:
            return handler(request)
        except _BadRequest as exc:
            return _error(exc.status, exc.message)

    def reset_rate_limits(self) -> None:
        """Forget every request counted so far (REST and Stacks)."""
        with self.lock:
            self._windows.clear()

    # --- model helpers (for tests) ---------------------------------------------------------

    def _now(self) -> float:
        return float(self.clock())

    def _org(self, slug: str | None) -> Organization:
        slug = slug or self.default_org
        if slug not in self.orgs:
            self.orgs[slug] = Organization(slug)
        return self.orgs[slug]

    def add_organization(self, slug: str, agent_token: str | None = None) -> Organization:
        """An organization, optionally with its own cluster agent token."""
        with self.lock:
            org = self._org(slug)
            if agent_token is not None:
                self.agent_tokens[agent_token] = slug
            return org

    def add_queue(self, key: str, *, org: str | None = None) -> Queue:
        """A cluster queue (created on demand by jobs and stack registration too)."""
        with self.lock:
            return self._queue(self._org(org), key)

    def _queue(self, org: Organization, key: str) -> Queue:
        if key == _DEFAULT_QUEUE_ALIAS:
            key = self.default_queue
        if key not in org.queues:
            org.queues[key] = Queue(key)
        return org.queues[key]

    def _job_queue(self, job: Job) -> str:
        return job.queue_rule or self.default_queue

    def pause_queue(self, key: str, paused: bool = True, *, org: str | None = None) -> None:
        """Pause (or resume) dispatch on a cluster queue."""
        with self.lock:
            self._queue(self._org(org), key).dispatch_paused = paused

    def add_build(
        self,
        pipeline: str,
        jobs: Iterable[Mapping[str, Any]] | None = None,
        state: str = "scheduled",
        *,
        org: str | None = None,
        branch: str = "main",
        commit: str | None = None,
        message: str = "emulated build",
        created_at: float | None = None,
        meta_data: Mapping[str, str] | None = None,
        env: Mapping[str, str] | None = None,
        build_state: str | None = None,
    ) -> NewBuild:
        """Add a build of ``pipeline`` whose jobs start in ``state`` (a job dict's own
        ``"state"`` wins). Job dicts take ``step_key`` (or ``key``), ``name``/``label``,
        ``command``, ``agent_query_rules``, ``type`` (script), ``priority``, ``env``, ``id``,
        ``parallel_group_index``/``_total``, ``soft_failed``. The build's state is derived from
        its jobs unless ``build_state`` pins it."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self.lock:
            organization = self._org(org)
            pipe = organization.pipelines.get(pipeline)
            if pipe is None:
                pipe = organization.pipelines[pipeline] = Pipeline(pipeline, organization)
            at = self._now() if created_at is None else float(created_at)
            bld = Build(
                id=str(uuid.uuid4()), number=pipe.next_number, pipeline=pipe, branch=branch,
                commit=commit or secrets.token_hex(20), message=message, created_at=at,
                meta_data=dict(meta_data or {}), env=dict(env or {}), state_override=build_state,
            )
            pipe.next_number += 1
            for spec in jobs if jobs is not None else [{"command": "true"}]:
                self._add_job(bld, spec, state, at)
            pipe.builds.append(bld)
            self.builds[bld.id] = bld
            return NewBuild(bld.id, bld.number, tuple(j.id for j in bld.jobs),
                            self._build_web_url(bld))

    def _add_job(self, bld: Build, spec: Mapping[str, Any], state: str, at: float) -> Job:
        unknown = set(spec) - _JOB_KEYS
        if unknown:
            raise ValueError(f"unknown job keys {sorted(unknown)}")
        job_state = spec.get("state", state)
        job_type = spec.get("type", "script")
        if job_state not in JOB_STATES:
            raise ValueError(f"unknown job state {job_state!r}")
        if job_type not in _JOB_TYPES:
            raise ValueError(f"unknown job type {job_type!r}")
        job_id = str(spec.get("id") or uuid.uuid4())
        if job_id in self.jobs:
            raise ValueError(f"duplicate job id {job_id}")
        self._seq += 1
        job = Job(
            id=job_id, build=bld, seq=self._seq, type=job_type,
            name=spec.get("name", spec.get("label")),
            step_key=spec.get("step_key", spec.get("key")),
            command=spec.get("command") if job_type == "script" else None,
            agent_query_rules=list(spec.get("agent_query_rules", [])),
            priority=int(spec.get("priority", 0)), env=dict(spec.get("env", {})),
            state=job_state, created_at=at, scheduled_at=at,
            runnable_at=at if job_state == "scheduled" else None,
            soft_failed=bool(spec.get("soft_failed", False)),
            parallel_group_index=spec.get("parallel_group_index"),
            parallel_group_total=spec.get("parallel_group_total"),
        )
        job.timeline.append(Event(at, "state", job_state))
        bld.jobs.append(job)
        self.jobs[job.id] = job
        self._queue(bld.pipeline.org, self._job_queue(job))
        return job

    def _get_job(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise KeyError(f"no job {job_id}") from None

    def _transition(self, job: Job, state: str, now: float | None = None) -> None:
        now = self._now() if now is None else now
        if state == job.state:
            return
        job.state = state
        job.timeline.append(Event(now, "state", state))
        if state == "scheduled" and job.runnable_at is None:
            job.runnable_at = now
        if state == "running" and job.started_at is None:
            job.started_at = now
        if state in FINISHED:
            job.finished_at = now
            job.reserved_by = None
            if job.agent is not None and job.agent.job_id == job.id:
                job.agent.job_id = None

    def _cancel(self, job: Job) -> bool:
        """Cancel one job: a running one goes to ``canceling`` (its agent must stop it and
        finish), anything not yet running is ``canceled`` at once. False when finished."""
        if job.state in FINISHED or job.state == "canceling":
            return False
        self._transition(job, "canceling" if job.state in ("running", "timing_out")
                         else "canceled")
        return True

    def cancel_job(self, job_id: str) -> str:
        """Cancel a job as the web UI does; returns its new state."""
        with self.lock:
            job = self._get_job(job_id)
            self._cancel(job)
            return job.state

    def cancel_build(self, build_id: str, reason: str | None = None) -> str:
        """Cancel every unfinished job of a build; returns the build's new state."""
        with self.lock:
            bld = self.builds[build_id]
            self._cancel_build(bld, reason)
            return self._build_state(bld)

    def _cancel_build(self, bld: Build, reason: str | None) -> bool:
        changed = [self._cancel(j) for j in bld.jobs]
        if any(changed):
            bld.cancel_reason = reason
        return any(changed)

    def take_job(self, job_id: str, agent_name: str = "another-agent",
                 state: str = "running") -> None:
        """Mark a job as taken by some other agent (``assigned``, ``accepted`` or
        ``running``), so an acquire of it answers 422."""
        if state not in ("assigned", "accepted", "running"):
            raise ValueError("a taken job is assigned, accepted or running")
        with self.lock:
            job = self._get_job(job_id)
            if job.state in FINISHED:
                raise ValueError(f"job {job_id} is already {job.state}")
            other = Agent(str(uuid.uuid4()), agent_name, job.build.pipeline.org.slug,
                          "bkaa_" + secrets.token_hex(16), connected=True, job_id=job.id)
            job.agent = other
            job.token = "bkaj_" + secrets.token_hex(16)
            for step in ("assigned", "accepted", "running"):
                self._transition(job, step)
                if step == state:
                    break

    def set_job_state(self, job_id: str, state: str) -> None:
        """Force a job into ``state`` (e.g. release a ``waiting`` job to ``scheduled``, or
        ``timing_out``/``expired``)."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state!r}")
        with self.lock:
            self._transition(self._get_job(job_id), state)

    def finish_job(self, job_id: str, exit_status: int = 0, *, signal: str | None = None,
                   signal_reason: str | None = None) -> str:
        """Finish a job as its agent would (for jobs taken with :meth:`take_job`)."""
        with self.lock:
            job = self._get_job(job_id)
            self._agent_finish(job, exit_status, signal, signal_reason)
            return job.state

    def retry_job(self, job_id: str) -> str:
        """Retry a finished job: a new job (new UUID) in ``scheduled``; the old one is marked
        ``retried``. Returns the new job's id."""
        with self.lock:
            new = self._retry(self._get_job(job_id))
            if new is None:
                raise ValueError("only a finished job can be retried")
            return new.id

    def _retry(self, old: Job) -> Job | None:
        if old.state not in FINISHED or old.retried or old.type != "script":
            return None
        now = self._now()
        spec = {"step_key": old.step_key, "name": old.name, "command": old.command,
                "agent_query_rules": old.agent_query_rules, "priority": old.priority,
                "env": old.env}
        new = self._add_job(old.build, spec, "scheduled", now)
        new.retries_count = (old.retries_count or 0) + 1
        new.retry_source = {"job_id": old.id, "retry_type": "manual"}
        old.retried = True
        old.retried_in_job_id = new.id
        return new

    def job(self, job_id: str) -> Job:
        """The model object of a job (read it under ``emu.lock`` if the server is busy)."""
        with self.lock:
            return self._get_job(job_id)

    def job_state(self, job_id: str) -> str:
        with self.lock:
            return self._get_job(job_id).state

    def job_history(self, job_id: str) -> list[str]:
        """The states a job went through, oldest first."""
        with self.lock:
            return [e.value for e in self._get_job(job_id).timeline if e.kind == "state"]

    def timeline(self, job_id: str) -> list[tuple[str, str]]:
        """``(kind, value)`` of every timeline event: ``state``, ``reserved``,
        ``notification``, ``stack_finish``."""
        with self.lock:
            return [(e.kind, e.value) for e in self._get_job(job_id).timeline]

    def notifications(self, job_id: str) -> list[str]:
        """The stack notification details of a job, in the order they were stored."""
        with self.lock:
            return [e.value for e in self._get_job(job_id).timeline if e.kind == "notification"]

    def job_log(self, job_id: str) -> str:
        """The uploaded log chunks of a job, joined in sequence order."""
        with self.lock:
            chunks = self._get_job(job_id).chunks
            return b"".join(chunks[k] for k in sorted(chunks)).decode("utf-8", "replace")

    # --- rendering -------------------------------------------------------------------------

    def _build_path(self, bld: Build) -> str:
        return (f"/v2/organizations/{bld.pipeline.org.slug}/pipelines/{bld.pipeline.slug}"
                f"/builds/{bld.number}")

    @staticmethod
    def _build_web_url(bld: Build) -> str:
        return f"{_WEB}/{bld.pipeline.org.slug}/{bld.pipeline.slug}/builds/{bld.number}"

    def _build_state(self, bld: Build) -> str:
        """Derived from the latest job of every step: ``canceling`` while a job cancels;
        ``running``/``failing`` once any job has started or finished while others remain;
        ``scheduled`` before that; then ``canceled``, ``failed`` or ``passed``.
        **[choice]**: a simplification of Buildkite's state machine."""
        if bld.state_override is not None:
            return bld.state_override
        jobs = [j for j in bld.jobs if not j.retried and j.type != "manual"]
        states = [j.state for j in jobs]
        if not states:
            return "passed"
        if "canceling" in states:
            return "canceling"
        failing = any(j.state in _FAILING and not j.soft_failed for j in jobs)
        started = any(s in ACTIVE or s in FINISHED for s in states)
        open_states = [s for s in states if s not in FINISHED and s != "blocked"]
        if open_states:
            if not started:
                return "scheduled"
            return "failing" if failing else "running"
        if "canceled" in states:
            return "canceled"
        return "failed" if failing else "passed"

    @staticmethod
    def _blocked(bld: Build) -> bool:
        return any(j.state == "blocked" for j in bld.jobs if not j.retried)

    def _build_finished_at(self, bld: Build) -> float | None:
        if self._build_state(bld) not in ("passed", "failed", "canceled"):
            return None
        times = [j.finished_at for j in bld.jobs if j.finished_at is not None]
        return max(times) if times else bld.created_at

    def _agent_json(self, agent: Agent | None) -> dict[str, Any] | None:
        if agent is None:
            return None
        return {"id": agent.id, "name": agent.name, "hostname": agent.hostname,
                "url": f"{self.url}/v2/organizations/{agent.org}/agents/{agent.id}",
                "connection_state": "connected" if agent.connected else "disconnected",
                "meta_data": list(agent.tags)}

    def _job_json(self, job: Job) -> dict[str, Any]:
        """A job in the REST data model. **[choice]**: ``priority`` is ``{"number": n}``."""
        bld = job.build
        base = self.url + self._build_path(bld) + f"/jobs/{job.id}"
        body: dict[str, Any] = {
            "id": job.id,
            "graphql_id": base64.b64encode(f"Job---{job.id}".encode()).decode(),
            "type": job.type,
            "name": job.name,
            "step_key": job.step_key,
            "priority": {"number": job.priority},
            "agent_query_rules": list(job.agent_query_rules),
            "state": job.state,
            "build_url": self.url + self._build_path(bld),
            "web_url": f"{self._build_web_url(bld)}#{job.id}",
            "created_at": _iso(job.created_at),
            "scheduled_at": _iso(job.scheduled_at),
            "runnable_at": _iso(job.runnable_at),
            "started_at": _iso(job.started_at),
            "finished_at": _iso(job.finished_at),
        }
        if job.type == "script":
            body.update({
                "log_url": base + "/log",
                "raw_log_url": base + "/log.txt",
                "command": job.command,
                "soft_failed": job.soft_failed,
                "exit_status": job.exit_status,
                "signal": job.signal,
                "signal_reason": job.signal_reason,
                "artifact_paths": "",
                "agent": self._agent_json(job.agent),
                "retried": job.retried,
                "retried_in_job_id": job.retried_in_job_id,
                "retries_count": job.retries_count,
                "retry_source": job.retry_source,
                "retry_type": job.retry_source["retry_type"] if job.retry_source else None,
                "parallel_group_index": job.parallel_group_index,
                "parallel_group_total": job.parallel_group_total,
                "matrix": None,
                "cluster_id": None,
                "cluster_queue_id": bld.pipeline.org.queues[self._job_queue(job)].id,
            })
        return body

    def _build_json(self, bld: Build, *, include_retried: bool = False,
                    include_paused: bool = True) -> dict[str, Any]:
        pipe = bld.pipeline
        jobs = [j for j in bld.jobs if include_retried or not j.retried]
        if not include_paused:
            jobs = [j for j in jobs if not self._paused(j)]
        started = [j.started_at for j in bld.jobs if j.started_at is not None]
        return {
            "id": bld.id,
            "graphql_id": base64.b64encode(f"Build---{bld.id}".encode()).decode(),
            "url": self.url + self._build_path(bld),
            "web_url": self._build_web_url(bld),
            "number": bld.number,
            "state": self._build_state(bld),
            "cancel_reason": bld.cancel_reason,
            "blocked": self._blocked(bld),
            "message": bld.message,
            "commit": bld.commit,
            "branch": bld.branch,
            "env": dict(bld.env),
            "source": "api",
            "creator": None,
            "jobs": [self._job_json(j) for j in jobs],
            "created_at": _iso(bld.created_at),
            "scheduled_at": _iso(bld.created_at),
            "started_at": _iso(min(started) if started else None),
            "finished_at": _iso(self._build_finished_at(bld)),
            "meta_data": dict(bld.meta_data),
            "pull_request": None,
            "rebuilt_from": None,
            "pipeline": {
                "id": pipe.id,
                "slug": pipe.slug,
                "name": pipe.slug,
                "url": f"{self.url}/v2/organizations/{pipe.org.slug}/pipelines/{pipe.slug}",
                "web_url": f"{_WEB}/{pipe.org.slug}/{pipe.slug}",
            },
        }

    def _paused(self, job: Job) -> bool:
        queue = job.build.pipeline.org.queues.get(self._job_queue(job))
        return bool(queue and queue.dispatch_paused)

    # --- REST v2 ---------------------------------------------------------------------------

    def list_all_builds(self, request: Request) -> Reply:
        """``GET /v2/builds``: every organization's builds, newest first."""
        builds = [b for o in self.orgs.values() for p in o.pipelines.values() for b in p.builds]
        return self._list_builds(request, builds)

    def list_org_builds(self, request: Request) -> Reply:
        """``GET /v2/organizations/{org}/builds``."""
        org = self.orgs.get(request.params["org"])
        if org is None:
            return _error(404, "No organization found")
        return self._list_builds(request, [b for p in org.pipelines.values() for b in p.builds])

    def list_pipeline_builds(self, request: Request) -> Reply:
        """``GET /v2/organizations/{org}/pipelines/{slug}/builds``."""
        org = self.orgs.get(request.params["org"])
        pipe = org.pipelines.get(request.params["pipeline"]) if org else None
        if pipe is None:
            return _error(404, "No pipeline found")
        return self._list_builds(request, list(pipe.builds))

    def _list_builds(self, request: Request, builds: list[Build]) -> Reply:
        """The builds listing contract: filters ``state``/``state[]`` (``finished`` = passed,
        failed, blocked, canceled), ``branch`` (globs), ``commit``, ``created_from``,
        ``created_to``, ``finished_from``, ``meta_data[k]``, ``include_retried_jobs``,
        ``include_paused``; ``page`` (default 1) and ``per_page`` (default 30, max 100), a
        ``Link`` header with ``first``/``prev``/``next``/``last`` as they apply; newest first.
        **[choice]**: an unknown state, a bad time or a non-integer page answers 400;
        ``per_page`` above 100 is clamped to 100; ``creator`` is accepted and ignored."""
        query = request.query
        try:
            page = int(_last(query, "page") or 1)
            per_page = min(int(_last(query, "per_page") or 30), 100)
            if page < 1 or per_page < 1:
                raise ValueError
        except ValueError:
            return _error(400, "page and per_page must be positive integers")
        states = set(_multi(query, "state"))
        if states - _BUILD_FILTER_STATES:
            return _error(400, f"Invalid state: {', '.join(sorted(states - _BUILD_FILTER_STATES))}")
        if "finished" in states:
            states |= {"passed", "failed", "blocked", "canceled"}
        try:
            created_from = self._time_param(query, "created_from")
            created_to = self._time_param(query, "created_to")
            finished_from = self._time_param(query, "finished_from")
        except ValueError as exc:
            return _error(400, str(exc))
        branches = _multi(query, "branch")
        commits = set(_multi(query, "commit"))
        meta = {k[len("meta_data["):-1]: v[-1] for k, v in query.items()
                if k.startswith("meta_data[") and k.endswith("]")}
        include_retried = _flag(query, "include_retried_jobs", False)
        include_paused = _flag(query, "include_paused", True)

        def keep(b: Build) -> bool:
            state = self._build_state(b)
            if states and state not in states and not ("blocked" in states and self._blocked(b)):
                return False
            if branches and not any(fnmatch.fnmatchcase(b.branch, p) for p in branches):
                return False
            if commits and b.commit not in commits:
                return False
            if created_from is not None and b.created_at < created_from:
                return False
            if created_to is not None and b.created_at >= created_to:
                return False
            if finished_from is not None:
                finished = self._build_finished_at(b)
                if finished is None or finished < finished_from:
                    return False
            if any(b.meta_data.get(k) != v for k, v in meta.items()):
                return False
            return include_paused or not b.jobs or not all(self._paused(j) for j in b.jobs)

        chosen = sorted((b for b in builds if keep(b)),
                        key=lambda b: (b.created_at, b.number), reverse=True)
        if self.max_list_depth is not None and (page - 1) * per_page >= self.max_list_depth:
            return _error(400, "Listing builds this deep is not supported. Please narrow your "
                               "query using filters such as branch or created_from.")
        last = max(1, math.ceil(len(chosen) / per_page))
        items = chosen[(page - 1) * per_page: page * per_page]
        body = [self._build_json(b, include_retried=include_retried,
                                 include_paused=include_paused) for b in items]
        links = self._links(request, page, last)
        return Reply(200, body, {"Link": links} if links else {})

    @staticmethod
    def _time_param(query: Mapping[str, list[str]], name: str) -> float | None:
        value = _last(query, name)
        if value is None or value == "":
            return None
        try:
            return _parse_iso(value)
        except ValueError:
            raise ValueError(f"{name} is not an ISO 8601 time: {value}") from None

    def _links(self, request: Request, page: int, last: int) -> str:
        kept = [(k, v) for k, vs in request.query.items() if k != "page" for v in vs]

        def link(n: int, rel: str) -> str:
            query = urllib.parse.urlencode([*kept, ("page", str(n))])
            return f'<{self.url}{request.path}?{query}>; rel="{rel}"'

        parts = []
        if page < last:
            parts += [link(page + 1, "next"), link(last, "last")]
        if page > 1:
            parts += [link(1, "first"), link(min(page - 1, last), "prev")]
        return ", ".join(parts)

    def _rest_build(self, request: Request) -> Build | None:
        org = self.orgs.get(request.params["org"])
        pipe = org.pipelines.get(request.params["pipeline"]) if org else None
        number = int(request.params["number"])
        return next((b for b in pipe.builds if b.number == number), None) if pipe else None

    def get_build(self, request: Request) -> Reply:
        """``GET …/builds/{number}``."""
        bld = self._rest_build(request)
        if bld is None:
            return _error(404, "No build found")
        return Reply(200, self._build_json(
            bld, include_retried=_flag(request.query, "include_retried_jobs", False)))

    def cancel_build_route(self, request: Request) -> Reply:
        """``PUT …/builds/{number}/cancel``: 200 with the build, 422 when nothing is left to
        cancel. **[choice]**: the 422 message."""
        bld = self._rest_build(request)
        if bld is None:
            return _error(404, "No build found")
        if not self._cancel_build(bld, None):
            return _error(422, "Build can't be canceled because it's already finished")
        return Reply(200, self._build_json(bld))

    def retry_job_route(self, request: Request) -> Reply:
        """``PUT …/jobs/{id}/retry``: a new job with a new UUID; 422 unless the job is a
        finished, not yet retried command job."""
        bld = self._rest_build(request)
        job = self.jobs.get(request.params["job"])
        if bld is None or job is None or job.build is not bld:
            return _error(404, "No job found")
        new = self._retry(job)
        if new is None:
            return _error(422, "Job can't be retried")
        return Reply(200, self._job_json(new))

    def job_log_route(self, request: Request) -> Reply:
        """``GET …/jobs/{id}/log``: ``{url, content, size, header_times}``."""
        bld = self._rest_build(request)
        job = self.jobs.get(request.params["job"])
        if bld is None or job is None or job.build is not bld:
            return _error(404, "No job found")
        content = b"".join(job.chunks[k] for k in sorted(job.chunks)).decode("utf-8", "replace")
        return Reply(200, {"url": self.url + request.path, "content": content,
                           "size": len(content.encode()), "header_times": []})

    # --- agent API v3 ----------------------------------------------------------------------

    def _agent(self, request: Request) -> Agent:
        return self.agents[_credential(request, "Token") or ""]

    def register_agent(self, request: Request) -> Reply:
        """``POST /v3/register`` with the cluster token: ``{id, name, access_token, endpoint,
        ping_interval, job_status_interval, heartbeat_interval, meta_data}`` (``api/agents.go``).
        The tags are the body's ``meta_data``."""
        try:
            body = _json_body(request)
        except ValueError:
            return _error(400, "Body is not JSON")
        if not isinstance(body, dict):
            return _error(400, "Body must be a JSON object")
        org = self.agent_tokens[_credential(request, "Token") or ""]
        tags = [str(t) for t in body.get("meta_data") or []]
        agent = Agent(str(uuid.uuid4()), str(body.get("name") or "agent"), org,
                      "bkaa_" + secrets.token_hex(16), tags, str(body.get("hostname") or ""))
        self.agents[agent.access_token] = agent
        return Reply(200, {
            "id": agent.id, "name": agent.name, "access_token": agent.access_token,
            "endpoint": self.url + "/v3", "request_headers": {}, "ping_interval": 10,
            "job_status_interval": self.job_status_interval, "heartbeat_interval": 60,
            "meta_data": tags,
        })

    def connect_agent(self, request: Request) -> Reply:
        """``POST /v3/connect``."""
        agent = self._agent(request)
        agent.connected = True
        return Reply(200, {"id": agent.id, "connection_state": "connected"})

    def disconnect_agent(self, request: Request) -> Reply:
        """``POST /v3/disconnect``."""
        agent = self._agent(request)
        agent.connected = False
        return Reply(200, {"id": agent.id, "connection_state": "disconnected"})

    def queue_metrics(self, request: Request) -> Reply:
        """``GET /v3/metrics/queue?name=<queue>`` (cluster token): ``agents{idle,busy,total}``,
        ``jobs{scheduled,running,waiting,total}``, ``organization{slug}``.
        **[choice]**: ``waiting`` counts waiting/blocked/limited jobs; an agent serves the queue
        its ``queue=`` tag names (default queue without one)."""
        name = _last(request.query, "name")
        if not name:
            return _error(400, "name is required")
        slug = self.agent_tokens[_credential(request, "Token") or ""]
        key = self.default_queue if name == _DEFAULT_QUEUE_ALIAS else name
        agents = [a for a in self.agents.values() if a.org == slug and a.connected
                  and self._agent_queue(a) == key]
        jobs = [j for j in self.jobs.values() if j.build.pipeline.org.slug == slug
                and j.type == "script" and self._job_queue(j) == key]
        counts = {
            "scheduled": sum(j.state == "scheduled" for j in jobs),
            "running": sum(j.state in ACTIVE for j in jobs),
            "waiting": sum(j.state in NOT_YET_ELIGIBLE for j in jobs),
        }
        busy = sum(a.job_id is not None for a in agents)
        return Reply(200, {
            "agents": {"idle": len(agents) - busy, "busy": busy, "total": len(agents)},
            "jobs": {**counts, "total": sum(counts.values())},
            "organization": {"slug": slug},
        })

    def _agent_queue(self, agent: Agent) -> str:
        for tag in agent.tags:
            key, sep, value = tag.partition("=")
            if sep and key == "queue":
                return value
        return self.default_queue

    def _job_env(self, job: Job, agent: Agent | None) -> dict[str, str]:
        bld = job.build
        env = {
            "CI": "true",
            "BUILDKITE": "true",
            "BUILDKITE_JOB_ID": job.id,
            "BUILDKITE_BUILD_ID": bld.id,
            "BUILDKITE_BUILD_NUMBER": str(bld.number),
            "BUILDKITE_BUILD_URL": self._build_web_url(bld),
            "BUILDKITE_PIPELINE_SLUG": bld.pipeline.slug,
            "BUILDKITE_ORGANIZATION_SLUG": bld.pipeline.org.slug,
            "BUILDKITE_BRANCH": bld.branch,
            "BUILDKITE_COMMIT": bld.commit,
            "BUILDKITE_MESSAGE": bld.message,
            "BUILDKITE_STEP_KEY": job.step_key or "",
            "BUILDKITE_LABEL": job.name or "",
            "BUILDKITE_COMMAND": job.command or "",
            "BUILDKITE_RETRY_COUNT": str(job.retries_count or 0),
            **bld.env,
            **job.env,
        }
        if agent is not None:
            env["BUILDKITE_AGENT_ID"] = agent.id
            env["BUILDKITE_AGENT_NAME"] = agent.name
        return env

    def acquire_job(self, request: Request) -> Reply:
        """``PUT /v3/jobs/{id}/acquire`` (agent access token), as ``core/client.go`` expects:

        * 200 with the job (``id``, ``endpoint``, ``state``, ``env`` incl. ``BUILDKITE_COMMAND``,
          ``step``, ``token`` for the job's own calls, ``runnable_at`` …) when it is
          ``scheduled``; the job goes ``assigned`` → ``accepted``.
        * 423 Locked with ``Retry-After`` when the job is not yet runnable (waiting on a
          dependency, see :data:`NOT_YET_ELIGIBLE`) and the agent sent
          ``X-Buildkite-Lock-Acquire-Job: 1``; without that header 422 (the old behaviour of
          agent issue #1880).
        * 422 when it is taken (assigned/accepted/running), finished, cancelled or not a
          command job; 404 for an unknown job or one of another organization.

        **[choice]**: a reserved job may be acquired (that is what the reserving stack's agent
        does); a paused queue does not stop an acquire.
        """
        agent = self._agent(request)
        job = self.jobs.get(request.params["job"])
        if job is None or job.build.pipeline.org.slug != agent.org:
            return _error(404, "No job found")
        if job.type != "script":
            return _error(422, f"Job {job.id} is not a command job")
        if job.state in NOT_YET_ELIGIBLE:
            message = f"Job {job.id} is not yet eligible to be assigned"
            if request.header("X-Buildkite-Lock-Acquire-Job") == "1":
                return _error(423, message, {"Retry-After": _seconds(self.locked_retry_after)})
            return _error(422, message)
        if job.state != "scheduled":
            return _error(422, f"Job {job.id} can't be acquired: it is {job.state}")
        now = self._now()
        job.agent = agent
        job.token = "bkaj_" + secrets.token_hex(16)
        agent.job_id = job.id
        self._transition(job, "assigned", now)
        self._transition(job, "accepted", now)
        return Reply(200, {
            "id": job.id,
            "endpoint": self.url + "/v3",
            "state": job.state,
            "env": self._job_env(job, agent),
            "step": {"key": job.step_key, "label": job.name, "command": job.command,
                     "agents": list(job.agent_query_rules)},
            "token": job.token,
            "chunks_max_size_bytes": 102400,
            "log_max_size_bytes": 1024 * 1024 * 1024,
            "runnable_at": _iso(job.runnable_at),
        })

    def _job_for_token(self, request: Request) -> Job | None:
        return self.jobs.get(request.params["job"])

    def agent_job_state(self, request: Request) -> Reply:
        """``GET /v3/jobs/{id}``: ``{"state": …}``; the agent polls it every
        ``job_status_interval`` seconds and stops the command on ``canceling``/``canceled``."""
        job = self._job_for_token(request)
        if job is None:
            return _error(404, "No job found")
        return Reply(200, {"id": job.id, "state": job.state})

    def start_job(self, request: Request) -> Reply:
        """``PUT /v3/jobs/{id}/start`` (job token), ``{started_at}``: ``accepted`` →
        ``running``; 422 from any other state (e.g. cancelled before it started)."""
        job = self._job_for_token(request)
        if job is None:
            return _error(404, "No job found")
        if job.state != "accepted":
            return _error(422, f"Job {job.id} can't be started: it is {job.state}")
        self._transition(job, "running")
        return Reply(200, {"id": job.id, "state": job.state})

    def finish_job_route(self, request: Request) -> Reply:
        """``PUT /v3/jobs/{id}/finish`` (job token), ``{exit_status (a string), signal,
        signal_reason, finished_at, chunks_failed_count}``. The job becomes ``canceled`` if it
        was ``canceling`` or ``signal_reason`` is ``cancel``, ``timed_out`` if it was
        ``timing_out``, else ``passed`` (exit 0) or ``failed``. 422 unless the job is held.
        **[choice]**: ``signal_reason: agent_stop`` on a job nobody cancelled gives
        ``failed``."""
        job = self._job_for_token(request)
        if job is None:
            return _error(404, "No job found")
        try:
            body = _json_body(request)
            exit_status = int(str(body.get("exit_status", "")).strip())
        except (ValueError, AttributeError):
            return _error(422, "exit_status must be an integer")
        if job.state not in ACTIVE:
            return _error(422, f"Job {job.id} can't be finished: it is {job.state}")
        self._agent_finish(job, exit_status, body.get("signal") or None,
                           body.get("signal_reason") or None)
        return Reply(200, {"id": job.id, "state": job.state})

    def _agent_finish(self, job: Job, exit_status: int, signal: str | None,
                      signal_reason: str | None) -> None:
        if job.state in FINISHED:
            raise ValueError(f"job {job.id} is already {job.state}")
        job.exit_status = exit_status
        job.signal = signal
        job.signal_reason = signal_reason
        if job.state == "canceling" or signal_reason == "cancel":
            state = "canceled"
        elif job.state == "timing_out":
            state = "timed_out"
        else:
            state = "passed" if exit_status == 0 else "failed"
        self._transition(job, state)

    def upload_chunk(self, request: Request) -> Reply:
        """``POST /v3/jobs/{id}/chunks?sequence=&offset=&size=``: a log chunk, gzipped when
        ``Content-Encoding: gzip``. Stored by sequence; read with :meth:`job_log`.
        **[choice]**: 201 with no body; the old multipart form is not supported."""
        job = self._job_for_token(request)
        if job is None:
            return _error(404, "No job found")
        if job.state not in ACTIVE:
            return _error(422, f"Job {job.id} is {job.state}; no more log chunks")
        data = request.body
        if (request.header("Content-Encoding") or "").lower() == "gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError):
                return _error(400, "chunk is not gzip data")
        try:
            sequence = int(_last(request.query, "sequence") or len(job.chunks) + 1)
        except ValueError:
            return _error(400, "sequence must be an integer")
        job.chunks[sequence] = data
        return Reply(201)

    # --- Stacks API ------------------------------------------------------------------------

    def _stack_org(self, request: Request) -> Organization:
        return self.orgs[self.agent_tokens[_credential(request, "Token") or ""]]

    def _stack_body(self, request: Request) -> dict[str, Any]:
        try:
            body = _json_body(request)
        except ValueError:
            raise _BadRequest(400, "Body is not JSON") from None
        if not isinstance(body, dict):
            raise _BadRequest(400, "Body must be a JSON object")
        return body

    @staticmethod
    def _uuids(body: Mapping[str, Any]) -> list[str]:
        uuids = body.get("job_uuids")
        if not isinstance(uuids, list) or not all(isinstance(u, str) for u in uuids):
            raise _BadRequest(400, "job_uuids must be an array of strings")
        if len(uuids) > 1000:
            raise _BadRequest(400, "job_uuids accepts at most 1000 UUIDs")
        return uuids

    def _stack_json(self, stack: Stack) -> dict[str, Any]:
        return {
            "id": stack.id,
            "organization_uuid": self.orgs[stack.org].id,
            "key": stack.key,
            "type": stack.type,
            "cluster_queue_key": stack.queue_key,
            "metadata": dict(stack.metadata),
            "last_connected_on": _iso(stack.last_connected_on or None),
            "state": "connected",
        }

    def register_stack(self, request: Request) -> Reply:
        """``POST /v3/stacks/register`` ``{key, type, queue_key, metadata}``: 201 for a new
        stack, 200 when it updates an existing one (idempotent); 422 for a missing or invalid
        field, 403 when ``max_stacks`` are registered. Rate-limited under scope ``default``.
        **[choice]**: registering creates the queue if the emulator has not seen it."""
        org = self._stack_org(request)
        try:
            body = self._stack_body(request)
        except _BadRequest as exc:
            return _error(exc.status, exc.message)
        key = body.get("key")
        now = time.monotonic()
        window = self._window(("stack", org.slug, str(key), "default"),
                              self.stack_limits["default"], self.stack_window)
        full = window.full(now)
        if not full:
            window.take(now)
        headers = self._limit_headers("RateLimit", "default", window, now)
        if full:
            return self._over("default", window, now, headers)
        problem = _stack_problem(body)
        if problem:
            return _error(422, problem, headers)
        existing = org.stacks.get(key)
        if existing is None and self.max_stacks is not None and len(org.stacks) >= self.max_stacks:
            return _error(403, "Stack limit exceeded for this organization", headers)
        queue = self._queue(org, body["queue_key"])
        if existing is None:
            stack = org.stacks[key] = Stack(key, body["type"], queue.key, dict(body["metadata"]),
                                            org.slug)
        else:
            stack = existing
            stack.type, stack.queue_key = body["type"], queue.key
            stack.metadata = dict(body["metadata"])
        return Reply(201 if existing is None else 200, self._stack_json(stack), headers)

    def deregister_stack(self, request: Request) -> Reply:
        """``POST /v3/stacks/{key}/deregister``: 204; the stack's reservations are released."""
        org = self._stack_org(request)
        key = request.params["key"]
        del org.stacks[key]
        for job in self.jobs.values():
            if job.reserved_by == key and job.build.pipeline.org is org:
                job.reserved_by = None
        return Reply(204)

    def _reserved(self, job: Job, now: float) -> bool:
        if job.reserved_by is not None and job.reserved_until <= now:
            job.reserved_by = None
        return job.reserved_by is not None

    def scheduled_jobs(self, request: Request) -> Reply:
        """``GET /v3/stacks/{key}/scheduled-jobs?queue_key=&limit=&after=``: ``scheduled``
        command jobs of the queue that no live reservation holds, oldest ``scheduled_at``
        first, as ``{jobs[{id, priority, agent_query_rules, scheduled_at, pipeline{slug,uuid},
        build{number,branch,uuid}, step{key}}], page_info{has_next_page, end_cursor},
        cluster_queue{id, dispatch_paused}}``. Jobs are listed even while dispatch is paused:
        the flag is for the stack to respect. ``queue_key=__default__`` is the default queue.
        400 without ``queue_key`` or with a bad ``limit``/``after``; 404 for an unknown queue.
        **[choice]**: ``limit`` defaults to 100, above 1000 is clamped; the cursor is opaque
        base64; polling stamps the stack's ``last_connected_on``."""
        org = self._stack_org(request)
        stack = org.stacks[request.params["key"]]
        queue_key = _last(request.query, "queue_key")
        if not queue_key:
            return _error(400, "queue_key is required")
        key = self.default_queue if queue_key == _DEFAULT_QUEUE_ALIAS else queue_key
        queue = org.queues.get(key)
        if queue is None:
            return _error(404, f"Self-hosted queue {queue_key} not found")
        try:
            limit = min(int(_last(request.query, "limit") or 100), 1000)
            if limit < 1:
                raise ValueError
        except ValueError:
            return _error(400, "limit must be a positive integer")
        after = _last(request.query, "after")
        try:
            start = tuple(json.loads(base64.urlsafe_b64decode(after))) if after else None
        except (ValueError, TypeError, binascii.Error):
            return _error(400, "after is not a valid cursor")
        now = self._now()
        stack.last_connected_on = now
        jobs = sorted(
            (j for j in self.jobs.values()
             if j.build.pipeline.org is org and j.type == "script" and j.state == "scheduled"
             and self._job_queue(j) == key and not self._reserved(j, now)),
            key=lambda j: (j.scheduled_at, j.seq))
        if start is not None:
            jobs = [j for j in jobs if (j.scheduled_at, j.seq) > start]
        page, rest = jobs[:limit], jobs[limit:]
        cursor = None
        if page:
            last = page[-1]
            cursor = base64.urlsafe_b64encode(
                json.dumps([last.scheduled_at, last.seq]).encode()).decode()
        return Reply(200, {
            "jobs": [self._scheduled_json(j) for j in page],
            "page_info": {"has_next_page": bool(rest), "end_cursor": cursor},
            "cluster_queue": {"id": queue.id, "dispatch_paused": queue.dispatch_paused},
        })

    @staticmethod
    def _scheduled_json(job: Job) -> dict[str, Any]:
        bld = job.build
        return {
            "id": job.id,
            "priority": job.priority,
            "agent_query_rules": list(job.agent_query_rules),
            "scheduled_at": _iso(job.scheduled_at),
            "pipeline": {"slug": bld.pipeline.slug, "uuid": bld.pipeline.id},
            "build": {"number": bld.number, "branch": bld.branch, "uuid": bld.id},
            "step": {"key": job.step_key},
        }

    def batch_reserve(self, request: Request) -> Reply:
        """``PUT /v3/stacks/{key}/scheduled-jobs/batch-reserve`` ``{job_uuids (≤1000),
        reservation_expiry_seconds (default 900, max 3600)}`` → ``{reserved, not_reserved}``. A
        job is reserved when it is a ``scheduled`` command job of this organization that no
        other stack holds; calling again extends the caller's own reservations.
        **[choice]**: the job's state stays ``scheduled`` while reserved (get-states shows
        it); an expiry outside 1..3600 answers 400."""
        org = self._stack_org(request)
        key = request.params["key"]
        body = self._stack_body(request)
        uuids = self._uuids(body)
        expiry = body.get("reservation_expiry_seconds", 900)
        if isinstance(expiry, bool) or not isinstance(expiry, int) or not 1 <= expiry <= 3600:
            return _error(400, "reservation_expiry_seconds must be an integer from 1 to 3600")
        now = self._now()
        reserved: list[str] = []
        not_reserved: list[str] = []
        for job_id in uuids:
            job = self.jobs.get(job_id)
            ok = (job is not None and job.build.pipeline.org is org and job.type == "script"
                  and job.state == "scheduled"
                  and (not self._reserved(job, now) or job.reserved_by == key))
            if not ok or job is None:
                not_reserved.append(job_id)
                continue
            if job.reserved_by != key:
                job.timeline.append(Event(now, "reserved", key))
            job.reserved_by = key
            job.reserved_until = now + expiry
            reserved.append(job_id)
        return Reply(200, {"reserved": reserved, "not_reserved": not_reserved})

    def stack_job(self, request: Request) -> Reply:
        """``GET /v3/stacks/{key}/jobs/{id}`` → ``{id, env, command}``."""
        org = self._stack_org(request)
        job = self.jobs.get(request.params["job"])
        if job is None or job.build.pipeline.org is not org:
            return _error(404, "Job not found")
        return Reply(200, {"id": job.id, "env": self._job_env(job, None),
                           "command": job.command or ""})

    def job_states(self, request: Request) -> Reply:
        """``POST /v3/stacks/{key}/jobs/get-states`` ``{job_uuids}`` → ``{states: {uuid:
        state}}``. **[choice]**: unknown UUIDs are left out."""
        org = self._stack_org(request)
        uuids = self._uuids(self._stack_body(request))
        states = {u: self.jobs[u].state for u in uuids
                  if u in self.jobs and self.jobs[u].build.pipeline.org is org}
        return Reply(200, {"states": states})

    def stack_finish(self, request: Request) -> Reply:
        """``POST /v3/stacks/{key}/jobs/{id}/finish`` ``{exit_status (default -1), detail
        (≤4KB)}``: finishes a job the stack will not run, once per job. Exit 0 gives
        ``passed``; otherwise ``failed`` with ``signal_reason: stack_error``; a ``canceling``
        job becomes ``canceled``. 422 for a missing/long detail or a job already finished;
        404 for an unknown job. **[choice]**: the answer is ``200 {}``; a job an agent is
        running may be finished too."""
        org = self._stack_org(request)
        job = self.jobs.get(request.params["job"])
        if job is None or job.build.pipeline.org is not org:
            return _error(404, "Job not found")
        body = self._stack_body(request)
        detail = body.get("detail")
        exit_status = body.get("exit_status", -1)
        if not isinstance(detail, str) or not detail:
            return _error(422, "detail is required")
        if len(detail.encode()) > 4096:
            return _error(422, "detail exceeds its length limit of 4096 bytes")
        if isinstance(exit_status, bool) or not isinstance(exit_status, int):
            return _error(422, "exit_status must be an integer")
        if job.state in FINISHED or job.stack_finish_detail is not None:
            return _error(422, f"Job {job.id} has already finished")
        now = self._now()
        job.exit_status = exit_status
        job.stack_finish_detail = detail
        job.timeline.append(Event(now, "stack_finish", detail))
        if job.state == "canceling":
            state = "canceled"
        elif exit_status == 0:
            state = "passed"
        else:
            state = "failed"
            job.signal_reason = "stack_error"
        self._transition(job, state, now)
        return Reply(200, {})

    def notify(self, request: Request) -> Reply:
        """``POST /v3/stacks/{key}/notifications`` ``{notifications: [{job_uuid, detail,
        timestamp?}]}`` (≤1000): valid ones are stored on the job's timeline even when others
        fail; ``200 {errors: [{error, indexes}]}``. Rules (stacks.md): detail required and
        ≤256 characters, ≤100 per job, timestamp not in the future nor before the job was
        created, no notifications for a job finished more than 300 s ago.
        **[choice]**: an unknown job gives the error ``job not found``."""
        org = self._stack_org(request)
        items = self._stack_body(request).get("notifications")
        if not isinstance(items, list):
            return _error(400, "notifications must be an array")
        if len(items) > 1000:
            return _error(400, "notifications accepts at most 1000 items")
        now = self._now()
        errors: dict[str, list[int]] = {}
        for index, item in enumerate(items):
            problem, job, at = self._notification_problem(item, org, now)
            if problem is not None or job is None:
                errors.setdefault(problem or "invalid notification", []).append(index)
                continue
            job.timeline.append(Event(at, "notification", item["detail"]))
        return Reply(200, {"errors": [{"error": e, "indexes": i} for e, i in errors.items()]})

    def _notification_problem(self, item: Any, org: Organization, now: float
                              ) -> tuple[str | None, Job | None, float]:
        if not isinstance(item, dict):
            return "notification must be an object", None, now
        job = self.jobs.get(str(item.get("job_uuid")))
        if job is None or job.build.pipeline.org is not org:
            return "job not found", None, now
        detail = item.get("detail")
        if not isinstance(detail, str) or not detail:
            return "detail is required", None, now
        if len(detail) > 256:
            return "detail exceeds its length limit of 256", None, now
        at = now
        if item.get("timestamp"):
            try:
                at = _parse_iso(str(item["timestamp"]))
            except ValueError:
                return "timestamp is invalid", None, now
            if at > now + 1:
                return "timestamp cannot be in the future", None, now
            if at < job.created_at - 1:
                return "timestamp cannot be before job creation", None, now
        if job.finished_at is not None and now - job.finished_at > 300:
            return "job finished more than 300 seconds ago", None, now
        if sum(e.kind == "notification" for e in job.timeline) >= 100:
            return "job stack notification count exceeded", None, now
        return None, job, at


def _seconds(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _stack_problem(body: Mapping[str, Any]) -> str | None:
    """What is wrong with a stack register payload, or None."""
    key = body.get("key")
    if not isinstance(key, str) or not key:
        return "key is required"
    if len(key.encode()) > 80 or not all(c.isascii() and (c.isalnum() or c in "_-")
                                         for c in key):
        return "key may hold only letters, digits, '_' and '-' (at most 80 bytes)"
    if body.get("type") not in _STACK_TYPES:
        return "type must be one of kubernetes, elastic, custom"
    if not isinstance(body.get("queue_key"), str) or not body["queue_key"]:
        return "queue_key is required"
    metadata = body.get("metadata")
    if not isinstance(metadata, dict):
        return "metadata is required and must be an object"
    if len(metadata) > 100:
        return "metadata may hold at most 100 keys"
    for k, v in metadata.items():
        if not isinstance(v, str) or len(k) > 64 or len(v) > 256:
            return "metadata must map keys (≤64 characters) to strings (≤256 characters)"
    return None
