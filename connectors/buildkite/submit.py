"""Submitting Buildkite jobs to Slurm: the ``submit`` actions of a cycle, together.

    submitter = Submitter(settings, api, control)
    outcomes = submitter.submit_all(actions)      # one per action, in order
    outcome = submitter.finish(action)            # mode stacks: fail a refused job in Buildkite

1. A submit sent again from the outbox (its payload says ``retry``, or it predates
   ``planned_at``) may have made its Slurm job already: its sbatch timed out, lost its answer
   or was killed with its run. So Slurm is asked first, in one squeue and one sacct of our
   jobs (name ``job_name``) since the submit was planned: a Slurm job running its Buildkite
   job that is not one of those that had ended when it was planned (``earlier``) means it is
   done; Slurm not answering means it waits. Then Buildkite: in mode rest the job's build is
   read, and a job no longer scheduled is not submitted (there is nothing to run); in mode
   stacks a paused dispatch makes it wait (``batch-reserve`` below tells the rest). Buildkite
   not answering lets it go: a job cancelled meanwhile costs a Slurm job whose agent exits 27.
   A submit planned this cycle needs none of this: ``plan`` saw this cycle's Slurm and
   Buildkite.
2. Mode stacks: ``batch-reserve`` the jobs, so two stacks never take the same one.
3. Jobs whose options are the same go out as one array job, its map file written first
   (``script.write_batch``); when Slurm refuses the array, one by one. An array whose answer
   was lost is not sent again job by job: it may be in Slurm (``sbatch.classify``).
4. A job Slurm refuses is refused for good (in mode stacks, Buildkite is told: ``finish``);
   one Slurm could not take now waits in the outbox.
5. Mode stacks: a timeline note for each job submitted, naming its Slurm job.

Every transient outcome's action carries ``retry``, so the outbox hands it back to step 1.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.connectors.buildkite.model import BATCH, NAME, ONE, SUBMIT, Ref, SlurmRun, runs_of
from slurm_sync.connectors.buildkite.rest import RestApi, Unavailable
from slurm_sync.connectors.buildkite.sbatch import Failure, classify
from slurm_sync.connectors.buildkite.script import (
    batch_path,
    job_script,
    read_batches,
    write_batch,
)
from slurm_sync.connectors.buildkite.settings import Settings
from slurm_sync.connectors.buildkite.stacks import StacksApi
from slurm_sync.errors import SlurmError
from slurm_sync.http import classify as classify_reply
from slurm_sync.slurm.control import SlurmControl, SubmitRequest
from slurm_sync.slurm.query import JobFilter, SacctWindow

__all__ = ["LEGACY_LOOKBACK", "Submitter", "is_retry"]

log = logging.getLogger(__name__)
_FIELDS = {"connector": NAME}

#: how far back sacct is asked about a submit sent again that does not say when it was planned
#: (queued by an earlier version)
LEGACY_LOOKBACK = 86400


def is_retry(action: Action) -> bool:
    """Whether a submit comes back from the outbox: marked so by its transient outcome, or
    queued before submits said when they were planned."""
    return bool(action.payload.get("retry")) or "planned_at" not in action.payload


def _retry(action: Action) -> Action:
    """``action`` marked as sent before: the outbox keeps this payload for its next try."""
    if action.payload.get("retry"):
        return action
    return replace(action, payload={**action.payload, "retry": True})


@dataclass(frozen=True)
class _Sent:
    """One submit's outcome, and the Slurm job it made (``12`` or ``12_3``) when it did."""

    outcome: Outcome
    slurm_id: str | None = None


