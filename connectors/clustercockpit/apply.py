"""Sending to cc-backend: start_job and stop_job, the runs of one job in order.

    sender = Sender(client, settings, ApiVersion(settings.api_version), reader)
    outcomes = sender.starts(actions, cluster="fritz", concurrency=4)   # one per action
    outcome = sender.stop(action, cluster="fritz")

Starts go out together: the runs of one job id in order of their start, one at a time, and a
run whose start did not get through holds back the later runs of its job (different jobs go
``concurrency`` at a time). An earlier run a start's payload names in ``waits_for`` (``plan``:
in the outbox or planned with it) that is not in this batch holds it back too, until
cc-backend's job list shows a run of that job within 24 hours of it: cc-backend keeps one
record per job id for 24 hours, and must never get a later run first. What a batch learns
(which starts got through) stays inside the call.

A 422 on start is resolved by asking cc-backend which run it holds: this run (already done),
another (refused for good, naming both). A 400 from cc-backend's decoder is the connector's
configuration, not the job's: ``halted`` says what to fix and the actions wait in the outbox.
Payloads are put in the version's schema when sent (``for_version``); the version is
configured or asked of cc-backend once per process (``ApiVersion``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from slurm_sync.actions import Action, Outcome, RunKey, Status
from slurm_sync.connectors.clustercockpit.client import (
    cached_duplicate,
    detect_api_version,
    runs_in_cc,
    schema_error,
)
from slurm_sync.connectors.clustercockpit.payload import PLAN_VERSION, START, STOP, for_version
from slurm_sync.connectors.clustercockpit.settings import Settings
from slurm_sync.errors import SlurmError
from slurm_sync.http import ServiceClient, outcome_of
from slurm_sync.slurm.reader import SlurmReader

__all__ = ["DUPLICATE_WINDOW", "ApiVersion", "Sender"]

log = logging.getLogger(__name__)

DUPLICATE_WINDOW = 86400  # cc-backend refuses a start within this long of another run's


class ApiVersion:
    """The API version to speak: configured, or asked of cc-backend once per process (and
    again after cc-backend refused a payload's schema)."""

    def __init__(self, configured: str | None) -> None:
        self.configured = configured
        self.found: str | None = None
        self._lock = threading.Lock()

    @property
    def current(self) -> str:
        """What payloads are planned for: configured, found, else ``PLAN_VERSION``."""
        return self.configured or self.found or PLAN_VERSION

    def get(self, client: ServiceClient, cluster: str | None) -> tuple[str | None, str]:
        """(the version, "") or (None, why it cannot be told)."""
        if self.configured:
            return self.configured, ""
        with self._lock:
            if self.found is None:
                found, why = detect_api_version(client, cluster)
                if found is None:
                    return None, why
                self.found = found
                log.info("cc-backend's API version found", extra={"fields": {
                    "api_version": found}})
            return self.found, ""

    def learn(self, found: str) -> None:
        """What ``check`` found, when none is configured."""
        if not self.configured:
            with self._lock:
                self.found = found

    def forget(self) -> None:
        """Ask again next time (cc-backend refused the schema of the version found)."""
        if not self.configured:
            with self._lock:
                self.found = None


class Sender:
    """start_job and stop_job for the connector; ``halted`` is set when cc-backend refuses a
    payload's schema (the connector's configuration is wrong), until the next batch."""

    def __init__(self, client: ServiceClient, settings: Settings, versions: ApiVersion,
                 reader: SlurmReader | None = None) -> None:
        self.client = client
        self.settings = settings
        self.versions = versions
        self.reader = reader
        self.halted: str | None = None

    # -- starts

    def starts(self, actions: Sequence[Action], cluster: str | None,
               concurrency: int) -> list[Outcome]:
        """This cycle's starts, outbox retries included, one outcome per action in order."""
        self.halted = None
        actions = list(actions)
        version, why = self.versions.get(self.client, cluster) if actions else (None, "")
        groups: dict[tuple[str, int] | str, list[int]] = {}
        for index, action in enumerate(actions):
            parts = RunKey.parse(action.key)
            groups.setdefault(action.key if parts is None else parts.job, []).append(index)
        outcomes: list[Outcome | None] = [None] * len(actions)
        batch = {a.key for a in actions}
        delivered_now: set[str] = set()  # this batch's, shared by the groups' threads

        def run_group(indices: list[int]) -> None:
            waits: str | None = None
            for index in sorted(indices, key=lambda i: (_start_of(actions[i].key),
                                                        actions[i].key)):
                action = actions[index]
                reason = waits or self._earlier_run_pending(action, batch)
                if reason is not None:
                    outcome = Outcome.transient(action, reason)
                else:
                    try:
                        outcome = self._start_one(action, version, why, delivered_now)
                    except Exception as exc:  # one action's bug must not lose the others
                        outcome = Outcome.transient(action, f"{type(exc).__name__}: {exc}")
                outcomes[index] = outcome
                if outcome.status.delivered:
                    delivered_now.add(action.key)
                if outcome.status is Status.TRANSIENT and waits is None:
                    parts = RunKey.parse(action.key)
                    if parts is not None:
                        waits = f"waits for run {parts.start} of job {parts.job_id}"

        workers = max(1, min(concurrency, len(groups)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(run_group, groups.values()))
        return [o if o is not None else Outcome.transient(a, "not applied")
                for o, a in zip(outcomes, actions)]

    def _earlier_run_pending(self, action: Action, batch: set[str]) -> str | None:
        """Why this start waits for an earlier run of its job that ``plan`` saw in the outbox
        (or planned with it) and that is not in this batch: until cc-backend lists a run of
        the job within 24 h of it, it is taken to be still on its way. None when nothing holds
        it back."""
        parts = RunKey.parse(action.key)
        if parts is None:
            return None
        outside = sorted(t for t in _starts_in(action.payload, "waits_for")
                         if t < parts.start
                         and f"{parts.cluster}/{parts.job_id}/{t}" not in batch)
        if not outside:
            return None
        body = action.payload.get("job")
        cluster = str(body.get("cluster") or "") if isinstance(body, Mapping) else ""
        # Any run of the job cc-backend holds within 24 h of these decides this start's fate
        # (a 422 names it): the earlier run got through, or it was refused because of that one.
        held = runs_in_cc(self.client, parts.job_id, cluster,
                          outside[0] - DUPLICATE_WINDOW + 1,
                          max(int(time.time()), parts.start) + DUPLICATE_WINDOW,
                          self.settings.page_size)
        if isinstance(held, str):
            return (f"waits for run {outside[0]} of job {parts.job_id} (queued in the outbox; "
                    f"cc-backend's job list cannot be read: {held})")
        if held:
            return None  # this start goes, and its 422 is resolved as any other
        return f"waits for run {outside[0]} of job {parts.job_id} (queued in the outbox)"

    def _start_one(self, action: Action, version: str | None, why: str,
                   delivered_now: set[str]) -> Outcome:
        if self.halted:
            return Outcome.transient(action, f"not sent: {self.halted}")
        if version is None:
            return Outcome.transient(action, f"not sent: cannot tell cc-backend's API version "
                                             f"({why})")
        if not isinstance(action.payload.get("job"), Mapping):
            return Outcome.permanent(action, "not sent: the action has no start_job body")
        converted = for_version(action.payload, START, version)
        payload = dict(converted["job"])
        if "jobScript" not in (payload.get("metaData") or {}):
            payload["metaData"] = self._with_files(dict(payload.get("metaData") or {}),
                                                   action.payload.get("files") or {})
        action = replace(action, payload={**converted, "job": payload})
        reply = self.client.post("/api/jobs/start_job/", json=payload)
        if reply.status == 422:
            return self._resolve_422(action, payload, delivered_now)
        if cached_duplicate(reply):
            return Outcome.already_done(action, "cc-backend holds this run in its job_cache, "
                                                "not yet committed (500 on the insert's "
                                                "UNIQUE(job_id, cluster, start_time))")
        error = schema_error(reply)
        if error is not None:
            self._halt(version, "start_job", error)
            return Outcome.transient(action, reply.describe())
        return outcome_of(action, reply)

    def _resolve_422(self, action: Action, body: Mapping[str, Any],
                     delivered_now: set[str]) -> Outcome:
        """cc-backend has a run of this job id within 24 hours: ask it which (its job list,
        filtered here by jobId: it has no such filter), never guess."""
        job_id, cluster, start = int(body["jobId"]), str(body["cluster"]), int(body["startTime"])
        size = self.settings.page_size
        held = runs_in_cc(self.client, job_id, cluster, start, start, size)
        if isinstance(held, dict) and start not in held:
            upper = max(int(time.time()), start) + DUPLICATE_WINDOW
            held = runs_in_cc(self.client, job_id, cluster, start - DUPLICATE_WINDOW + 1, upper,
                              size)
        if isinstance(held, str):
            return Outcome.transient(action, f"422 from cc-backend, and its job list cannot "
                                             f"be read to tell which run it holds: {held}")
        if start in held:
            return Outcome.already_done(action, f"cc-backend has this run (422; its job list "
                                                f"shows job {job_id} started at {start})")
        if not held:
            return Outcome.transient(action, f"422 from cc-backend, but its job list shows no "
                                             f"run of job {job_id} near {start}; sent again "
                                             f"later")
        running = [s for s, state in held.items() if state == "running"]
        other = max(running) if running else max(held)
        state = held[other]
        if other > start:
            return Outcome.permanent(action, (
                f"cc-backend holds a later run of job {job_id} (started at {other}, {state}); "
                f"it refuses the earlier run that started at {start} (422)"))
        # cc-backend refuses any run within 24 h of another of the same job id, stopped or not:
        # sending it again can never succeed, so it is refused for good, and said why.
        parts = RunKey.parse(action.key)
        ours = {*_starts_in(action.payload, "ours"), *_starts_in(action.payload, "waits_for")}
        ours |= {p.start for k in delivered_now
                 if (p := RunKey.parse(k)) is not None and parts is not None
                 and p.job == parts.job}
        whose = "which slurm-sync started" if other in ours else "which slurm-sync did not start"
        return Outcome.permanent(action, (
            f"cc-backend keeps one record per job id and cluster for 24 h: run {other} of job "
            f"{job_id} ({state}, {whose}) holds it, so the run that started at {start} cannot "
            f"be recorded (422)"))

    def _with_files(self, meta: dict[str, str], files: Mapping[str, Any]) -> dict[str, str]:
        """metaData with the job script (and the environment when asked), as strings."""
        settings = self.settings
        if not (settings.job_script or settings.environment) or self.reader is None:
            return meta
        job_id = int(files.get("job_id") or 0)
        try:
            found = self.reader.job_files(job_id, files.get("array_job_id"),
                                          environment=settings.environment)
        except SlurmError as exc:
            meta["slurmSyncNotes"] = _join(meta.get("slurmSyncNotes"),
                                           f"job script not read: {exc}")
            return meta
        if settings.job_script:
            if found.script is not None:
                meta["jobScript"] = found.script
            else:
                meta["slurmSyncNotes"] = _join(meta.get("slurmSyncNotes"),
                                               f"no job script: {found.reason}")
        if settings.environment and found.environment is not None:
            env = "\n".join(found.environment)
            if len(env) > settings.environment_max_bytes:
                env = env[: settings.environment_max_bytes] + "\n[cut at environment_max_bytes]"
            meta["slurmInfo"] = meta.get("slurmInfo", "") + "\nENV:\n====\n" + env
        return meta

    # -- stops

    def stop(self, action: Action, cluster: str | None) -> Outcome:
        """stop_job; 404 or 422 means stopped already or unknown: recorded, not retried."""
        if self.halted:
            return Outcome.transient(action, f"not sent: {self.halted}")
        version, why = self.versions.get(self.client, cluster)
        if version is None:
            return Outcome.transient(action, f"not sent: cannot tell cc-backend's API version "
                                             f"({why})")
        reply = self.client.post("/api/jobs/stop_job/",
                                 json=for_version(action.payload, STOP, version))
        if reply.status in (404, 422):
            return Outcome.already_done(action, f"already stopped or unknown "
                                                f"({reply.describe()})")
        error = schema_error(reply)
        if error is not None:
            self._halt(version, "stop_job", error)
            return Outcome.transient(action, reply.describe())
        return outcome_of(action, reply)

    def _halt(self, version: str, what: str, error: str) -> None:
        how = "as configured" if self.versions.configured else "as found"
        self.halted = (
            f"cc-backend refuses the schema of {what} ({error}) sent for API {version} ({how}): "
            f"set connectors.clustercockpit.api_version to cc-backend's version, \"1.4\" or "
            f"\"1.5\"; the actions wait in the outbox")
        self.versions.forget()  # a version that was found is asked again next cycle


def _starts_in(payload: Mapping[str, Any], name: str) -> list[int]:
    """The start times listed under ``name`` in a start's payload (none in an entry queued
    before they were planned)."""
    found = payload.get(name)
    if not isinstance(found, list):
        return []
    return [int(t) for t in found if isinstance(t, int) and not isinstance(t, bool)]


def _start_of(key: str) -> int:
    parts = RunKey.parse(key)
    return parts.start if parts is not None else 0


def _join(first: str | None, second: str) -> str:
    return f"{first}; {second}" if first else second
