"""ClusterCockpit: start and stop job records in cc-backend (the connector is in ``connector``)."""

from slurm_sync.connectors.clustercockpit.connector import (
    ClusterCockpitConnector,
    HostMap,
    RemoteRun,
    Unsendable,
    accelerators_block,
    cc_state,
    detect_api_version,
    discover_accelerators_command,
    for_version,
    remote_runs,
    start_payload,
    stop_payload,
)

__all__ = [
    "ClusterCockpitConnector",
    "HostMap",
    "RemoteRun",
    "Unsendable",
    "accelerators_block",
    "cc_state",
    "detect_api_version",
    "discover_accelerators_command",
    "for_version",
    "remote_runs",
    "start_payload",
    "stop_payload",
]