class Submitter:
    """The submits of one connector: ``api`` is its Buildkite API (REST or Stacks),
    ``control`` Slurm's sbatch and squeue, ``clock`` the time for the look-ups of step 1."""

    def __init__(self, settings: Settings, api: RestApi | StacksApi,
                 control: SlurmControl | None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.api = api
        self.control = control
        self.clock = clock

    # -- the batch

    def submit_all(self, actions: Sequence[Action]) -> list[Outcome]:
        """One outcome per action, in order (see the module). Never raises: a failure of its
        own leaves every submit of the batch transient, looked for in Slurm before its next
        sbatch."""
        try:
            outcomes = self._submit_all(actions)
        except Exception as exc:  # a bug must not lose what sbatch already took
            log.exception("submits failed", extra={"fields": _FIELDS})
            return [Outcome.transient(_retry(a), f"{type(exc).__name__}: {exc}")
                    for a in actions]
        return [replace(o, action=_retry(o.action))
                if o.status is Status.TRANSIENT and o.action.kind == SUBMIT else o
                for o in outcomes]

    def _submit_all(self, actions: Sequence[Action]) -> list[Outcome]:
        if self.control is None:
            return [Outcome.transient(a, "not bound to Slurm") for a in actions]
        outcomes: dict[str, Outcome] = {}
        fresh: list[Action] = []
        again: list[Action] = []
        for action in actions:
            if "refused" in action.payload:  # refused, Buildkite not told yet (mode stacks)
                outcomes[action.key] = self._refuse(action, str(action.payload["refused"]))
            elif is_retry(action):
                again.append(action)
            else:
                fresh.append(action)
        todo = fresh + self._look_again(again, outcomes)
        if todo and isinstance(self.api, StacksApi):
            todo = self._reserve(todo, outcomes)
        shapes: dict[tuple[str, ...], list[Action]] = {}
        for action in todo:
            shape = (*action.payload["options"], "|", *action.payload["tags"])
            shapes.setdefault(shape, []).append(action)
        submitted: list[tuple[Action, str]] = []
        for group in shapes.values():
            for sent in self._submit_group(group):
                outcomes[sent.outcome.action.key] = sent.outcome
                if sent.slurm_id is not None:
                    submitted.append((sent.outcome.action, sent.slurm_id))
        if isinstance(self.api, StacksApi) and submitted:
            self._notify_submitted(self.api, submitted)
        return [outcomes[a.key] for a in actions]

    # -- step 1: a submit sent again

    def _look_again(self, again: list[Action], outcomes: dict[str, Outcome]) -> list[Action]:
        """The submits sent again that are to go to sbatch; the others' outcomes go into
        ``outcomes``."""
        if not again:
            return []
        assert self.control is not None
        now = self.clock()
        planned = [_planned_at(a) for a in again]
        start = (int(min(p for p in planned if p is not None)) if None not in planned
                 else int(now) - LEGACY_LOOKBACK)
        name = self.settings.job_name
        reader = self.control.reader
        try:
            jobs = (*reader.squeue(JobFilter(states=("all",), names=(name,))).jobs,
                    *reader.sacct(SacctWindow(min(start, int(now)), int(now) + 1),
                                  JobFilter(states=("all",), names=(name,))).jobs)
        except SlurmError as exc:
            for action in again:
                outcomes[action.key] = Outcome.transient(
                    action, f"Slurm not read ({exc}): an earlier sbatch of this job may be in "
                            "Slurm; the submit waits")
            return []
        runs = runs_of(jobs, read_batches(self.settings.batch_dir, jobs, name), name)
        left = []
        for action in again:
            found = _made_by(action, runs)
            if found is None:
                left.append(action)
            else:
                outcomes[action.key] = Outcome.already_done(
                    action, f"in Slurm already as job {found.slurm_id} "
                            f"({found.job.state.value}): not submitted again")
        return self._still_wanted(left, outcomes)

    def _still_wanted(self, left: list[Action], outcomes: dict[str, Outcome]) -> list[Action]:
        """Of submits sent again and not in Slurm, those Buildkite still wants run (or that
        cannot be told: Buildkite unread lets them go)."""
        if not left:
            return []
        if isinstance(self.api, StacksApi):
            try:
                paused, _ = self.api.scheduled(limit=1)
            except Unavailable:
                return left
            if not paused:
                return left
            for action in left:
                outcomes[action.key] = Outcome.transient(
                    action, "dispatch is paused in Buildkite; the submit waits")
            return []
        states: dict[tuple[str, int], Mapping[str, str] | None] = {}  # None: no such build
        unread: set[tuple[str, int]] = set()
        kept = []
        for action in left:
            ref = Ref.parse(str(action.payload.get("ref", "")))
            if ref is None:
                kept.append(action)  # refused in _submit_one
                continue
            build = (ref.pipeline, ref.build)
            if build not in states and build not in unread:
                try:
                    jobs = self.api.build(*build)
                except Unavailable:
                    unread.add(build)
                else:
                    states[build] = None if jobs is None else {j.id: j.state for j in jobs}
            if build in unread:
                kept.append(action)  # Buildkite unread: the submit goes
                continue
            known = states[build]
            state = known.get(ref.job) if known is not None else None
            if state == "scheduled":
                kept.append(action)
                continue
            outcomes[action.key] = Outcome.already_done(
                action, "nothing to submit: the Buildkite job is "
                        + (state or "no longer scheduled"))
        return kept

    # -- step 2: reserve (mode stacks)

    def _reserve(self, todo: list[Action], outcomes: dict[str, Outcome]) -> list[Action]:
        """Reserve before submitting, so two clusters never take the same job."""
        assert isinstance(self.api, StacksApi)
        by_job: dict[str, Action] = {}
        for action in todo:
            ref = Ref.parse(str(action.payload.get("ref", "")))
            if ref is None:
                outcomes[action.key] = Outcome.permanent(action, "bad Buildkite job reference")
            else:
                by_job[ref.job] = action
        if not by_job:
            return []
        reply = self.api.reserve(sorted(by_job))
        if not reply.ok or not isinstance(reply.body, Mapping):
            for action in by_job.values():
                outcomes[action.key] = Outcome.transient(action, reply.describe(),
                                                         reply.retry_after)
            return []
        reserved = set(reply.body.get("reserved") or ())
        kept = []
        for job_id, action in by_job.items():
            if job_id in reserved:
                kept.append(action)
            else:
                outcomes[action.key] = Outcome.skipped(action, "reserved by another stack")
        return kept

    # -- step 3: sbatch

    def _submit_group(self, group: list[Action]) -> list[_Sent]:
        """One array for ``group`` (jobs of one shape), or one job each."""
        assert self.control is not None
        settings = self.settings
        options = tuple(group[0].payload["options"])
        base = ("--export=NONE", f"--chdir={settings.agent.build_root}")
        if len(group) > 1:
            batch = uuid.uuid4().hex
            path = batch_path(settings.batch_dir, batch)
            try:
                write_batch(path, [str(a.payload["ref"]) for a in group])
                done = self.control.submit_array(SubmitRequest(
                    script=self._script(batch_file=path), job_name=settings.job_name,
                    options=(*base, f"--output={self._log_path(array=True)}", *options),
                    comment=f"{BATCH}{batch}"), len(group))
                return [_Sent(Outcome.done(a, f"Slurm job {done.job_id}_{i} (one array of "
                                              f"{len(group)})"), f"{done.job_id}_{i}")
                        for i, a in enumerate(group)]
            except (OSError, SlurmError, ValueError) as exc:
                failure = classify(exc)
                if failure.kind is Failure.LOST:
                    # slurmctld may hold the array: its jobs one by one would run twice
                    return [_Sent(Outcome.transient(
                        a, f"sbatch --array: {failure.describe()}; the array may be in Slurm, "
                           "looked for before any new sbatch")) for a in group]
                log.warning("array submit failed; submitting one by one",
                            extra={"fields": {**_FIELDS, "jobs": len(group),
                                              "error": failure.describe()}})
        return [self._submit_one(action, base, options) for action in group]

    def _submit_one(self, action: Action, base: tuple[str, ...],
                    options: tuple[str, ...]) -> _Sent:
        assert self.control is not None
        ref = Ref.parse(str(action.payload["ref"]))
        if ref is None:
            return _Sent(Outcome.permanent(action, "bad Buildkite job reference"))
        try:
            done = self.control.submit(SubmitRequest(
                script=self._script(ref=ref), job_name=self.settings.job_name,
                options=(*base, f"--output={self._log_path(array=False)}", *options),
                comment=f"{ONE}{ref.text()}"))
        except (OSError, SlurmError, ValueError) as exc:
            failure = classify(exc)
            if failure.kind is Failure.LOST:
                return _Sent(Outcome.transient(action, f"sbatch: {failure.describe()}; the job "
                                                       "may be in Slurm, looked for before any "
                                                       "new sbatch"))
            if failure.kind is Failure.NOT_SUBMITTED:
                return _Sent(Outcome.transient(action, f"sbatch: {failure.describe()}"))
            # step 4: Slurm refuses this job
            return _Sent(self._refuse(action, f"sbatch: {failure.describe()}"))
        return _Sent(Outcome.done(action, f"Slurm job {done.job_id}"), str(done.job_id))

    def _script(self, *, ref: Ref | None = None, batch_file: str | None = None) -> str:
        agent = self.settings.agent
        return job_script(agent=agent.command, config=agent.config, build_root=agent.build_root,
                          per_build=agent.per_build, tags=self.settings.agent_tags, ref=ref,
                          batch_file=batch_file)

    def _log_path(self, *, array: bool) -> str:
        log_dir = self.settings.agent.log_dir
        if not log_dir:
            return "/dev/null"
        return os.path.join(log_dir, "%x-%A_%a.out" if array else "%x-%j.out")

    # -- step 4: refusals

    def _refuse(self, action: Action, reason: str) -> Outcome:
        """A submit refused for good; in mode stacks Buildkite is told first (``finish``),
        and a finish that does not get through keeps the refusal in the payload, so the next
        try only tells Buildkite."""
        ref = Ref.parse(str(action.payload.get("ref", "")))
        if isinstance(self.api, StacksApi) and ref is not None:
            reply = self.api.finish(ref.job, f"slurm-sync: {reason}")
            if classify_reply(reply) is Status.TRANSIENT:
                refused = replace(action, payload={**action.payload, "refused": reason})
                return Outcome.transient(refused, reply.describe(), reply.retry_after)
            return Outcome.permanent(action, f"refused, and failed in Buildkite: {reason}")
        return Outcome.permanent(action, f"refused: {reason}")

    def finish(self, action: Action) -> Outcome:
        """A ``finish`` action (mode stacks): fail in Buildkite a job ``plan`` refused, with
        the reason, rather than leave it scheduled for ever."""
        if not isinstance(self.api, StacksApi):
            return Outcome.permanent(action, "finish needs mode stacks")
        reason = str(action.payload["reason"])
        reply = self.api.finish(str(action.payload["job"]), f"slurm-sync: refused: {reason}")
        status = classify_reply(reply)
        if status is Status.DONE:
            return Outcome.done(action, f"failed in Buildkite: {reason}")
        if status is Status.TRANSIENT:
            return Outcome.transient(action, reply.describe(), reply.retry_after)
        return Outcome.permanent(action, f"not failed in Buildkite ({reply.describe()}): "
                                         f"{reason}")

    # -- step 5: timeline notes (mode stacks)

    def _notify_submitted(self, api: StacksApi, submitted: Sequence[tuple[Action, str]]) -> None:
        default = self.settings.policy.defaults.get("partition") or "default"
        items = []
        for action, slurm_id in submitted:
            ref = Ref.parse(str(action.payload.get("ref", "")))
            partition = next((str(o).split("=", 1)[1] for o in action.payload["options"]
                              if str(o).startswith("--partition=")), default)
            if ref is not None:
                items.append({"job_uuid": ref.job,
                              "detail": f"queued in Slurm job {slurm_id} on partition "
                                        f"{partition}"})
        reply = api.notify(items)
        if not reply.ok:
            log.warning("timeline notifications not sent", extra={"fields": {
                **_FIELDS, "error": reply.describe()}})


def _planned_at(action: Action) -> float | None:
    value: Any = action.payload.get("planned_at")
    return float(value) if isinstance(value, (int, float)) else None


def _made_by(action: Action, runs: Sequence[SlurmRun]) -> SlurmRun | None:
    """A Slurm job running the submit's Buildkite job that an earlier sbatch of this submit
    may have made: not one that had ended when it was planned (``earlier``), nor one that
    ended before."""
    ref = Ref.parse(str(action.payload.get("ref", "")))
    if ref is None:
        return None
    earlier = {str(s) for s in action.payload.get("earlier") or ()}
    planned = _planned_at(action)
    for run in runs:
        if run.ref.job != ref.job or run.slurm_id in earlier:
            continue
        if planned is not None and run.job.end_time and run.job.end_time < int(planned):
            continue
        return run
    return None
