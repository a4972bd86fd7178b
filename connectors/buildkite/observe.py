"""What Buildkite and Slurm say before planning: reads only (it runs under --dry-run too).

    observed = observe(view, snapshot, settings=settings, api=api, control=control,
                       cluster="hpc1", dry_run=False, warned=set())
    plan(view, snapshot, direction, scope, observed, settings)

One cycle reads:

- the map files of our arrays in the view (``script.read_batches``): which Buildkite job
  each task runs;
- the build paths a killed job left (``prune.find_gone_paths``: a second squeue of those ids);
- Buildkite (``rest.RestApi.remote`` or ``stacks.StacksApi.remote``): the jobs scheduled for
  our queue, whether dispatch is paused, and the state of each job our Slurm jobs run;
- when Buildkite says an agent holds the job of a Slurm job of ours the cycle's squeue showed
  pending, one more squeue of those jobs: the cycle read Slurm before Buildkite, and a job
  that started in between had its own agent take its job. Only those still pending are
  ``taken_elsewhere``.

The one write a Stacks connector needs before reading, registering its stack key, is made
once per process (``StacksApi.register``) and never in a dry run (``dry_run``): a dry run
reads the stack as it stands. What cannot be read is logged and left out (an incomplete
``Remote``): nothing is submitted or cancelled on half an answer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

from slurm_sync.connector import Snapshot, View
from slurm_sync.connectors.buildkite.model import (
    JOB_STATES,
    NAME,
    TAKEN,
    Observed,
    Ref,
    Remote,
    SlurmRun,
    runs_of,
)
from slurm_sync.connectors.buildkite.prune import find_gone_paths
from slurm_sync.connectors.buildkite.rest import RestApi, Unavailable
from slurm_sync.connectors.buildkite.script import read_batches
from slurm_sync.connectors.buildkite.settings import Settings
from slurm_sync.connectors.buildkite.stacks import StacksApi
from slurm_sync.errors import SlurmError
from slurm_sync.slurm.control import SlurmControl
from slurm_sync.slurm.model import JobState

__all__ = ["confirm_taken", "observe", "read_buildkite"]

log = logging.getLogger(__name__)
_FIELDS = {"connector": NAME}


def observe(view: View, snapshot: Snapshot, *, settings: Settings, api: RestApi | StacksApi,
            control: SlurmControl | None, cluster: str | None, dry_run: bool,
            warned: set[str]) -> Observed:
    """This cycle's ``Observed`` (see the module's docstring). ``warned`` holds the unknown
    Buildkite job states already logged by this process (each is logged once)."""
    batches = read_batches(settings.batch_dir, (*view.active, *view.ended), settings.job_name)
    gone = find_gone_paths(view, settings.agent, control)
    runs = runs_of(view.active, batches, settings.job_name)
    ended = runs_of(view.ended, batches, settings.job_name)
    ours = {r.ref.job: r.ref for r in (*runs, *ended)}
    remote = read_buildkite(api, ours, settings, view.now, dry_run=dry_run)
    taken = (confirm_taken(runs, remote, view.now, settings, control, batches)
             if remote.complete else frozenset())
    for job in remote.known.values():
        if job.state not in JOB_STATES and job.state not in warned:
            warned.add(job.state)
            log.warning("a Buildkite job state this version does not know: its Slurm job "
                        "is left alone", extra={"fields": {
                            **_FIELDS, "state": job.state[:40], "job": job.id}})
    return Observed(remote=remote, batches=batches, gone_paths=gone, taken_elsewhere=taken,
                    cluster=cluster)


def read_buildkite(api: RestApi | StacksApi, ours: Mapping[str, Ref], settings: Settings,
                   now: float, *, dry_run: bool) -> Remote:
    """What Buildkite says this cycle, or an incomplete ``Remote()`` (logged) when a call did
    not get through. A Stacks connector registers its stack first, unless ``dry_run``."""
    try:
        if isinstance(api, RestApi):
            return api.remote(ours, queue=settings.queue, tags=settings.tags, now=now)
        if not dry_run:
            api.register()
        return api.remote(ours, tags=settings.tags)
    except Unavailable as exc:
        unregistered = isinstance(api, StacksApi) and dry_run and not api.registered
        log.warning("Buildkite not read this cycle: nothing is submitted or cancelled"
                    + ("; a dry run does not register the stack" if unregistered else ""),
                    extra={"fields": {**_FIELDS, "error": str(exc)}})
        return Remote()


def confirm_taken(runs: Sequence[SlurmRun], remote: Remote, now: float, settings: Settings,
                  control: SlurmControl | None,
                  batches: Mapping[str, Sequence[Ref]]) -> frozenset[str]:
    """Which of our pending jobs another agent took their Buildkite job from. The cycle's
    squeue came before Buildkite was read: a job it showed pending may have started since
    and its own agent acquired the Buildkite job, which Buildkite then shows held. So such
    jobs (held, pending past taken_grace) are asked about again, in one squeue made after
    Buildkite was read: only those still pending are taken by another agent. Any doubt (that
    squeue failing) cancels none."""
    grace = settings.taken_grace_seconds
    suspects = {r.slurm_id: r for r in runs if r.job.state is JobState.PENDING
                and (bk := remote.known.get(r.ref.job)) is not None and bk.state in TAKEN
                and now - (r.job.submit_time or now) >= grace}
    if not suspects or control is None:
        return frozenset()
    ids = sorted({r.job.array_job_id or r.job.job_id for r in suspects.values()})
    control.clear_cache()
    try:
        found = control.status_many(ids)
    except SlurmError as exc:
        log.warning("squeue failed; no pending job is cancelled as taken by another agent",
                    extra={"fields": {**_FIELDS, "error": str(exc)}})
        return frozenset()
    records = [job for jobs in found.values() for job in jobs]
    return frozenset(r.slurm_id for r in runs_of(records, batches, settings.job_name)
                     if r.slurm_id in suspects and r.job.state is JobState.PENDING)
