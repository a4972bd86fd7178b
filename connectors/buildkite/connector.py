"""The Buildkite connector: the modules of this package wired to the connector contract.

    settings.py  Settings, SCHEMA: the settings read once, every default in one place
    model.py     Ref, BKJob, Remote, SlurmRun, Observed, the kinds and Buildkite's job states
    rest.py      RestApi: the REST API's builds listing and look-ups (mode rest)
    stacks.py    StacksApi: registration, scheduled jobs, get-states, reserve, finish, notes
    script.py    the batch script, and the map file of an array job
    observe.py   observe -> Observed: Buildkite, the batch maps, gone build paths, taken jobs
    plan.py      plan -> Plan: actions and facts, a pure function of its arguments
    submit.py    Submitter: sbatch (arrays, the look-up before a submit is sent again)
    sbatch.py    what a failed sbatch means, from Slurm's own error codes
    cancel.py    scancel and SIGTERM
    prune.py     build paths a killed job left: found, planned, removed
    policy.py    slurm_* agent query rules -> checked sbatch options
    secrets.py   pipeline secrets (needs the extra slurm-sync[buildkite-secrets])
    commands.py  slurm-sync buildkite encrypt / decrypt-env

What it keeps between cycles is what lives as long as the process: the settings, the HTTP
session, Slurm's control, whether the stack is registered, the unknown job states already
logged. Nothing of one cycle is kept for the next step of that cycle: ``observe`` returns a
value ``plan`` gets, and ``apply`` gets what it needs in the actions' payloads (a submit sent
again from the outbox asks Slurm and Buildkite again, ``submit``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from slurm_sync.actions import Action, Outcome
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
from slurm_sync.connectors.buildkite import commands
from slurm_sync.connectors.buildkite.cancel import stop_all
from slurm_sync.connectors.buildkite.model import (
    CANCEL,
    FINISH,
    NOTIFY,
    PRUNE,
    SIGNAL,
    SUBMIT,
    Observed,
)
from slurm_sync.connectors.buildkite.observe import observe
from slurm_sync.connectors.buildkite.plan import plan
from slurm_sync.connectors.buildkite.prune import remove
from slurm_sync.connectors.buildkite.rest import RestApi
from slurm_sync.connectors.buildkite.settings import SCHEMA, Settings
from slurm_sync.connectors.buildkite.stacks import StacksApi
from slurm_sync.connectors.buildkite.submit import Submitter
from slurm_sync.http import ServiceClient, outcome_of
from slurm_sync.slurm.control import SlurmControl
from slurm_sync.slurm.query import JobFilter

__all__ = ["BuildkiteConnector"]


class BuildkiteConnector(Connector):
    """Buildkite CI jobs as Slurm jobs."""

    name: ClassVar[str] = "buildkite"
    schema: ClassVar[Mapping[str, Any]] = SCHEMA
    kinds: ClassVar[tuple[Kind, ...]] = (
        Kind(SUBMIT, Direction.START, batched=True),
        Kind(NOTIFY, Direction.START, batched=True),
        # mode stacks: a job refused for good is failed in Buildkite, with the reason
        Kind(FINISH, Direction.START),
        # signal and cancel wait out a grace period from their delivery (timed)
        Kind(CANCEL, Direction.STOP, destructive=True, timed=True, batched=True),
        Kind(SIGNAL, Direction.STOP, destructive=True, timed=True, batched=True),
        # an rm -rf of a job's build folder: never from a cycle whose Slurm answer is in doubt
        Kind(PRUNE, Direction.STOP, destructive=True),
    )

    @classmethod
    def add_commands(cls, commands_: Any) -> None:
        commands.add_commands(commands_)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.config = Settings.parse(settings)
        timeout = self.config.timeout
        self.api: RestApi | StacksApi
        if self.config.rest is not None:
            self.client = ServiceClient(
                self.config.rest.url,
                headers={"Authorization": f"Bearer {self.secret('rest.token').reveal()}"},
                timeout=timeout, retries=1)
            self.api = RestApi(self.client, self.config.rest)
        else:
            assert self.config.stacks is not None
            self.client = ServiceClient(
                self.config.stacks.url,
                headers={"Authorization": f"Token {self.secret('stacks.token').reveal()}",
                         "Content-Type": "application/json"},
                timeout=timeout, retries=1)
            self.api = StacksApi(self.client, self.config.stacks, self.config.queue)
        self.control: SlurmControl | None = None
        self.cluster: str | None = None
        self.dry_run = False
        self._warned: set[str] = set()  # unknown Buildkite job states logged by this process

    # -- wiring

    def bind(self, slurm: SlurmContext) -> None:
        self.control = SlurmControl(slurm.reader.runner, slurm.reader)
        self.cluster = slurm.cluster
        self.dry_run = slurm.dry_run

    def needs(self) -> SlurmNeeds:
        # Our jobs while Slurm holds them (one filtered squeue); the window for how they ended
        # (agent exit 27/28, or a job that died before its agent acquired).
        return SlurmNeeds(squeue=JobFilter(states=("PD", "R", "CG", "S"),
                                           names=(self.config.job_name,)), sacct=True)

    def close(self) -> None:
        self.client.close()

    # -- the cycle

    def observe(self, view: View, snapshot: Snapshot) -> Observed:
        return observe(view, snapshot, settings=self.config, api=self.api,
                       control=self.control, cluster=self.cluster, dry_run=self.dry_run,
                       warned=self._warned)

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> Plan:
        if not isinstance(observed, Observed):  # called without observe: nothing observed
            observed = Observed(cluster=self.cluster)
        return plan(view, snapshot, direction, scope, observed, self.config)

    def apply(self, action: Action) -> Outcome:
        return self.apply_many([action])[0]

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        kinds = {a.kind for a in actions}
        if len(kinds) != 1:
            by_key: dict[int, Outcome] = {}
            for kind in sorted(kinds):
                group = [a for a in actions if a.kind == kind]
                by_key.update({id(a): o for a, o in zip(group, self.apply_many(group))})
            return [by_key[id(a)] for a in actions]
        kind = actions[0].kind
        if kind == PRUNE:
            return [remove(a, self.config.agent.build_root) for a in actions]
        submitter = Submitter(self.config, self.api, self.control)
        if kind == FINISH:
            return [submitter.finish(a) for a in actions]
        if kind == NOTIFY:
            if not isinstance(self.api, StacksApi):
                return [Outcome.permanent(a, "timeline notes need mode stacks") for a in actions]
            reply = self.api.notify([{"job_uuid": str(a.payload["job"]),
                                      "detail": str(a.payload["detail"])} for a in actions])
            return [outcome_of(a, reply) for a in actions]
        if kind == SUBMIT:
            return submitter.submit_all(actions)  # unbound, they wait (marked to look first)
        if self.control is None:
            return [Outcome.transient(a, "not bound to Slurm") for a in actions]
        if kind in (CANCEL, SIGNAL):
            return stop_all(self.control, actions, signal=kind == SIGNAL)
        return [Outcome.permanent(a, f"unknown action kind {kind!r}") for a in actions]

    # -- check

    def check(self) -> list[str]:
        problems = []
        agent = self.config.agent
        try:
            mode = os.stat(agent.config).st_mode & 0o777
            if mode & 0o077:
                problems.append(f"agent config {agent.config} (it holds the agent token) "
                                f"has mode {mode:04o}: chmod 600")
        except OSError as exc:
            problems.append(f"agent config {agent.config}: {exc.strerror}")
        for folder in (self.config.batch_dir, agent.build_root):
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                problems.append(f"{folder} is not a writable folder")
        reply = self.api.check()
        if reply.status == 404 and isinstance(self.api, StacksApi):
            return problems  # not registered yet: the first run that is not a dry run does it
        if not reply.ok:
            problems.append(f"Buildkite: {reply.describe()}")
        return problems
