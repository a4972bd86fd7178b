"""The ClusterCockpit connector: the modules of this package wired to the connector contract.

    settings.py  Settings, HostMap, SCHEMA: the settings read once, every default in one place
    payload.py   start_payload, stop_payload, for_version, cc_state: cc-backend's bodies (pure)
    client.py    the HTTP session and the reads of cc-backend's job list (version, running jobs)
    observe.py   observe -> Observed: what cc-backend runs (reconcile), read only
    plan.py      plan -> Plan: actions and facts, a pure function of its arguments
    apply.py     Sender: start_job and stop_job, the runs of one job in order
    commands.py  slurm-sync clustercockpit discover-accelerators
    legacy.py    cc-slurm-sync's config.json, run as it is

What it keeps between cycles is what lives as long as the process: the settings, the HTTP
session, Slurm's reader and the API version once found. Nothing of one cycle is kept for the
next step of that cycle: ``observe`` returns a value ``plan`` gets, and ``apply`` gets what it
needs in the actions' payloads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
from slurm_sync.config import AdaptedConfig
from slurm_sync.connector import (
    Connector,
    Direction,
    Kind,
    Plan,
    Scope,
    SlurmContext,
    SlurmNeeds,
    Snapshot,
    View,
)
from slurm_sync.connectors.clustercockpit import commands, legacy
from slurm_sync.connectors.clustercockpit.apply import ApiVersion, Sender
from slurm_sync.connectors.clustercockpit.client import (
    detect_api_version,
    make_client,
    token_from,
)
from slurm_sync.connectors.clustercockpit.observe import Observed, observe
from slurm_sync.connectors.clustercockpit.payload import START, STOP
from slurm_sync.connectors.clustercockpit.plan import plan
from slurm_sync.connectors.clustercockpit.settings import SCHEMA, Settings
from slurm_sync.slurm.query import JobFilter

__all__ = ["SQUEUE_STATES", "ClusterCockpitConnector"]

# Running jobs, and jobs that ended within MinJobAge, while slurmctld still knows their cores (a
# short job's record gets its hwthreads that way); the window for every end. Pending jobs, the
# bulk of a busy queue, are never asked for.
SQUEUE_STATES = ("R", "CG", "S", "CD", "F", "CA", "TO", "NF", "PR", "OOM", "BF", "DL")


class ClusterCockpitConnector(Connector):
    """Job records in cc-backend."""

    name: ClassVar[str] = "clustercockpit"
    schema: ClassVar[Mapping[str, Any]] = SCHEMA
    # Starts go out together: the runs of one job id in order, one at a time (apply_many).
    kinds: ClassVar[tuple[Kind, ...]] = (
        Kind(START, Direction.START, batched=True),
        Kind(STOP, Direction.STOP, destructive=True),
    )

    @classmethod
    def add_commands(cls, commands_: Any) -> None:
        commands.add_commands(commands_)

    @classmethod
    def adapt_config(cls, data: Mapping[str, Any], path: str) -> AdaptedConfig | None:
        """cc-slurm-sync's config.json runs as it is (``legacy``)."""
        return legacy.adapt_config(data, path)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.config = Settings.parse(settings)
        self.cc_cluster: str | None = self.config.cluster
        self.versions = ApiVersion(self.config.api_version)
        token = token_from(self.secret("token").reveal(), self.config.token_json_key)
        self.client = make_client(self.config, token)
        self.sender = Sender(self.client, self.config, self.versions)
        self.slurm: SlurmContext | None = None

    # -- what the engine and the tests read of it

    @property
    def halted(self) -> str | None:
        """What cc-backend said is wrong with the configuration, this cycle (``Sender``)."""
        sender: Sender | None = self.__dict__.get("sender")
        return sender.halted if sender is not None else None

    @halted.setter
    def halted(self, value: str | None) -> None:
        sender: Sender | None = self.__dict__.get("sender")
        if sender is not None:
            sender.halted = value

    @property
    def api_version(self) -> str:
        """The version payloads are planned for: configured, found, else 1.5."""
        return self.versions.current

    @api_version.setter
    def api_version(self, value: str) -> None:
        self.versions.found = value

    @property
    def configured_version(self) -> str | None:
        return self.versions.configured

    @configured_version.setter
    def configured_version(self, value: str | None) -> None:
        self.versions.configured = value

    # -- wiring

    def bind(self, slurm: SlurmContext) -> None:
        self.slurm = slurm
        self.sender.reader = slurm.reader
        if self.cc_cluster is None and slurm.cluster:
            self.cc_cluster = slurm.cluster

    def needs(self) -> SlurmNeeds:
        # full records (cores, GPUs) only of runs not started yet: a steady cycle lists
        return SlurmNeeds(squeue=JobFilter(states=SQUEUE_STATES), sacct=True, detail="new")

    def close(self) -> None:
        self.client.close()

    # -- the cycle

    def observe(self, view: View, snapshot: Snapshot) -> Observed:
        return observe(view, snapshot, settings=self.config, client=self.client,
                       reader=self.slurm.reader if self.slurm is not None else None,
                       cluster=self.cc_cluster, api_version=self.api_version)

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> Plan:
        if not isinstance(observed, Observed):  # called without observe: nothing observed
            observed = Observed(api_version=self.api_version, cluster=self.cc_cluster)
        return plan(view, snapshot, direction, scope, observed, self.config.hosts)

    def apply(self, action: Action) -> Outcome:
        if action.kind == START:
            return self.apply_many([action])[0]
        if action.kind == STOP:
            return self.sender.stop(action, self.cc_cluster)
        return Outcome.permanent(action, f"unknown action kind {action.kind!r}")

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        """This cycle's starts, outbox retries included (``Sender.starts``): the runs of one
        job id in order of their start, one at a time; different job ids ``concurrency`` at a
        time."""
        if any(a.kind != START for a in actions):
            return [self.apply(a) if a.kind != START else self.apply_many([a])[0]
                    for a in actions]
        return self.sender.starts(actions, self.cc_cluster, self.concurrency)

    def check(self) -> list[str]:
        reply = self.client.get("/api/jobs/", params={
            "state": "running", "cluster": self.cc_cluster or "", "items-per-page": 1})
        if reply.status == 401:
            return ["cc-backend refuses the token (401): is it an api-role JWT?"]
        if not reply.ok:
            return [f"cc-backend: {reply.describe()}"]
        found, why = detect_api_version(self.client, self.cc_cluster)
        if found is None:
            return [f"cannot tell cc-backend's API version ({why}): set "
                    f"connectors.clustercockpit.api_version"]
        if self.configured_version and self.configured_version != found:
            return [f"api_version is {self.configured_version} but cc-backend answers as "
                    f"{found}: set api_version to \"{found}\", or leave it out to have it "
                    f"found"]
        self.versions.learn(found)
        return []
