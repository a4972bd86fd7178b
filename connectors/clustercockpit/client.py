"""cc-backend over HTTP: the session, and the reads the connector makes of its job list.

    client = make_client(settings, token)               # one requests session, X-Auth-Token
    version, why = detect_api_version(client, "fritz")  # "1.4", "1.5" or None and why
    runs = list_running(client, "fritz", page_size=1000)  # its running jobs, or why not
    held = runs_in_cc(client, 42, "fritz", lo, hi, page_size=1000)  # {start: state}, or why not

Sending (start_job, stop_job) is ``apply``'s; what a reply means is decided in
``slurm_sync.http`` (``outcome_of``) and, for a 400 from cc-backend's decoder, here
(``schema_error``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from slurm_sync.connectors.clustercockpit.settings import Settings
from slurm_sync.errors import ConfigError
from slurm_sync.http import Reply, ServiceClient
from slurm_sync.secrets import header_problem

__all__ = [
    "RemoteRun",
    "Running",
    "cached_duplicate",
    "detect_api_version",
    "list_running",
    "make_client",
    "remote_runs",
    "runs_in_cc",
    "schema_error",
    "token_from",
]


def make_client(settings: Settings, token: str) -> ServiceClient:
    """The one HTTP session to cc-backend, as the settings say (timeout, retries, TLS)."""
    return ServiceClient(
        settings.url,
        headers={"X-Auth-Token": token, "Content-Type": "application/json"},
        timeout=settings.timeout,
        retries=settings.retries,
        verify=settings.verify,
    )


def token_from(text: str, json_key: str | None) -> str:
    """The token itself, or the string at ``json_key`` when the file is a JSON document;
    errors name the key, never the content."""
    if not json_key:
        return text
    where = "$.connectors.clustercockpit.token_json_key"
    try:
        node: Any = json.loads(text)
    except ValueError:
        raise ConfigError(f"{where}: the token file is not JSON") from None
    for part in json_key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"{where}: the token file has no {json_key!r}")
        node = node[part]
    if not isinstance(node, str) or not node.strip():
        raise ConfigError(f"{where}: {json_key!r} in the token file is not a non-empty string")
    problem = header_problem(node)
    if problem:
        raise ConfigError(f"{where}: {json_key!r} in the token file {problem}")
    return node


def detect_api_version(client: ServiceClient, cluster: str | None) -> tuple[str | None, str]:
    """(cc-backend's API version, "") or (None, why it cannot be told), from two harmless
    listings of at most one job: the job list validates its ``state`` parameter against the
    version's enum, so ``stopped`` (1.4 only) and ``node_fail`` (1.5 only) are accepted by one
    version each, whether or not any job exists."""
    answers = {}
    for state in ("stopped", "node_fail"):
        params: dict[str, Any] = {"state": state, "items-per-page": 1}
        if cluster:
            params["cluster"] = cluster
        reply = client.get("/api/jobs/", params=params)
        if not reply.ok and reply.status != 400:
            return None, reply.describe()
        answers[state] = reply.ok
    if answers == {"stopped": True, "node_fail": False}:
        return "1.4", ""
    if answers == {"stopped": False, "node_fail": True}:
        return "1.5", ""
    return None, ("cc-backend's job list answers neither as 1.4 nor as 1.5 "
                  f"(state=stopped {'accepted' if answers['stopped'] else 'refused'}, "
                  f"state=node_fail {'accepted' if answers['node_fail'] else 'refused'})")


# cc-backend's JSON decoder on a body that does not fit its schema (a field of another API
# version, a wrong type), and stop_job on a state outside the version's enum: the connector's
# configuration is wrong, not the job.
_SCHEMA_ERROR = re.compile(r"json: (unknown field|cannot unmarshal)|invalid requested job state")


# cc-backend 1.5 inserts a new job into job_cache, whose UNIQUE(job_id, cluster, start_time) is a
# run's identity, and its duplicate check (the 422) reads only the committed job table: a start
# sent again before the commit worker moved the first copy (every 2 minutes by default) fails
# the insert and comes back as a 500 with the database's words. SQLite: "UNIQUE constraint
# failed: job_cache.job_id, ..."; MySQL: "Duplicate entry '...' for key 'job_cache.job_id'".
_CACHED_DUPLICATE = re.compile(
    r"UNIQUE constraint failed: job_cache\.|Duplicate entry .* for key '?job_cache\.")


def cached_duplicate(reply: Reply) -> bool:
    """Whether a start_job's 500 says cc-backend already holds this very run in its job_cache
    (its reply to an earlier send was lost): the run is there, not an error to retry."""
    return reply.status == 500 and _CACHED_DUPLICATE.search(reply.describe()) is not None


def schema_error(reply: Reply) -> str | None:
    """The decoder's words when a 400 says the payload's schema is wrong, else None."""
    if reply.status != 400:
        return None
    text = reply.describe()
    found = _SCHEMA_ERROR.search(text)
    return text[found.start():] if found else None


@dataclass(frozen=True)
class RemoteRun:
    """A job cc-backend lists as running."""

    job_id: int
    start_time: int
    cluster: str


def remote_runs(pages: Iterable[Any], cluster: str) -> tuple[list[RemoteRun], list[str]]:
    """The running jobs of ``cluster`` in listing pages; entries that cannot be read are named."""
    runs, bad = [], []
    for page in pages:
        for index, item in enumerate(page.get("jobs") or []):
            try:
                run = RemoteRun(int(item["jobId"]), int(item["startTime"]),
                                str(item.get("cluster", cluster)))
            except (KeyError, TypeError, ValueError):
                bad.append(f"jobs[{index}]: {json.dumps(item)[:120]}")
                continue
            if run.cluster == cluster:
                runs.append(run)
    return runs, bad


@dataclass(frozen=True)
class Running:
    """cc-backend's running jobs of one cluster: the runs, the entries that could not be read,
    and how many pages it took."""

    runs: tuple[RemoteRun, ...]
    unreadable: tuple[str, ...] = ()
    pages: int = 1


def list_running(client: ServiceClient, cluster: str, page_size: int) -> Running | str:
    """cc-backend's running jobs of ``cluster`` (``GET /api/jobs/?state=running``, paged), or
    why the list cannot be read."""
    pages, page = [], 1
    while True:
        reply = client.get("/api/jobs/", params={
            "state": "running", "cluster": cluster, "page": page, "items-per-page": page_size})
        if not reply.ok or not isinstance(reply.body, Mapping):
            return reply.describe()
        pages.append(reply.body)
        if len(reply.body.get("jobs") or []) < page_size:
            break
        page += 1
    runs, bad = remote_runs(pages, cluster)
    return Running(tuple(runs), tuple(bad), len(pages))


def runs_in_cc(client: ServiceClient, job_id: int, cluster: str, lo: int, hi: int,
               page_size: int) -> dict[int, str] | str:
    """{start time: state} of the runs of ``job_id`` on ``cluster`` that cc-backend lists with
    a start in [lo, hi] (paged; cc-backend has no job id filter, so it is filtered here), or
    why the list cannot be read."""
    found: dict[int, str] = {}
    page = 1
    while True:
        reply = client.get("/api/jobs/", params={
            "cluster": cluster, "start-time": f"{lo}-{hi}", "page": page,
            "items-per-page": page_size})
        if not reply.ok or not isinstance(reply.body, Mapping):
            return reply.describe()
        jobs = reply.body.get("jobs") or []
        for item in jobs:
            try:
                if int(item["jobId"]) == job_id and item.get("cluster", cluster) == cluster:
                    found[int(item["startTime"])] = str(item.get("jobState") or "")
            except (KeyError, TypeError, ValueError):
                continue
        if len(jobs) < page_size:
            return found
        page += 1
