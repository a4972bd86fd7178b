"""What cc-backend and Slurm say before planning (reads only: it runs under --dry-run too).

    observed = observe(view, snapshot, settings=settings, client=client, reader=reader,
                       cluster="fritz", api_version="1.5")
    plan(view, snapshot, direction, scope, observed, settings.hosts)

On a first run (no watermark: a new install, or the store was lost; every cycle with
``reconcile: always``) it lists cc-backend's running jobs of the cluster, and looks up in one
sacct call those Slurm shows neither running nor in the window, so ``plan`` can adopt what
cc-backend has and stop what ended. What it cannot read is logged and left out: no reconcile
this cycle, never a guess.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from slurm_sync.connector import Snapshot, View
from slurm_sync.connectors.clustercockpit.client import RemoteRun, list_running
from slurm_sync.connectors.clustercockpit.payload import PLAN_VERSION
from slurm_sync.connectors.clustercockpit.settings import Settings
from slurm_sync.errors import SlurmError
from slurm_sync.http import ServiceClient
from slurm_sync.slurm.model import Job
from slurm_sync.slurm.query import JobFilter, SacctWindow
from slurm_sync.slurm.reader import SlurmReader

__all__ = ["Observed", "observe"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Observed:
    """What ``plan`` gets from ``observe``: the API version payloads are built for (``apply``
    converts them to the one it finds), cc-backend's cluster name (None: each job's own),
    cc-backend's running runs (None: not listed this cycle) and the runs among them that sacct
    was asked about by job id."""

    api_version: str = PLAN_VERSION
    cluster: str | None = None
    remote: tuple[RemoteRun, ...] | None = None
    looked_up: tuple[Job, ...] = ()


def observe(view: View, snapshot: Snapshot, *, settings: Settings, client: ServiceClient,
            reader: SlurmReader | None, cluster: str | None, api_version: str) -> Observed:
    """This cycle's ``Observed``: cc-backend's running jobs when it is time to reconcile."""
    unmapped = sorted({a.hostname for j in view.active for a in j.allocations
                       if a.gpu_ids and settings.hosts.bus_ids(a.hostname) is None})
    if unmapped:
        log.warning("no accelerators mapping: GPUs of these hosts are not sent",
                    extra={"fields": {"hosts": ",".join(unmapped)}})
    found = Observed(api_version=api_version, cluster=cluster)
    first = snapshot.watermark is None
    if settings.reconcile == "never" or (settings.reconcile == "first_run" and not first):
        return found
    if cluster is None:
        cluster = next((j.cluster for j in (*view.active, *view.ended) if j.cluster), None)
    if cluster is None:
        log.warning("no cluster name known (set connectors.clustercockpit.cluster); "
                    "no reconcile this cycle")
        return found
    found = Observed(api_version=api_version, cluster=cluster)
    listed = list_running(client, cluster, settings.page_size)
    if isinstance(listed, str):
        log.warning("cannot list cc-backend's running jobs; no reconcile this cycle",
                    extra={"fields": {"error": listed}})
        return found
    for entry in listed.unreadable:
        log.warning("unreadable job in cc-backend's list", extra={"fields": {"entry": entry}})
    log.info("reconcile: cc-backend lists running jobs",
             extra={"fields": {"count": len(listed.runs), "pages": listed.pages}})
    runs = listed.runs
    # Runs Slurm shows neither running nor in the window: ask sacct once, for all of them.
    seen = {(j.job_id, j.start_time) for j in (*view.active, *view.ended)}
    missing = sorted({r.job_id for r in runs if (r.job_id, r.start_time) not in seen})
    looked_up: tuple[Job, ...] = ()
    if missing and reader is not None and view.slurm_ok:
        try:
            looked_up = tuple(reader.sacct(
                SacctWindow(0, int(view.now) + 1),
                JobFilter(states=("all",), job_ids=tuple(missing)),
            ).jobs)
        except SlurmError as exc:
            log.warning("sacct lookup of cc-backend's running jobs failed",
                        extra={"fields": {"error": str(exc)}})
    known = seen | {(j.job_id, j.start_time) for j in looked_up}
    unknown = [r for r in runs if (r.job_id, r.start_time) not in known]
    if unknown:
        # Never stopped on a guess: Slurm must say a run ended before it is stopped.
        log.warning("cc-backend lists running jobs Slurm has no record of; left alone",
                    extra={"fields": {"count": len(unknown), "jobs": ", ".join(
                        f"{r.job_id}@{r.start_time}" for r in unknown[:20])}})
    return Observed(api_version=api_version, cluster=cluster, remote=runs, looked_up=looked_up)
