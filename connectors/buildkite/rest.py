"""Buildkite's REST API (mode rest): an organization's builds, read with an API token.

    api = RestApi(client, settings.rest)
    remote = api.remote(ours, queue="slurm", tags=frozenset(), now=view.now)   # or Unavailable
    jobs = api.build("app", 12)                                    # one build's jobs, or None

``remote`` lists the builds in ``scheduled``, ``running`` and ``failing`` created within the
window, 100 per page, following the ``Link`` header; a Slurm job of ours whose build left that
listing gets its build looked up, so a finished build is seen as finished. A 429, or any call
that does not get through, is ``Unavailable``: nothing is concluded from half an answer.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from slurm_sync.connectors.buildkite.model import SLUG, UUID, BKJob, Ref, Remote, matches_queue
from slurm_sync.connectors.buildkite.settings import RestSettings
from slurm_sync.http import Reply, ServiceClient

__all__ = ["LOOKUPS_MAX", "RestApi", "Unavailable", "jobs_of", "next_link"]

log = logging.getLogger(__name__)

#: builds of our Slurm jobs looked up one by one per cycle, at most
LOOKUPS_MAX = 50


class Unavailable(Exception):
    """Buildkite could not be read completely this cycle (the message says why)."""


class RestApi:
    """The REST API calls of the connector, through one ``ServiceClient``."""

    def __init__(self, client: ServiceClient, settings: RestSettings) -> None:
        self.client = client
        self.settings = settings

    def remote(self, ours: Mapping[str, Ref], *, queue: str, tags: frozenset[str],
               now: float) -> Remote:
        """What Buildkite says: the jobs of the active builds and of the builds of ``ours``
        (Buildkite job id -> the Ref our Slurm job runs), and which of them are scheduled
        for this queue."""
        org = self.settings.organization
        since = dt.datetime.fromtimestamp(now - self.settings.window_seconds, dt.timezone.utc)
        params: Any = [("state[]", s) for s in ("scheduled", "running", "failing")]
        params += [("created_from", since.strftime("%Y-%m-%dT%H:%M:%SZ")), ("per_page", "100")]
        known: dict[str, BKJob] = {}
        pages = 0
        next_path: str | None = f"/v2/organizations/{org}/builds"
        while next_path is not None:
            reply = self.client.get(next_path, params=params if pages == 0 else None)
            pages += 1
            _rate(reply)
            if not reply.ok or not isinstance(reply.body, list):
                raise Unavailable(reply.describe())
            for build in reply.body:
                for job in jobs_of(build):
                    known[job.id] = job
            next_path = next_link(reply)
        # Our Slurm jobs whose build left the active listing: look the build up (finished,
        # or older than the window) rather than guess.
        missing = {(r.pipeline, r.build) for j, r in ours.items() if j not in known}
        for pipeline, number in sorted(missing)[:LOOKUPS_MAX]:
            for job in self.build(pipeline, number) or ():
                known[job.id] = job
        pipelines = self.settings.pipelines
        scheduled = tuple(j for j in known.values() if j.state == "scheduled"
                          and (not pipelines or j.pipeline in pipelines)
                          and matches_queue(j.rules, queue, tags))
        log.info("Buildkite listed", extra={"fields": {
            "connector": "buildkite", "pages": pages, "jobs": len(known),
            "scheduled-here": len(scheduled)}})
        return Remote(complete=True, scheduled=scheduled, known=known)

    def build(self, pipeline: str, number: int) -> list[BKJob] | None:
        """The script jobs of one build; None when Buildkite has no such build (404)."""
        reply = self.client.get(f"/v2/organizations/{self.settings.organization}/pipelines/"
                                f"{pipeline}/builds/{number}")
        _rate(reply)
        if reply.status == 404:
            return None
        if not reply.ok or not isinstance(reply.body, Mapping):
            raise Unavailable(reply.describe())
        return jobs_of(reply.body)

    def check(self) -> Reply:
        """One cheap read, for ``slurm-sync check``."""
        return self.client.get(f"/v2/organizations/{self.settings.organization}/builds",
                               params={"per_page": 1})


def _rate(reply: Reply) -> None:
    """Warn when the rate limit is nearly spent; a 429 makes this cycle's answer incomplete."""
    headers = reply.headers or {}
    remaining = headers.get("RateLimit-Remaining")
    if remaining is not None and remaining.isdigit() and int(remaining) < 10:
        log.warning("Buildkite REST rate limit nearly spent", extra={"fields": {
            "remaining": remaining, "reset-seconds": headers.get("RateLimit-Reset")}})
    if reply.status == 429:
        raise Unavailable(f"rate limited (429); the quota resets in "
                          f"{headers.get('RateLimit-Reset', '?')} s")


def jobs_of(build: Any) -> list[BKJob]:
    """The script jobs of one REST build, as BKJob; odd entries are skipped."""
    if not isinstance(build, Mapping):
        return []
    pipeline = (build.get("pipeline") or {}).get("slug") or ""
    number = build.get("number")
    out = []
    for item in build.get("jobs") or []:
        if not isinstance(item, Mapping) or item.get("type") != "script":
            continue
        job_id = str(item.get("id", ""))
        if (not UUID.match(job_id) or not SLUG.match(str(pipeline))
                or not isinstance(number, int)):
            continue
        priority = item.get("priority")
        if isinstance(priority, Mapping):
            priority = priority.get("number")
        out.append(BKJob(
            id=job_id, state=str(item.get("state", "")), pipeline=str(pipeline), build=number,
            rules=tuple(str(r) for r in item.get("agent_query_rules") or ()),
            build_state=str(build.get("state", "")) or None,
            priority=priority if isinstance(priority, int) else 0,
            scheduled_at=str(item.get("scheduled_at") or "")))
    return out


def next_link(reply: Reply) -> str | None:
    """The path and query of the Link header's rel="next", or None."""
    header = (reply.headers or {}).get("Link", "")
    for part in header.split(","):
        if 'rel="next"' in part:
            url = part.split(";")[0].strip().strip("<>")
            parts = urlsplit(url)
            return parts.path + (f"?{parts.query}" if parts.query else "")
    return None
