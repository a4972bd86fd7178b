"""ClusterCockpit: start and stop job records in cc-backend (REST API of 1.4 and 1.5).

    "connectors": {"clustercockpit": {
        "url": "https://cc.example.org", "token": {"file": "/etc/slurm-sync/cc-token"},
        "api_version": "1.5", "cluster": "fritz",
        "accelerators": {"gpu0": {"0": "00000000:03:00.0", "1": "00000000:44:00.0"}},
        "node_regex": "^gpu[0-9]+$"}}

Starts: every job run Slurm shows running (squeue) or that ran inside the sacct window, which
cc-backend does not have yet, gets ``POST /api/jobs/start_job/``; a job that started and ended
between two cycles gets its start and its stop in the same cycle. Stops: every started run that
sacct reports ended gets ``POST /api/jobs/stop_job/`` with its start time, so a requeued job's old
record is closed and its new run is a new record.

Safety: a stop needs Slurm's word that the run ended (a finished sacct record with the same start
time); a job cc-backend lists as running that Slurm says nothing about is reported and left
alone. 404/422 on stop means it is stopped or unknown: recorded, not retried. A 500 on a start
may be cc-backend 1.5's job_cache duplicate: it is retried from the outbox and ends as 422 once
the cache is committed.

Requeued jobs: cc-backend keeps one record per job id and cluster for 24 hours. Starts go out
through ``apply_many``: the runs of one job id in order of their start, one at a time, and a run
whose start did not get through holds back the later ones. A 422 on start is resolved by asking
cc-backend which run it holds (its job list around the start time, filtered by jobId here):
this run (already done), or another run (refused for good, naming both). A list that cannot be
read leaves it queued.

Versions: without ``api_version`` the connector asks cc-backend once per process
(``detect_api_version``); payloads are put in the version's schema when sent (``for_version``).
A 400 from cc-backend's decoder (unknown field, wrong type) is the connector's configuration,
not the job's: ``halted`` says what to fix and the actions wait in the outbox.

Reconcile: on the first run (no watermark: a new install, or the store was lost) the connector
lists cc-backend's running jobs of its cluster (``GET /api/jobs/``, paged) and adopts those
Slurm still runs (facts: recorded as delivered, nothing sent), so nothing is started twice;
runs that Slurm says ended are stopped.

One concern per module: see ``connector`` for the map of the package.
"""

from slurm_sync.connectors.clustercockpit.apply import ApiVersion, Sender
from slurm_sync.connectors.clustercockpit.client import (
    RemoteRun,
    detect_api_version,
    remote_runs,
)
from slurm_sync.connectors.clustercockpit.commands import (
    accelerators_block,
    discover_accelerators_command,
)
from slurm_sync.connectors.clustercockpit.connector import ClusterCockpitConnector
from slurm_sync.connectors.clustercockpit.observe import Observed, observe
from slurm_sync.connectors.clustercockpit.payload import (
    Unsendable,
    cc_state,
    for_version,
    start_payload,
    stop_payload,
)
from slurm_sync.connectors.clustercockpit.plan import plan
from slurm_sync.connectors.clustercockpit.settings import SCHEMA, HostMap, Settings

__all__ = [
    "SCHEMA",
    "ApiVersion",
    "ClusterCockpitConnector",
    "HostMap",
    "Observed",
    "RemoteRun",
    "Sender",
    "Settings",
    "Unsendable",
    "accelerators_block",
    "cc_state",
    "detect_api_version",
    "discover_accelerators_command",
    "for_version",
    "observe",
    "plan",
    "remote_runs",
    "start_payload",
    "stop_payload",
]
