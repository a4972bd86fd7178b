"""Buildkite's Stacks API (mode stacks): one queue's jobs, with a cluster agent token.

    api = StacksApi(client, settings.stacks, queue="slurm")
    api.register()                                     # once per process, never in a dry run
    remote = api.remote(ours, tags=frozenset())        # scheduled jobs, paused, our jobs' states
    reply = api.reserve(["<uuid>", ...])               # before sbatch: no two stacks take one
    api.finish("<uuid>", "slurm-sync: refused: ...")   # a job this stack cannot run
    api.notify([{"job_uuid": "<uuid>", "detail": "queued in Slurm job 12 ..."}])

Buildkite wants a stack key registered before any other Stacks API call; registering again is
harmless (the call is idempotent), so the connector does it once per process. ``registered``
is what this process knows of it, nothing of one cycle. Every read that does not get through
is ``Unavailable``: nothing is concluded from half an answer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from slurm_sync.connectors.buildkite.model import SLUG, UUID, BKJob, Ref, Remote, matches_queue
from slurm_sync.connectors.buildkite.rest import Unavailable
from slurm_sync.connectors.buildkite.settings import StacksSettings
from slurm_sync.http import Reply, ServiceClient

__all__ = ["GET_STATES_MAX", "StacksApi", "stack_job"]

#: job ids per get-states call (the API's limit)
GET_STATES_MAX = 1000


class StacksApi:
    """The Stacks API calls of the connector for one stack key and queue."""

    def __init__(self, client: ServiceClient, settings: StacksSettings, queue: str) -> None:
        self.client = client
        self.settings = settings
        self.queue = queue
        self.registered = False  # by this process

    @property
    def _base(self) -> str:
        return f"/v3/stacks/{self.settings.stack_key}"

    def register(self) -> None:
        """``POST /v3/stacks/register``, once per process; Unavailable when it fails."""
        if self.registered:
            return
        reply = self.client.post("/v3/stacks/register", json={
            "key": self.settings.stack_key, "type": "custom", "queue_key": self.queue,
            "metadata": {"scheduler": "slurm-sync"}})
        if not reply.ok:
            raise Unavailable(reply.describe())
        self.registered = True

    def scheduled(self, limit: int = 1000) -> tuple[bool, list[Any]]:
        """(whether dispatch is paused, the queue's scheduled jobs as the API gives them)."""
        reply = self.client.get(f"{self._base}/scheduled-jobs",
                                params={"queue_key": self.queue, "limit": limit})
        if not reply.ok or not isinstance(reply.body, Mapping):
            raise Unavailable(reply.describe())
        paused = bool((reply.body.get("cluster_queue") or {}).get("dispatch_paused"))
        return paused, list(reply.body.get("jobs") or [])

    def remote(self, ours: Mapping[str, Ref], *, tags: frozenset[str]) -> Remote:
        """The queue's scheduled jobs that are ours to take, whether dispatch is paused, and
        the state of each Buildkite job our Slurm jobs run (``get-states``)."""
        paused, items = self.scheduled()
        scheduled = []
        for item in items:
            job = stack_job(item)
            if job is not None and matches_queue(job.rules, self.queue, tags):
                scheduled.append(job)
        known: dict[str, BKJob] = {j.id: j for j in scheduled}
        ids = sorted(ours)
        for start in range(0, len(ids), GET_STATES_MAX):
            got = self.client.post(f"{self._base}/jobs/get-states",
                                   json={"job_uuids": ids[start:start + GET_STATES_MAX]})
            if not got.ok or not isinstance(got.body, Mapping):
                raise Unavailable(got.describe())
            for job_id, state in dict(got.body.get("states") or {}).items():
                ref = ours.get(str(job_id))
                if ref is not None and isinstance(state, str):
                    known[ref.job] = BKJob(ref.job, state, ref.pipeline, ref.build)
        return Remote(complete=True, paused=paused, scheduled=tuple(scheduled), known=known)

    def reserve(self, job_ids: Sequence[str]) -> Reply:
        """``batch-reserve``: the answer's ``reserved`` are ours to submit."""
        return self.client.put(f"{self._base}/scheduled-jobs/batch-reserve",
                               json={"job_uuids": sorted(job_ids),
                                     "reservation_expiry_seconds":
                                         self.settings.reservation_seconds})

    def finish(self, job_id: str, detail: str) -> Reply:
        """Fail a job this stack cannot run (exit status -1), saying why."""
        return self.client.post(f"{self._base}/jobs/{job_id}/finish",
                                json={"exit_status": -1, "detail": detail[:4000]})

    def notify(self, items: Sequence[Mapping[str, str]]) -> Reply:
        """Timeline notes, ``{"job_uuid": ..., "detail": ...}`` each (256 characters)."""
        return self.client.post(f"{self._base}/notifications", json={"notifications": [
            {"job_uuid": i["job_uuid"], "detail": str(i["detail"])[:256]} for i in items]})

    def check(self) -> Reply:
        """One cheap read, for ``slurm-sync check`` (404: not registered yet)."""
        return self.client.get(f"{self._base}/scheduled-jobs",
                               params={"queue_key": self.queue, "limit": 1})


def stack_job(item: Any) -> BKJob | None:
    """One entry of ``scheduled-jobs`` as a BKJob (state scheduled); None for an odd one."""
    if not isinstance(item, Mapping):
        return None
    job_id = str(item.get("id", ""))
    pipeline = str((item.get("pipeline") or {}).get("slug") or "")
    number = (item.get("build") or {}).get("number")
    if not UUID.match(job_id) or not SLUG.match(pipeline) or not isinstance(number, int):
        return None
    priority = item.get("priority")
    return BKJob(id=job_id, state="scheduled", pipeline=pipeline, build=number,
                 rules=tuple(str(r) for r in item.get("agent_query_rules") or ()),
                 priority=priority if isinstance(priority, int) else 0,
                 scheduled_at=str(item.get("scheduled_at") or ""))
