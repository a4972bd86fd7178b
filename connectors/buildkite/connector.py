"""Buildkite: scheduled CI jobs become Slurm jobs running ``buildkite-agent start
--acquire-job``; Slurm jobs whose Buildkite job was cancelled are cancelled.

    "connectors": {"buildkite": {
        "mode": "stacks", "queue": "slurm",
        "stacks": {"token": {"file": "/etc/slurm-sync/bk-agent-token"}, "stack_key": "hpc1"},
        "agent": {"config": "/etc/slurm-sync/buildkite-agent.cfg",
                  "build_root": "/scratch/buildkite"},
        "batch_dir": "/scratch/buildkite/batches",
        "policy": {"defaults": {"partition": "ci", "time": "01:00:00", "account": "ci"}}}}

One cycle:

    observe: what Buildkite has (REST: builds listed in scheduled/running/failing within a
             window, paged by Link; Stacks: the queue's scheduled jobs, whether dispatch is
             paused, and get-states for the jobs we run) and which Buildkite job each of our
             Slurm jobs runs (its --comment, or its array's map file)
    plan:    submit scheduled jobs not in Slurm yet (policy-checked, within max_in_flight and
             per-pipeline caps, at most max_submits times each); cancel Slurm jobs whose
             Buildkite job was cancelled, timed out or expired, or whose build finished, or,
             still pending, whose job another agent took; a running agent gets SIGTERM first
             and a full cancel after cancel_grace_seconds
    apply:   submits together (Stacks: batch-reserve first), one array job per shape with a
             map file written before sbatch, single submits when that fails; one scancel for
             all cancels; timeline notifications in Stacks mode

Nothing is cancelled on a guess: a cancel needs Buildkite's word for that job, from a listing
or a look-up that got through, and a squeue that got through. The API token never reaches
argv, a job's environment (``--export=NONE``) or a log line; the agent reads its own token
from its config file.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import shlex
import shutil
import sys
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar
from urllib.parse import urlsplit

from slurm_sync.actions import Action, Outcome, Status
from slurm_sync.commands import CommandContext
from slurm_sync.config import thaw
from slurm_sync.connector import (
    Connector,
    Direction,
    Kind,
    Scope,
    SlurmContext,
    SlurmNeeds,
    Snapshot,
    View,
)
from slurm_sync.connectors.buildkite.policy import POLICY_SCHEMA, QueuePolicy, Refused, resolve
from slurm_sync.errors import ConfigError, SlurmCommandError, SlurmError, SlurmFormatError
from slurm_sync.http import Reply, ServiceClient, classify, outcome_of
from slurm_sync.secrets import SECRET_REF_SCHEMA
from slurm_sync.slurm.control import SlurmControl, SubmitRequest, coarse_state
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.query import JobFilter

__all__ = ["BKJob", "BuildkiteConnector", "Ref", "Remote", "job_script"]

log = logging.getLogger(__name__)

SUBMIT, CANCEL, SIGNAL, NOTIFY = "submit", "cancel", "signal", "notify"
PRUNE = "prune"
#: a per-job build path is removed only when its Slurm job is gone and the folder has not
#: changed for this long (a job that started after this cycle's squeue has a newer one)
PRUNE_AGE_SECONDS = 600
PRUNE_MAX = 100  # folders removed per cycle at most
JOB_PATH = re.compile(r"^job-(\d+)\Z")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
SLUG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
ONE, BATCH = "bk:", "bk-batch:"

# Every job state Buildkite documents (REST job data model, the GraphQL JobStates enum, the
# Stacks API's get-states), in what it means for the Slurm job that runs the Buildkite job:
#: it will not run, or is being stopped: a pending Slurm job is cancelled, a running agent gets
#: SIGTERM and, after cancel_grace_seconds, a full cancel
GONE = frozenset({"canceled", "canceling", "timed_out", "timing_out", "expired", "skipped",
                  "broken", "waiting_failed", "blocked_failed", "unblocked_failed"})
#: it ran and ended: a pending Slurm job is cancelled (its agent could only exit 27); a running
#: one is left to its agent, which is done with the job and exits by itself
ENDED = frozenset({"passed", "failed", "finished"})
#: an agent holds it: if our Slurm job is still pending, it is another agent (after
#: taken_grace_seconds, so our own agent that has just started is not mistaken for one)
TAKEN = frozenset({"assigned", "accepted", "running"})
#: not runnable yet, or runnable and waiting for an agent: the Slurm job is left alone
WAITING = frozenset({"pending", "waiting", "blocked", "unblocked", "limited",
                     "limiting", "scheduled"})
JOB_STATES = GONE | ENDED | TAKEN | WAITING
BUILD_FINISHED = frozenset({"passed", "failed", "canceled", "skipped", "not_run"})
# Agent exit codes (buildkite/agent): 27 the acquire was refused (taken, cancelled, finished),
# 28 the job stayed locked (waiting on a dependency) past the agent's retries.
REFUSED_ACQUIRE, STILL_LOCKED = 27, 28

_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["mode", "queue", "agent", "batch_dir"],
    "properties": {
        "mode": {"enum": ["rest", "stacks"]},
        "queue": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "tags": {"type": "array", "items": {"type": "string", "pattern": "^[^,=\\s]+=[^,\\s]*$"},
                 "description": "agent tags of this connector's agents besides queue=..."},
        "rest": {
            "type": "object", "additionalProperties": False,
            "required": ["organization", "token"],
            "properties": {
                "url": {"type": "string", "pattern": "^https?://"},
                "organization": {"type": "string", "pattern": "^[A-Za-z0-9_-]+$"},
                "token": SECRET_REF_SCHEMA,
                "window_hours": {"type": "number", "exclusiveMinimum": 0, "maximum": 8760},
                "pipelines": {"type": "array", "items": {"type": "string"}},
            },
        },
        "stacks": {
            "type": "object", "additionalProperties": False,
            "required": ["token", "stack_key"],
            "properties": {
                "url": {"type": "string", "pattern": "^https?://"},
                "token": SECRET_REF_SCHEMA,
                "stack_key": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,80}$"},
                "reservation_seconds": {"type": "integer", "minimum": 60, "maximum": 3600},
            },
        },
        "agent": {
            "type": "object", "additionalProperties": False,
            "required": ["config", "build_root"],
            "properties": {
                "command": {"type": "string", "minLength": 1},
                "config": {"type": "string", "pattern": "^/"},
                "build_root": {"type": "string", "pattern": "^/"},
                "build_path_per": {"enum": ["job", "build"]},
                "log_dir": {"type": "string", "pattern": "^/"},
            },
        },
        "job_name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$"},
        "batch_dir": {"type": "string", "pattern": "^/"},
        "policy": POLICY_SCHEMA,
        "max_in_flight": {"type": "integer", "minimum": 0},
        "pipeline_limits": {"type": "object", "additionalProperties": {"type": "integer",
                                                                      "minimum": 0}},
        "max_submits": {"type": "integer", "minimum": 1, "maximum": 20},
        "cancel_grace_seconds": {"type": "number", "minimum": 0},
        "taken_grace_seconds": {"type": "number", "minimum": 0},
        "cancel_resend_seconds": {"type": "number", "minimum": 30},
        "timeout": {"type": "number", "exclusiveMinimum": 0, "maximum": 600},
    },
}


# --- values -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ref:
    """Which Buildkite job a Slurm job runs: pipeline slug, build number, job id."""

    pipeline: str
    build: int
    job: str

    def text(self) -> str:
        return f"{self.pipeline}/{self.build}/{self.job}"

    @classmethod
    def parse(cls, text: str) -> Ref | None:
        """`Ref.parse("app/12/<uuid>")`; None for anything else (never trusted blindly)."""
        parts = text.strip().split("/")
        if len(parts) != 3 or not SLUG.match(parts[0]) or not parts[1].isdigit():
            return None
        if not UUID.match(parts[2]):
            return None
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True)
class BKJob:
    """A Buildkite job as one cycle saw it."""

    id: str
    state: str
    pipeline: str = ""
    build: int = 0
    rules: tuple[str, ...] = ()
    build_state: str | None = None
    priority: int = 0
    scheduled_at: str = ""

    @property
    def ref(self) -> Ref:
        return Ref(self.pipeline, self.build, self.id)


@dataclass(frozen=True)
class Remote:
    """What observe() learnt of Buildkite: ``complete`` when every call it needed got through
    (a job missing from a complete answer means something; from an incomplete one, nothing)."""

    complete: bool = False
    paused: bool = False
    scheduled: tuple[BKJob, ...] = ()
    known: Mapping[str, BKJob] = field(default_factory=dict)
    # Slurm ids of our pending jobs whose Buildkite job an agent held when Buildkite was read,
    # that a squeue made after that read still shows pending: that agent is another's, not
    # the one our job started after the cycle's squeue (see _confirm_taken)
    taken_elsewhere: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SlurmRun:
    """One of our Slurm jobs (or array tasks) and the Buildkite job it runs."""

    ref: Ref
    # what scancel takes: "1234", or "1234_5" for any task of an array, pending or running.
    # Never a running task's own job id: Slurm 22.05's plain scancel of that id answers 0 and
    # does nothing (job_str_signal finds no array of that id: ESLURM_INVALID_JOB_ID, which
    # scancel ignores on its cancel path), so the full cancel would never happen.
    slurm_id: str
    job: Job


# --- pure helpers -------------------------------------------------------------------------------


def matches_queue(rules: Sequence[str], queue: str, tags: frozenset[str]) -> bool:
    """A job is ours when it asks for our queue and every other non-slurm_ rule is one of our
    tags (``k=v``, or ``k=*`` in the job's rules)."""
    asked_queue = None
    for rule in rules:
        key, _, value = rule.partition("=")
        if key.startswith("slurm_"):
            continue
        if key == "queue":
            asked_queue = value
            continue
        if rule not in tags and not (value == "*" and any(t.startswith(key + "=") for t in tags)):
            return False
    return asked_queue == queue


def runs_of(jobs: Iterable[Job], batches: Mapping[str, Sequence[Ref]],
            job_name: str) -> list[SlurmRun]:
    """Our Slurm jobs among ``jobs`` and the Buildkite job each runs, from its comment
    (``bk:<ref>``) or, for an array, its batch map (line i is task i)."""
    out = []
    for job in jobs:
        if job.name != job_name:
            continue
        comment = job.comment.strip()
        if comment.startswith(ONE):
            ref = Ref.parse(comment[len(ONE):])
            if ref is not None:
                out.append(SlurmRun(ref, str(job.job_id), job))
            continue
        if not comment.startswith(BATCH):
            continue
        refs = batches.get(comment[len(BATCH):], ())
        if job.array_task_id is not None and job.array_job_id is not None:
            if 0 <= job.array_task_id < len(refs):
                out.append(SlurmRun(refs[job.array_task_id],
                                    f"{job.array_job_id}_{job.array_task_id}", job))
        elif job.array_tasks_pending and job.array_job_id is not None:
            for task in _task_ids(job.array_tasks_pending):
                if 0 <= task < len(refs):
                    out.append(SlurmRun(refs[task], f"{job.array_job_id}_{task}", job))
    return out


def _task_ids(text: str) -> list[int]:
    """``0-3,7`` (squeue's array_task_string, maybe with a %limit) as task ids."""
    out: list[int] = []
    for part in text.split("%")[0].split(","):
        low, _, high = part.partition("-")
        if low.isdigit() and (not high or high.isdigit()):
            out.extend(range(int(low), int(high or low) + 1))
    return out


def job_script(*, agent: str, config: str, build_root: str, per_build: bool, tags: str,
               ref: Ref | None = None, batch_file: str | None = None) -> str:
    """The batch script of one Slurm job (``ref``) or of an array (``batch_file``: line i+1 is
    the Buildkite job of task i). Every value from config is shell-quoted; the job id is
    checked again inside, so nothing from a pipeline reaches the shell unquoted."""
    if ref is not None:
        lookup = f"REF={shlex.quote(ref.text())}"
    elif batch_file is not None:
        lookup = f'REF=$(sed -n "$((SLURM_ARRAY_TASK_ID + 1))p" {shlex.quote(batch_file)})'
    else:
        raise ValueError("job_script needs a ref or a batch file")
    path = ('"$BUILD_ROOT/${REF%/*}"' if per_build else '"$BUILD_ROOT/job-$SLURM_JOB_ID"')
    cleanup = "" if per_build else 'rm -rf -- "$BUILD_PATH"\n'
    return f"""#!/bin/bash
# Written by slurm-sync: runs one Buildkite job with buildkite-agent --acquire-job.
set -u
export PATH=/usr/local/bin:/usr/bin:/bin
{lookup}
JOB=${{REF##*/}}
case "$JOB" in
    ????????-????-????-????-????????????) ;;
    *) echo "slurm-sync: no Buildkite job for this task" >&2; exit 2 ;;
esac
BUILD_ROOT={shlex.quote(build_root)}
BUILD_PATH={path}
mkdir -p -- "$BUILD_PATH" || exit 2
{shlex.quote(agent)} start --acquire-job "$JOB" --disconnect-after-job \\
    --config {shlex.quote(config)} --build-path "$BUILD_PATH" \\
    --name "slurm-$SLURM_JOB_ID" --tags {shlex.quote(tags)}",slurm_job_id=$SLURM_JOB_ID" &
pid=$!
# scancel --signal=TERM --full reaches us and the agent; pass it on, then wait for the agent
trap 'kill -TERM "$pid" 2>/dev/null' TERM INT
wait "$pid"; rc=$?
while kill -0 "$pid" 2>/dev/null; do wait "$pid"; rc=$?; done
{cleanup}exit $rc
"""


def plan_prunes(gone: Mapping[int, float], build_root: str, snapshot: Snapshot,
                cluster: str | None) -> list[Action]:
    """A removal for each per-job build path whose Slurm job is gone (``gone``: job id ->
    the folder's mtime): what is left when Slurm killed a job before its script's cleanup."""
    actions = []
    for job_id, mtime in sorted(gone.items()):
        key = f"{cluster or '-'}/{job_id}/{int(mtime)}"
        if snapshot.done(PRUNE, key):
            continue
        path = os.path.join(build_root.rstrip("/"), f"job-{job_id}")
        actions.append(Action("buildkite", PRUNE, key, {"path": path},
                              f"Slurm job {job_id} is gone; its build path is left behind"))
        if len(actions) >= PRUNE_MAX:
            break
    return actions


# --- the connector ------------------------------------------------------------------------------


class BuildkiteConnector(Connector):
    """Buildkite CI jobs as Slurm jobs."""

    name: ClassVar[str] = "buildkite"
    schema: ClassVar[Mapping[str, Any]] = _SCHEMA
    kinds: ClassVar[tuple[Kind, ...]] = (
        Kind(SUBMIT, Direction.START, batched=True),
        Kind(NOTIFY, Direction.START, batched=True),
        # signal and cancel wait out a grace period from their delivery (timed)
        Kind(CANCEL, Direction.STOP, destructive=True, timed=True, batched=True),
        Kind(SIGNAL, Direction.STOP, destructive=True, timed=True, batched=True),
        # an rm -rf of a job's build folder: never from a cycle whose Slurm answer is in doubt
        Kind(PRUNE, Direction.STOP, destructive=True),
    )

    @classmethod
    def add_commands(cls, commands: Any) -> None:
        mine = commands.add_parser("buildkite", help="Buildkite helpers: pipeline secrets")
        sub = mine.add_subparsers(dest="bk_command", metavar="COMMAND", required=True)
        encrypt = sub.add_parser(
            "encrypt",
            help="encrypt a secret for a pipeline's env (asks for the value, never argv)")
        encrypt.add_argument("public_key", help="the agents' RSA public key (PEM)")
        encrypt.add_argument("--name", help="the variable's name (asked when left out)")
        encrypt.add_argument("--repository",
                             help="only builds of this repository may decrypt it")
        encrypt.set_defaults(handler=_encrypt_command)
        decrypt = sub.add_parser(
            "decrypt-env", help="for the agent's environment hook: print exports of SECRET_* vars")
        decrypt.add_argument("private_key", help="the agents' RSA private key (PEM, mode 600)")
        decrypt.add_argument("--require-repository", action="store_true",
                             help="refuse secrets not bound to a repository")
        decrypt.set_defaults(handler=_decrypt_command)

    def __init__(self, settings: Mapping[str, Any]) -> None:
        super().__init__(settings)
        self.mode = str(settings["mode"])
        self.queue = str(settings["queue"])
        self.tags = frozenset(settings.get("tags", ()))
        self.job_name = str(settings.get("job_name", "buildkite"))
        agent = dict(settings["agent"])
        self.agent_command = str(agent.get("command", "buildkite-agent"))
        self.agent_config = str(agent["config"])
        self.build_root = str(agent["build_root"])
        self.per_build = agent.get("build_path_per", "job") == "build"
        self.log_dir = agent.get("log_dir")
        self.batch_dir = str(settings["batch_dir"])
        self.policy = QueuePolicy.from_settings(thaw(settings.get("policy", {})),
                                                "$.connectors.buildkite.policy")
        self.max_in_flight = int(settings.get("max_in_flight", 0))
        self.pipeline_limits = {str(k): int(v)
                                for k, v in dict(settings.get("pipeline_limits", {})).items()}
        self.max_submits = int(settings.get("max_submits", 3))
        self.cancel_grace = float(settings.get("cancel_grace_seconds", 60))
        self.taken_grace = float(settings.get("taken_grace_seconds", 120))
        self.cancel_resend = float(settings.get("cancel_resend_seconds", 600))
        timeout = float(settings.get("timeout", 30))
        _refuse_slurm_variables(settings)
        if self.mode == "rest":
            rest = settings.get("rest")
            if not rest:
                raise ConfigError("$.connectors.buildkite.rest: required in mode 'rest'")
            self.org = str(rest["organization"])
            self.window = float(rest.get("window_hours", 96)) * 3600
            self.pipelines = tuple(rest.get("pipelines", ()))
            self.client = ServiceClient(
                str(rest.get("url", "https://api.buildkite.com")),
                headers={"Authorization": f"Bearer {self.secret('rest.token').reveal()}"},
                timeout=timeout, retries=1)
        else:
            stacks = settings.get("stacks")
            if not stacks:
                raise ConfigError("$.connectors.buildkite.stacks: required in mode 'stacks'")
            self.stack_key = str(stacks["stack_key"])
            self.reservation = int(stacks.get("reservation_seconds", 900))
            self.client = ServiceClient(
                str(stacks.get("url", "https://agent.buildkite.com")),
                headers={"Authorization": f"Token {self.secret('stacks.token').reveal()}",
                         "Content-Type": "application/json"},
                timeout=timeout, retries=1)
            self._registered = False
        self.control: SlurmControl | None = None
        self.cluster: str | None = None
        self._remote = Remote()
        self._batches: dict[str, tuple[Ref, ...]] = {}
        self._gone_paths: dict[int, float] = {}
        self._unknown_states: set[str] = set()
        # this cycle's Slurm, for submits (some sent again from the outbox): whether squeue got
        # through, and which Buildkite jobs our Slurm jobs run (active, or ended in the window)
        self._slurm_ok = False
        self._in_slurm: dict[str, SlurmRun] = {}

    # -- wiring

    def bind(self, slurm: SlurmContext) -> None:
        self.control = SlurmControl(slurm.reader.runner, slurm.reader)
        self.cluster = slurm.cluster

    def needs(self) -> SlurmNeeds:
        # Our jobs while Slurm holds them (one filtered squeue); the window for how they ended
        # (agent exit 27/28, or a job that died before its agent acquired).
        return SlurmNeeds(squeue=JobFilter(states=("PD", "R", "CG", "S"),
                                           names=(self.job_name,)), sacct=True)

    def close(self) -> None:
        self.client.close()

    # -- observe: Buildkite and the batch maps (I/O, read only)

    def observe(self, view: View, snapshot: Snapshot) -> Snapshot:
        self._batches = self._read_batches(view)
        self._gone_paths = self._find_gone_paths(view)
        runs = runs_of(view.active, self._batches, self.job_name)
        ended = runs_of(view.ended, self._batches, self.job_name)
        ours = {r.ref.job: r.ref for r in (*runs, *ended)}
        self._slurm_ok = view.squeue_ok
        self._in_slurm = {r.ref.job: r for r in (*ended, *runs)}
        try:
            self._remote = (self._observe_rest(ours) if self.mode == "rest"
                            else self._observe_stacks(ours))
        except _Unavailable as exc:
            log.warning("Buildkite not read this cycle: nothing is submitted or cancelled",
                        extra={"fields": {"connector": self.name, "error": str(exc)}})
            self._remote = Remote()
        if self._remote.complete:
            self._remote = replace(self._remote, taken_elsewhere=self._confirm_taken(
                runs, self._remote, view.now))
        for job in self._remote.known.values():
            if job.state not in JOB_STATES and job.state not in self._unknown_states:
                self._unknown_states.add(job.state)
                log.warning("a Buildkite job state this version does not know: its Slurm job "
                            "is left alone", extra={"fields": {
                                "connector": self.name, "state": job.state[:40], "job": job.id}})
        return snapshot

    def _confirm_taken(self, runs: Sequence[SlurmRun], remote: Remote,
                       now: float) -> frozenset[str]:
        """Which of our pending jobs another agent took their Buildkite job from. The cycle's
        squeue came before Buildkite was read: a job it showed pending may have started since
        and its own agent acquired the Buildkite job, which Buildkite then shows held. So such
        jobs (held, pending past taken_grace) are asked about again, in one squeue made after
        Buildkite was read: only those still pending are taken by another agent. Any doubt (that
        squeue failing) cancels none."""
        suspects = {r.slurm_id: r for r in runs if r.job.state is JobState.PENDING
                    and (bk := remote.known.get(r.ref.job)) is not None and bk.state in TAKEN
                    and now - (r.job.submit_time or now) >= self.taken_grace}
        if not suspects or self.control is None:
            return frozenset()
        ids = sorted({r.job.array_job_id or r.job.job_id for r in suspects.values()})
        self.control.clear_cache()
        try:
            found = self.control.status_many(ids)
        except SlurmError as exc:
            log.warning("squeue failed; no pending job is cancelled as taken by another agent",
                        extra={"fields": {"connector": self.name, "error": str(exc)}})
            return frozenset()
        records = [job for jobs in found.values() for job in jobs]
        return frozenset(r.slurm_id for r in runs_of(records, self._batches, self.job_name)
                         if r.slurm_id in suspects and r.job.state is JobState.PENDING)

    def _find_gone_paths(self, view: View) -> dict[int, float]:
        """Per-job build paths whose job Slurm no longer runs. Candidates are folders not
        touched for PRUNE_AGE_SECONDS whose job this cycle's squeue did not show; squeue is
        then asked about exactly those ids (whatever their job name), and only an id it does
        not know, or knows as ended, counts as gone. Any doubt keeps the folder."""
        if not view.squeue_ok or self.control is None:
            return {}
        alive = {j.job_id for j in view.active}
        candidates = {job_id: mtime for job_id, mtime in self._read_build_paths().items()
                      if job_id not in alive and view.now - mtime >= PRUNE_AGE_SECONDS}
        if not candidates:
            return {}
        try:
            states = self.control.status(sorted(candidates))
        except SlurmError as exc:
            log.warning("squeue failed; no build path pruned",
                        extra={"fields": {"connector": self.name, "error": str(exc)}})
            return {}
        return {job_id: mtime for job_id, mtime in candidates.items()
                if coarse_state(states.get(job_id)) in ("gone", "finished", "failed", "cancelled")}

    def _read_build_paths(self) -> dict[int, float]:
        """Per-job build paths under build_root (``job-<slurm id>``) and when each last
        changed; none in mode build_path_per build, whose paths are meant to outlive jobs."""
        if self.per_build:
            return {}
        found = {}
        try:
            with os.scandir(self.build_root) as entries:
                for entry in entries:
                    match = JOB_PATH.match(entry.name)
                    if match and entry.is_dir(follow_symlinks=False):
                        found[int(match[1])] = entry.stat(follow_symlinks=False).st_mtime
        except OSError as exc:
            log.warning("cannot list the build root; nothing pruned",
                        extra={"fields": {"path": self.build_root, "error": exc.strerror}})
        return found

    def _read_batches(self, view: View) -> dict[str, tuple[Ref, ...]]:
        ids = {j.comment.strip()[len(BATCH):] for j in (*view.active, *view.ended)
               if j.name == self.job_name and j.comment.strip().startswith(BATCH)}
        out: dict[str, tuple[Ref, ...]] = {}
        for batch in ids:
            if not re.match(r"^[0-9a-f]{32}$", batch):
                continue
            path = os.path.join(self.batch_dir, f"{batch}.refs")
            try:
                with open(path, encoding="utf-8") as handle:
                    refs = [Ref.parse(line) for line in handle]
            except OSError as exc:
                log.warning("cannot read a batch map; its jobs are left alone",
                            extra={"fields": {"path": path, "error": exc.strerror}})
                continue
            if all(refs):
                out[batch] = tuple(r for r in refs if r is not None)
        return out

    def _observe_rest(self, ours: Mapping[str, Ref]) -> Remote:
        since = dt.datetime.fromtimestamp(dt.datetime.now(dt.timezone.utc).timestamp()
                                          - self.window, dt.timezone.utc)
        params: Any = [("state[]", s) for s in ("scheduled", "running", "failing")]
        params += [("created_from", since.strftime("%Y-%m-%dT%H:%M:%SZ")), ("per_page", "100")]
        path = f"/v2/organizations/{self.org}/builds"
        known: dict[str, BKJob] = {}
        pages = 0
        next_path: str | None = path
        while next_path is not None:
            reply = self.client.get(next_path, params=params if pages == 0 else None)
            pages += 1
            self._rate(reply)
            if not reply.ok or not isinstance(reply.body, list):
                raise _Unavailable(reply.describe())
            for build in reply.body:
                for job in _jobs_of(build):
                    known[job.id] = job
            next_path = _next_link(reply)
        # Our Slurm jobs whose build left the active listing: look the build up (finished,
        # or older than the window) rather than guess.
        missing = {(r.pipeline, r.build) for j, r in ours.items() if j not in known}
        for pipeline, number in sorted(missing)[:50]:
            reply = self.client.get(
                f"/v2/organizations/{self.org}/pipelines/{pipeline}/builds/{number}")
            self._rate(reply)
            if reply.status == 404:
                continue
            if not reply.ok or not isinstance(reply.body, Mapping):
                raise _Unavailable(reply.describe())
            for job in _jobs_of(reply.body):
                known[job.id] = job
        scheduled = tuple(j for j in known.values() if j.state == "scheduled"
                          and (not self.pipelines or j.pipeline in self.pipelines)
                          and matches_queue(j.rules, self.queue, self.tags))
        log.info("Buildkite listed", extra={"fields": {
            "connector": self.name, "pages": pages, "jobs": len(known),
            "scheduled-here": len(scheduled)}})
        return Remote(complete=True, scheduled=scheduled, known=known)

    def _rate(self, reply: Reply) -> None:
        headers = reply.headers or {}
        remaining = headers.get("RateLimit-Remaining")
        if remaining is not None and remaining.isdigit() and int(remaining) < 10:
            log.warning("Buildkite REST rate limit nearly spent", extra={"fields": {
                "remaining": remaining, "reset-seconds": headers.get("RateLimit-Reset")}})
        if reply.status == 429:
            raise _Unavailable(f"rate limited (429); the quota resets in "
                               f"{headers.get('RateLimit-Reset', '?')} s")

    def _observe_stacks(self, ours: Mapping[str, Ref]) -> Remote:
        if not self._registered:
            reply = self.client.post("/v3/stacks/register", json={
                "key": self.stack_key, "type": "custom", "queue_key": self.queue,
                "metadata": {"scheduler": "slurm-sync"}})
            if not reply.ok:
                raise _Unavailable(reply.describe())
            self._registered = True
        reply = self.client.get(f"/v3/stacks/{self.stack_key}/scheduled-jobs",
                                params={"queue_key": self.queue, "limit": 1000})
        if not reply.ok or not isinstance(reply.body, Mapping):
            raise _Unavailable(reply.describe())
        paused = bool((reply.body.get("cluster_queue") or {}).get("dispatch_paused"))
        scheduled = []
        for item in reply.body.get("jobs") or []:
            job = _stack_job(item)
            if job is not None and matches_queue(job.rules, self.queue, self.tags):
                scheduled.append(job)
        known: dict[str, BKJob] = {j.id: j for j in scheduled}
        ids = sorted(ours)
        for start in range(0, len(ids), 1000):
            chunk = ids[start:start + 1000]
            got = self.client.post(f"/v3/stacks/{self.stack_key}/jobs/get-states",
                                   json={"job_uuids": chunk})
            if not got.ok or not isinstance(got.body, Mapping):
                raise _Unavailable(got.describe())
            for job_id, state in dict(got.body.get("states") or {}).items():
                ref = ours.get(str(job_id))
                if ref is not None and isinstance(state, str):
                    known[ref.job] = BKJob(ref.job, state, ref.pipeline, ref.build)
        return Remote(complete=True, paused=paused, scheduled=tuple(scheduled), known=known)

    # -- plan (pure over the view, the snapshot and what observe found)

    def plan(
        self, view: View, snapshot: Snapshot, direction: Direction, scope: Scope,
        observed: Any = None,
    ) -> list[Action]:
        remote = self._remote
        if not view.squeue_ok:
            return []  # what runs is unknown: nothing is submitted, cancelled or pruned
        actions: list[Action] = []
        if direction.includes(Direction.STOP) and not scope.job_ids:
            actions += plan_prunes(self._gone_paths, self.build_root, snapshot, self.cluster)
        if not remote.complete:
            return actions  # without Buildkite, neither what to submit nor what to cancel
        runs = runs_of(view.active, self._batches, self.job_name)
        ended = runs_of(view.ended, self._batches, self.job_name)
        if direction.includes(Direction.STOP):
            actions += self._plan_cancels(runs, remote, snapshot, view.now)
        if direction.includes(Direction.START):
            actions += self._plan_submits(runs, ended, remote, snapshot, scope)
            if self.mode == "stacks":
                actions += self._plan_notices(runs, snapshot)
        return actions

    def _plan_cancels(self, runs: Sequence[SlurmRun], remote: Remote, snapshot: Snapshot,
                      now: float) -> list[Action]:
        actions = []
        for run in runs:
            bk = remote.known.get(run.ref.job)
            if bk is None:
                continue  # no word from Buildkite on this job: leave it
            pending = run.job.state is JobState.PENDING
            why = self._why_cancel(run, bk, pending, now)
            if why is None:
                continue
            key = f"{self.cluster or run.job.cluster or '-'}/{run.slurm_id}/{run.ref.job}"
            payload = {"slurm_id": run.slurm_id, "ref": run.ref.text()}
            if pending:
                if self._cancel_due(snapshot, key, now):
                    actions.append(Action(self.name, CANCEL, key, payload, f"pending; {why}"))
                continue
            signalled = snapshot.since(SIGNAL, key)
            if signalled is None and not snapshot.done(SIGNAL, key):
                actions.append(Action(self.name, SIGNAL, key, payload,
                                      f"{why}: SIGTERM so the agent's hooks run"))
            elif (signalled is not None and now - signalled >= self.cancel_grace
                    and self._cancel_due(snapshot, key, now)):
                actions.append(Action(self.name, CANCEL, key, payload,
                                      f"{why}; still running {now - signalled:.0f} s "
                                      f"after SIGTERM"))
        return actions

    def _why_cancel(self, run: SlurmRun, bk: BKJob, pending: bool, now: float) -> str | None:
        """Why the Slurm job of ``run`` is to be stopped, from its Buildkite job's state (every
        documented one is in one of GONE, ENDED, TAKEN and WAITING); None to leave it. A
        pending job whose Buildkite job is held goes only once a squeue made after Buildkite
        was read still shows it pending (``Remote.taken_elsewhere``): else the holder may be
        its own agent, started since the cycle's squeue."""
        if bk.state in GONE:
            return f"Buildkite job {bk.state}"
        if bk.build_state in BUILD_FINISHED:
            return f"build {bk.build_state}"
        if pending and bk.state in ENDED:
            return f"Buildkite job {bk.state}; its agent could not acquire it"
        if pending and bk.state in TAKEN:
            waited = now - (run.job.submit_time or now)
            if waited >= self.taken_grace and run.slurm_id in self._remote.taken_elsewhere:
                return f"Buildkite job {bk.state} by another agent"
        return None  # WAITING, TAKEN by our own agent, ENDED while running, or unknown

    def _cancel_due(self, snapshot: Snapshot, key: str, now: float) -> bool:
        """A full cancel is sent once, then Slurm is left to end the job (a job shutting down
        stays in squeue for a while: COMPLETING, KillWait). It is sent again only when the
        job is still there ``cancel_resend_seconds`` later; never while one waits in the
        outbox."""
        sent = snapshot.since(CANCEL, key)
        if sent is None:
            return not snapshot.done(CANCEL, key)
        return now - sent >= self.cancel_resend

    def _plan_submits(self, runs: Sequence[SlurmRun], ended: Sequence[SlurmRun],
                      remote: Remote, snapshot: Snapshot, scope: Scope) -> list[Action]:
        if remote.paused:
            return []
        in_slurm = {r.ref.job for r in runs}
        refused_acquire = {r.ref.job for r in ended
                           if r.job.exit_code.return_code == REFUSED_ACQUIRE}
        in_flight = len(runs)
        per_pipeline = Counter(r.ref.pipeline for r in runs)
        tried = _attempts(snapshot)
        actions = []
        order = sorted(remote.scheduled, key=lambda j: (-j.priority, j.scheduled_at, j.id))
        for job in order:
            if job.id in in_slurm or job.id in refused_acquire:
                continue
            if scope.job_ids:
                continue  # --jobid names Slurm jobs; nothing new is submitted in such a run
            n = tried.get(job.id, 0)
            if f"{job.id}#{n}" in snapshot.queued.get(SUBMIT, frozenset()):
                continue  # its last submit waits in the outbox
            if snapshot.done(SUBMIT, f"{job.id}#refused"):
                continue  # refused once, reported once
            base = {"ref": job.ref.text(), "rules": list(job.rules)}
            if n >= self.max_submits:
                actions.append(Action(self.name, SUBMIT, f"{job.id}#refused", {
                    **base, "refused": f"submitted to Slurm {n} times and its agent never "
                                       f"acquired it; not submitted again"},
                    "too many submits"))
                continue
            resolved = resolve(job.rules, self.policy)
            if isinstance(resolved, Refused):
                actions.append(Action(self.name, SUBMIT, f"{job.id}#refused",
                                      {**base, "refused": resolved.reason}, "refused"))
                continue
            cap = self.pipeline_limits.get(job.pipeline)
            if cap is not None and per_pipeline[job.pipeline] >= cap:
                continue  # stays scheduled for a later cycle
            if self.max_in_flight and in_flight >= self.max_in_flight:
                continue
            per_pipeline[job.pipeline] += 1
            in_flight += 1
            actions.append(Action(self.name, SUBMIT, f"{job.id}#{n + 1}", {
                **base, "options": list(resolved.options), "tags": list(resolved.tags)},
                f"scheduled in {job.pipeline} #{job.build}"
                + (f" (submit {n + 1})" if n else "")))
        return actions

    def _plan_notices(self, runs: Sequence[SlurmRun], snapshot: Snapshot) -> list[Action]:
        actions = []
        for run in runs:
            if run.job.state is not JobState.PENDING or not run.job.reason:
                continue
            key = f"{run.ref.job}/{run.slurm_id}/{run.job.reason}"
            if not snapshot.done(NOTIFY, key):
                actions.append(Action(self.name, NOTIFY, key, {
                    "job": run.ref.job,
                    "detail": f"pending in Slurm as job {run.slurm_id}: {run.job.reason}"},
                    "timeline"))
        return actions

    # -- apply

    def apply(self, action: Action) -> Outcome:
        return self.apply_many([action])[0]

    def apply_many(self, actions: Sequence[Action]) -> list[Outcome]:
        kinds = {a.kind for a in actions}
        if len(kinds) != 1:
            return [o for kind in sorted(kinds)
                    for o in self.apply_many([a for a in actions if a.kind == kind])]
        kind = actions[0].kind
        if kind == PRUNE:
            return [self._prune(a) for a in actions]
        if self.control is None:
            return [Outcome.transient(a, "not bound to Slurm") for a in actions]
        if kind == SUBMIT:
            return self._submit_all(actions)
        if kind in (CANCEL, SIGNAL):
            return self._cancel_all(actions, signal=kind == SIGNAL)
        if kind == NOTIFY:
            return self._notify_all(actions)
        return [Outcome.permanent(a, f"unknown action kind {kind!r}") for a in actions]

    def _prune(self, action: Action) -> Outcome:
        """Remove one per-job build path left behind by a job Slurm killed before its script
        could clean up. Only ``job-<id>`` folders right under build_root, never through a
        symlink (shutil.rmtree's fd-based walk on Linux does not follow them)."""
        path = str(action.payload["path"])
        if (os.path.dirname(path) != self.build_root.rstrip("/")
                or not JOB_PATH.match(os.path.basename(path))):
            return Outcome.permanent(action, f"{path} is not a build path of build_root")
        if not shutil.rmtree.avoids_symlink_attacks:
            return Outcome.permanent(action, "this platform's rmtree may follow symlinks")
        try:
            if os.path.islink(path):
                return Outcome.permanent(action, f"{path} is a symlink; left alone")
            shutil.rmtree(path)
        except FileNotFoundError:
            return Outcome.already_done(action, "already gone")
        except OSError as exc:
            return Outcome.permanent(action, f"cannot remove {path}: {exc.strerror}")
        return Outcome.done(action, f"removed {path}")

    def _cancel_all(self, actions: Sequence[Action], *, signal: bool) -> list[Outcome]:
        """One scancel for the cancels; the SIGTERMs through ``SlurmControl.signal``, which
        Slurm takes at once even for a task of an array whose other tasks pend, and which
        says per job whether it was taken (a refused one is retried, its grace not begun)."""
        assert self.control is not None
        ids = [str(a.payload["slurm_id"]) for a in actions]
        parsed: list[int | str] = [int(i) if i.isdigit() else i for i in ids]
        try:
            if signal:
                refused = self.control.signal(parsed, "TERM")
            else:
                self.control.cancel(parsed)
                refused = {}
        except (SlurmError, ValueError) as exc:
            return [Outcome.transient(a, f"scancel: {exc}") for a in actions]
        what = "SIGTERM sent" if signal else "cancelled"
        return [Outcome.transient(a, f"scancel: Slurm job {job_id}: {why}")
                if (why := refused.get(job_id)) is not None
                else Outcome.done(a, f"Slurm job {job_id} {what}")
                for a, job_id in zip(actions, parsed)]

    def _submit_all(self, actions: Sequence[Action]) -> list[Outcome]:
        outcomes: dict[str, Outcome] = {}
        todo = []
        scheduled = {j.id for j in self._remote.scheduled}
        for action in actions:
            if "refused" in action.payload:
                outcomes[action.key] = self._refuse(action)
            elif (settled := self._not_now(action, scheduled)) is not None:
                outcomes[action.key] = settled
            else:
                todo.append(action)
        if todo and self.mode == "stacks":
            todo = self._reserve(todo, outcomes)
        shapes: dict[tuple[str, ...], list[Action]] = {}
        for action in todo:
            shape = (*action.payload["options"], "|", *action.payload["tags"])
            shapes.setdefault(shape, []).append(action)
        for group in shapes.values():
            for outcome in self._submit_group(group):
                outcomes[outcome.action.key] = outcome
        if self.mode == "stacks":
            self._notify_submitted([o for o in outcomes.values() if o.status is Status.DONE])
        return [outcomes[a.key] for a in actions]

    def _not_now(self, action: Action, scheduled: set[str]) -> Outcome | None:
        """Why a submit must not reach sbatch in this cycle, or None. A submit planned this
        cycle always goes; one sent again from the outbox (its sbatch timed out, or said
        "Socket timed out", after slurmctld may have taken the job) or planned by a cycle
        killed before it recorded its sbatch may have made its Slurm job already: sbatch again
        only when this cycle's squeue got through and shows no Slurm job of ours running the
        Buildkite job (nor sacct one that ended), and, when Buildkite could be read, it still
        has the job scheduled (unread, the submit goes: a job cancelled meanwhile costs a Slurm
        job whose agent exits 27, not a run)."""
        ref = Ref.parse(str(action.payload.get("ref", "")))
        if ref is None:
            return None  # refused in _submit_group
        if not self._slurm_ok:
            return Outcome.transient(action, "squeue failed this cycle: an earlier sbatch of "
                                             "this job may be in Slurm; the submit waits")
        found = self._in_slurm.get(ref.job)
        if found is not None:
            return Outcome.already_done(action, f"in Slurm already as job {found.slurm_id} "
                                                f"({found.job.state.value}): not submitted "
                                                f"again")
        remote = self._remote
        if remote.paused:
            return Outcome.transient(action, "dispatch is paused in Buildkite; the submit waits")
        if remote.complete and self.mode == "rest" and ref.job not in scheduled:
            # (the Stacks API hides jobs we reserved from its list: batch-reserve tells there)
            known = remote.known.get(ref.job)
            return Outcome.already_done(action, "nothing to submit: the Buildkite job is "
                                        + (known.state if known is not None
                                           else "no longer scheduled"))
        return None

    def _refuse(self, action: Action) -> Outcome:
        reason = str(action.payload["refused"])
        ref = Ref.parse(str(action.payload["ref"]))
        if self.mode == "stacks" and ref is not None:
            reply = self.client.post(f"/v3/stacks/{self.stack_key}/jobs/{ref.job}/finish",
                                     json={"exit_status": -1,
                                           "detail": f"slurm-sync: {reason}"[:4000]})
            if classify(reply) is Status.TRANSIENT:
                return Outcome.transient(action, reply.describe(), reply.retry_after)
            return Outcome.permanent(action, f"refused, and failed in Buildkite: {reason}")
        return Outcome.permanent(action, f"refused: {reason}")

    def _reserve(self, todo: list[Action], outcomes: dict[str, Outcome]) -> list[Action]:
        """Stacks: reserve before submitting, so two clusters never take the same job."""
        by_job = {str(Ref.parse(str(a.payload["ref"])).job): a  # type: ignore[union-attr]
                  for a in todo}
        reply = self.client.put(f"/v3/stacks/{self.stack_key}/scheduled-jobs/batch-reserve",
                                json={"job_uuids": sorted(by_job),
                                      "reservation_expiry_seconds": self.reservation})
        if not reply.ok or not isinstance(reply.body, Mapping):
            for action in todo:
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

    def _submit_group(self, group: list[Action]) -> list[Outcome]:
        assert self.control is not None
        options = tuple(group[0].payload["options"])
        tags = ",".join([f"queue={self.queue}", *sorted(self.tags)])
        base = ["--export=NONE", f"--chdir={self.build_root}",
                f"--output={self._log_path(array=len(group) > 1)}"]
        if len(group) > 1:
            batch = uuid.uuid4().hex
            path = os.path.join(self.batch_dir, f"{batch}.refs")
            try:
                _write_batch(path, [str(a.payload["ref"]) for a in group])
                script = job_script(agent=self.agent_command, config=self.agent_config,
                                    build_root=self.build_root, per_build=self.per_build,
                                    tags=tags, batch_file=path)
                done = self.control.submit_array(SubmitRequest(
                    script=script, job_name=self.job_name, options=(*base, *options),
                    comment=f"{BATCH}{batch}"), len(group))
                return [Outcome.done(a, f"Slurm job {done.job_id}_{i} (one array of "
                                        f"{len(group)})")
                        for i, a in enumerate(group)]
            except (OSError, SlurmError, ValueError) as exc:
                if _answer_lost(exc):
                    # slurmctld may hold the array: its jobs one by one would run twice
                    return [Outcome.transient(a, f"sbatch --array: {exc}; the array may be in "
                                                 "Slurm, looked for before any new sbatch")
                            for a in group]
                log.warning("array submit failed; submitting one by one",
                            extra={"fields": {"connector": self.name, "jobs": len(group),
                                              "error": str(exc)}})
        outcomes = []
        for action in group:
            ref = Ref.parse(str(action.payload["ref"]))
            if ref is None:
                outcomes.append(Outcome.permanent(action, "bad Buildkite job reference"))
                continue
            script = job_script(agent=self.agent_command, config=self.agent_config,
                                build_root=self.build_root, per_build=self.per_build,
                                tags=tags, ref=ref)
            try:
                done = self.control.submit(SubmitRequest(
                    script=script, job_name=self.job_name,
                    options=(*base[:2], f"--output={self._log_path(array=False)}", *options),
                    comment=f"{ONE}{ref.text()}"))
            except SlurmError as exc:
                if _answer_lost(exc):
                    outcomes.append(Outcome.transient(action, f"sbatch: {exc}; the job may be "
                                                              "in Slurm, looked for before any "
                                                              "new sbatch"))
                else:
                    outcomes.append(self._submit_failed(action, str(exc)))
                continue
            outcomes.append(Outcome.done(action, f"Slurm job {done.job_id}"))
        return outcomes

    def _submit_failed(self, action: Action, error: str) -> Outcome:
        """sbatch said no. A refusal of the job itself (bad partition...) is final and goes
        back to Buildkite; an unreachable controller waits in the outbox."""
        lowered = error.lower()
        if any(w in lowered for w in ("unable to contact", "timed out", "not found",
                                      "connection", "try again", "not responding")):
            return Outcome.transient(action, error)
        return self._refuse(replace(action, payload={**action.payload,
                                                     "refused": f"sbatch: {error}"}))

    def _log_path(self, *, array: bool) -> str:
        if not self.log_dir:
            return "/dev/null"
        name = "%x-%A_%a.out" if array else "%x-%j.out"
        return os.path.join(str(self.log_dir), name)

    def _notify_submitted(self, outcomes: Sequence[Outcome]) -> None:
        items = []
        for outcome in outcomes:
            ref = Ref.parse(str(outcome.action.payload.get("ref", "")))
            partition = next((o.split("=", 1)[1] for o in outcome.action.payload["options"]
                              if o.startswith("--partition=")),
                             self.policy.defaults.get("partition") or "default")
            if ref is not None:
                items.append({"job_uuid": ref.job,
                              "detail": f"queued in {outcome.detail.split(' (')[0]} "
                                        f"on partition {partition}"[:256]})
        if items:
            reply = self.client.post(f"/v3/stacks/{self.stack_key}/notifications",
                                     json={"notifications": items})
            if not reply.ok:
                log.warning("timeline notifications not sent", extra={"fields": {
                    "connector": self.name, "error": reply.describe()}})

    def _notify_all(self, actions: Sequence[Action]) -> list[Outcome]:
        reply = self.client.post(f"/v3/stacks/{self.stack_key}/notifications", json={
            "notifications": [{"job_uuid": a.payload["job"],
                               "detail": str(a.payload["detail"])[:256]} for a in actions]})
        return [outcome_of(a, reply) for a in actions]

    # -- check

    def check(self) -> list[str]:
        problems = []
        try:
            mode = os.stat(self.agent_config).st_mode & 0o777
            if mode & 0o077:
                problems.append(f"agent config {self.agent_config} (it holds the agent token) "
                                f"has mode {mode:04o}: chmod 600")
        except OSError as exc:
            problems.append(f"agent config {self.agent_config}: {exc.strerror}")
        for folder in (self.batch_dir, self.build_root):
            if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
                problems.append(f"{folder} is not a writable folder")
        if self.mode == "rest":
            reply = self.client.get(f"/v2/organizations/{self.org}/builds",
                                    params={"per_page": 1})
        else:
            reply = self.client.get(f"/v3/stacks/{self.stack_key}/scheduled-jobs",
                                    params={"queue_key": self.queue, "limit": 1})
            if reply.status == 404:
                return problems  # not registered yet: the first run registers it
        if not reply.ok:
            problems.append(f"Buildkite: {reply.describe()}")
        return problems


def _refuse_slurm_variables(settings: Mapping[str, Any]) -> None:
    """A token read from a ``SLURM_*`` variable is refused: Slurm hands every such variable of
    the environment a job is submitted from to the job, whatever ``--export`` says. sbatch
    runs here without the service's environment, but an srun, salloc or wrapper the service
    is run from would still pass it on to every job."""
    for section in ("rest", "stacks"):
        ref = (settings.get(section) or {}).get("token")
        name = ref.get("env") if isinstance(ref, Mapping) else None
        if isinstance(name, str) and name.startswith("SLURM_"):
            raise ConfigError(
                f"$.connectors.buildkite.{section}.token: the variable {name} is a SLURM_* "
                "variable, which Slurm passes to every job (even with --export=NONE); give "
                "the token another name, or read it from a file")


def _answer_lost(exc: BaseException) -> bool:
    """Whether a failed sbatch may have submitted its job all the same: it timed out (the
    runner killed it), was killed, slurmctld's answer timed out ("Socket timed out on
    send/recv operation", "Zero Bytes were transmitted or received": the job may have been
    taken), or it exited 0 without a job id we could read."""
    if isinstance(exc, SlurmFormatError):
        return True
    if not isinstance(exc, SlurmCommandError):
        return False
    text = f"{exc.stderr} {exc.detail or ''}".lower()
    return ("timed out" in text or "zero bytes were transmitted" in text
            or (exc.returncode is not None and exc.returncode < 0))


class _Unavailable(Exception):
    """Buildkite could not be read completely this cycle."""


def _attempts(snapshot: Snapshot) -> dict[str, int]:
    """How many times each Buildkite job was submitted (keys ``<job>#<n>``)."""
    out: dict[str, int] = {}
    for keys in (snapshot.delivered.get(SUBMIT, frozenset()),
                 snapshot.failed.get(SUBMIT, frozenset()),
                 snapshot.queued.get(SUBMIT, frozenset())):
        for key in keys:
            job, _, n = key.partition("#")
            if n.isdigit():
                out[job] = max(out.get(job, 0), int(n))
    return out


def _jobs_of(build: Any) -> list[BKJob]:
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
        if not UUID.match(job_id) or not SLUG.match(str(pipeline)) or not isinstance(number,
                                                                                   int):
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


def _stack_job(item: Any) -> BKJob | None:
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


def _next_link(reply: Reply) -> str | None:
    """The path and query of the Link header's rel="next", or None."""
    header = (reply.headers or {}).get("Link", "")
    for part in header.split(","):
        if 'rel="next"' in part:
            url = part.split(";")[0].strip().strip("<>")
            parts = urlsplit(url)
            return parts.path + (f"?{parts.query}" if parts.query else "")
    return None


def _write_batch(path: str, refs: Sequence[str]) -> None:
    """The map of an array job, written (atomically) before sbatch: line i is task i."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write("".join(f"{r}\n" for r in refs))
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _secrets() -> Any:
    """The secret commands' module: it needs ``cryptography``, installed with the extra
    ``slurm-sync[buildkite-secrets]`` and by nothing else."""
    try:
        from slurm_sync.connectors.buildkite import secrets
    except ImportError as exc:
        raise ConfigError(f"buildkite secrets need the 'cryptography' package ({exc}): "
                          "pip install 'slurm-sync[buildkite-secrets]'") from exc
    return secrets


def _encrypt_command(ctx: CommandContext) -> int:
    args = ctx.args
    code: int = _secrets().cli_encrypt(args.public_key, name=args.name,
                                       repository=args.repository)
    return code


def _decrypt_command(ctx: CommandContext) -> int:
    code: int = _secrets().cli_decrypt_env(ctx.args.private_key, os.environ, sys.stdout,
                                           require_repository=ctx.args.require_repository)
    return code
