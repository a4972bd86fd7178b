"""The outside service of a chaos run: which emulator, the connector's settings, and what is
left in the service at the end.

- ``clustercockpit``: the cc-backend emulator (1.4.4 or 1.5.4, 1.5 with its job_cache committed
  every 5 s); the connector with default settings but url, token and cluster (and
  ``api_version: "1.4"`` against 1.4, which the default 1.5 would not speak).
- ``bank``: the myBRC emulator, every account with a large allocation and every user a member;
  the connector in its default mode (report) with a price per partition.
- ``buildkite``: the Buildkite emulator with a seeded stream of builds (``plan_builds``: one to
  eight jobs each, a few asking for their own sbatch options, a few for another queue, some
  builds cancelled by their user soon after they were created and some later, while their jobs
  run); the connector in REST mode on queue ``slurm`` with the policy's defaults, a 5 s cancel
  grace and a 10 s taken grace (the run's time is compressed). Its driver adds and cancels the
  builds on time and runs the cluster's scheduler and agents (bkagent.py).

A service's ``begin`` gives the run's ``Driver``: what it does while the run goes on besides
answering requests (nothing for cc-backend and the bank).
"""

from __future__ import annotations

import pwd
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.chaos import submits
from tests.chaos.bkagent import Agents, ref_of
from tests.chaos.timeline import ACCOUNTS, Scenario, Timeline
from tests.emulators.bank import Bank
from tests.emulators.base import Emulator
from tests.emulators.buildkite import Buildkite
from tests.emulators.ccbackend import CCBackend

__all__ = ["BANK_PRICES", "BK_QUEUE", "CC_CLUSTER", "SERVICES", "TOKEN", "Driver",
           "PlannedBuild", "Service", "bank_users", "plan_builds"]

CC_CLUSTER = "chaos"
TOKEN = "chaos-token"
BANK_PRICES = {"main": "100", "gpu": "300"}  # SU per CPU-hour: seconds-long jobs cost cents
BANK_ALLOCATION = "90000000"


def bank_users(count: int = 12) -> list[str]:
    """Users that exist on this machine: the Bank connector finds an ended job's uid by name
    (sacct's JSON has none), as it would on a cluster."""
    names = sorted({p.pw_name for p in pwd.getpwall() if p.pw_uid < 65534
                    and p.pw_name.isidentifier()}, key=lambda n: pwd.getpwnam(n).pw_uid)
    return names[:count]


class Driver:
    """What a service does while a run goes on besides answering (nothing, by default)."""

    def tick(self, now: float) -> None:
        """Called every loop of the harness (about every 20 ms)."""

    def snapshot(self) -> tuple[Any, ...]:
        """What changes while anything still happens (added to the service's snapshot)."""
        return ()

    def busy(self) -> bool:
        """Whether something is still under way that no snapshot shows changing (a job that
        runs): the drain goes on."""
        return False

    def extra(self) -> dict[str, Any]:
        """What the checks need besides the service's records, JSON-able."""
        return {}


class Service:
    """One kind of outside service (see the module docstring)."""

    name = ""

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        raise NotImplementedError

    def begin(self, emu: Any, work: Path, scenario: Scenario, t0: float) -> Driver:
        return Driver()

    def active_until(self, scenario: Scenario, timeline: Timeline, t0: float) -> float:
        """When the last job is over (the drain comes after)."""
        return float(timeline.last_end)

    def slurm_settings(self, scenario: Scenario) -> dict[str, Any]:
        """Settings of config.json's ``slurm`` besides bin_dir."""
        return {}

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        raise NotImplementedError

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        """What changes when the connector delivers something."""
        raise NotImplementedError

    def records(self, emu: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    def usage(self, emu: Any, users: Sequence[str]) -> dict[str, str]:
        return {}

    def api_version(self, scenario: Scenario) -> str:
        return ""


class ClusterCockpit(Service):
    name = "clustercockpit"

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        flavour14 = scenario.cc_version.startswith("1.4")
        return CCBackend(scenario.cc_version,
                         clusters={CC_CLUSTER: {"subclusters": {"main": "*",
                                                                "gpu": "g[01-16]"}}},
                         tokens={TOKEN}, commit_interval=None if flavour14 else 5.0)

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        cc: dict[str, Any] = {"url": url, "token": {"file": str(token_file)},
                              "cluster": CC_CLUSTER}
        if scenario.cc_version.startswith("1.4"):
            cc["api_version"] = "1.4"
        return cc

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        return tuple(sorted((r["jobId"], r["startTime"], r["jobState"])
                            for r in emu.all_jobs()))

    def records(self, emu: Any) -> list[dict[str, Any]]:
        return list(emu.all_jobs())

    def api_version(self, scenario: Scenario) -> str:
        return "1.4" if scenario.cc_version.startswith("1.4") else "1.5"


class BankService(Service):
    name = "bank"

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        bank = Bank(token=TOKEN)
        for user in users:
            bank.add_user(user, pwd.getpwnam(user).pw_uid)
        for account in ACCOUNTS:
            bank.set_allocation(account, BANK_ALLOCATION)
            for user in users:
                bank.set_user_allocation(account, pwd.getpwnam(user).pw_uid, BANK_ALLOCATION)
        return bank

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        return {"url": url, "token": {"file": str(token_file)}, "prices": dict(BANK_PRICES),
                "unpriced": "refuse"}

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        return tuple((j, r["amount"], r["enddate"]) for j in emu.job_ids()
                     if (r := emu.job(j)) is not None)

    def records(self, emu: Any) -> list[dict[str, Any]]:
        return [r for j in emu.job_ids() if (r := emu.job(j)) is not None]

    def usage(self, emu: Any, users: Sequence[str]) -> dict[str, str]:
        out = {}
        for account in ACCOUNTS:
            out[account] = str(emu.usage(account))
            for user in users:
                out[f"{account}/{user}"] = str(emu.user_usage(account, pwd.getpwnam(user).pw_uid))
        return out


BK_QUEUE = "slurm"
#: How long past its planned time a late cancel waits for a job of its build to run.
LATE_CANCEL_WAIT = 30.0
BK_PIPELINES = ("app", "docs", "infra", "ml")
BK_SLURM_TIMEOUT = 8.0  # slurm.timeout of the run: an sbatch hang outlives it
BK_LONGEST_WAIT = 25.0  # submits.pending_wait: the longest pending and running times
BK_LONGEST_RUN = 20.0


@dataclass(frozen=True)
class PlannedBuild:
    """One build of the run: when it is created, its jobs' agent query rules, and whether (and
    when) its user cancels it: ``early`` a second or three after it was created (its jobs
    mostly still pending), ``late`` while they mostly run."""

    index: int
    at: float
    pipeline: str
    rules: tuple[tuple[str, ...], ...]
    cancel_at: float | None = None
    cancel_kind: str = ""


def plan_builds(scenario: Scenario, t0: float) -> list[PlannedBuild]:
    """``scenario.jobs`` Buildkite jobs in builds created over ``[t0, t0 + span]``: half the
    builds of one job, the rest of two to eight; 20 % of jobs ask for two CPUs and 10 % for a
    shorter time limit (other sbatch shapes, so other arrays); 4 % of builds are for another
    queue (never ours to submit); ``build_cancel_share`` of builds are cancelled, half early,
    half late."""
    rng = random.Random(scenario.seed * 104729 + 11)
    sizes: list[int] = []
    while sum(sizes) < scenario.jobs:
        draw = rng.random()
        size = 1 if draw < 0.5 else rng.randint(2, 4) if draw < 0.85 else rng.randint(5, 8)
        sizes.append(min(size, scenario.jobs - sum(sizes)))
    times = sorted(t0 + rng.uniform(0, scenario.span) for _ in sizes)
    builds = []
    for index, (size, at) in enumerate(zip(sizes, times)):
        pipeline = rng.choice(BK_PIPELINES)
        elsewhere = rng.random() < 0.04
        rules = []
        for _ in range(size):
            draw = rng.random()
            extra: tuple[str, ...] = (() if draw < 0.7 else ("slurm_cpus_per_task=2",)
                                      if draw < 0.9 else ("slurm_time=00:05:00",))
            rules.append(("queue=elsewhere",) if elsewhere else (f"queue={BK_QUEUE}", *extra))
        draw = rng.random()
        cancel_at, kind = None, ""
        if draw < scenario.build_cancel_share / 2:
            cancel_at, kind = at + rng.uniform(0.5, 3.0), "early"
        elif draw < scenario.build_cancel_share:
            cancel_at, kind = at + rng.uniform(5.0, 20.0), "late"
        builds.append(PlannedBuild(index, at, pipeline, tuple(rules), cancel_at, kind))
    return builds


class BuildkiteDriver(Driver):
    """Creates and cancels the planned builds on time and runs the scheduler and agents."""

    def __init__(self, emu: Buildkite, work: Path, builds: list[PlannedBuild]) -> None:
        self.emu = emu
        self.work = work
        self.builds = builds
        self.made: dict[int, Any] = {}  # plan index -> NewBuild
        self.cancelled: dict[int, float] = {}
        self.agents = Agents(emu, work)
        self.next_agent_tick = 0.0

    def tick(self, now: float) -> None:
        for build in self.builds:
            if build.at > now:
                break
            if build.index not in self.made:
                self.made[build.index] = self.emu.add_build(build.pipeline, jobs=[
                    {"step_key": f"step{i}", "command": "make test",
                     "agent_query_rules": list(rules)} for i, rules in enumerate(build.rules)])
            if (build.cancel_at is not None and build.cancel_at <= now
                    and build.index not in self.cancelled and self._due(build, now)):
                self.emu.cancel_build(self.made[build.index].id, "chaos: cancelled by its user")
                self.cancelled[build.index] = now
        if now >= self.next_agent_tick:
            self.next_agent_tick = now + 0.1
            self.agents.tick(now)

    def _due(self, build: PlannedBuild, now: float) -> bool:
        """An early cancel is due at its time; a late one waits, up to LATE_CANCEL_WAIT s past
        its time, for a job of the build to be accepted by an agent, so that the run cancels
        jobs while they run on any machine's speed (on a slow one, none had started by the
        planned time and the scenario cancelled nothing running)."""
        if (build.cancel_kind != "late" or build.cancel_at is None
                or now >= build.cancel_at + LATE_CANCEL_WAIT):
            return True
        return any("accepted" in self.emu.job_history(job)
                   for job in self.made[build.index].job_ids)

    def snapshot(self) -> tuple[Any, ...]:
        tasks = tuple((e["job_id"], t["task"], t["state"], t["start"] is None)
                      for e in submits.load(self.work) for t in e["tasks"])
        return (len(self.made), tasks)

    def busy(self) -> bool:
        """A Slurm job of ours still runs, or pends without being held (it will start): only
        ended ones and those held for the connector to cancel are settled."""
        return any(t["end"] is None and not (t["start"] is None and t.get("held"))
                   for e in submits.load(self.work) for t in e["tasks"])

    def extra(self) -> dict[str, Any]:
        return {
            "builds": [{**asdict(b), "id": self.made[b.index].id if b.index in self.made
                        else None, "number": self.made[b.index].number
                        if b.index in self.made else None,
                        "cancelled": self.cancelled.get(b.index)} for b in self.builds],
            "agent_log": self.agents.log,
            "submitted": [{**e, "tasks": [{**t, "ref": ref_of(e, t)} for t in e["tasks"]]}
                          for e in submits.load(self.work)],
        }


class BuildkiteService(Service):
    name = "buildkite"

    def make(self, scenario: Scenario, users: Sequence[str]) -> Emulator:
        emu = Buildkite(api_token=TOKEN, rest_limit=1_000_000, rest_user_limit=1_000_000,
                        job_status_interval=1)
        emu.add_queue(BK_QUEUE)
        return emu

    def begin(self, emu: Any, work: Path, scenario: Scenario, t0: float) -> Driver:
        for folder in ("builds", "batches"):
            (work / folder).mkdir(exist_ok=True)
        config = work / "agent.cfg"
        config.write_text(f"token={emu.agent_token}\nendpoint={emu.url}/v3\n")
        config.chmod(0o600)
        return BuildkiteDriver(emu, work, plan_builds(scenario, t0))

    def active_until(self, scenario: Scenario, timeline: Timeline, t0: float) -> float:
        last = max((b.at for b in plan_builds(scenario, t0)), default=t0)
        return max(float(timeline.last_end), last + BK_LONGEST_WAIT + BK_LONGEST_RUN + 4)

    def slurm_settings(self, scenario: Scenario) -> dict[str, Any]:
        return {"timeout": BK_SLURM_TIMEOUT}

    def settings(self, url: str, token_file: Path, scenario: Scenario) -> dict[str, Any]:
        work = token_file.parent
        return {
            "mode": "rest", "queue": BK_QUEUE,
            "rest": {"url": url, "organization": "acme", "token": {"file": str(token_file)}},
            "agent": {"config": str(work / "agent.cfg"), "build_root": str(work / "builds")},
            "batch_dir": str(work / "batches"),
            "policy": {"defaults": {"partition": "main", "time": "00:10:00"}},
            "cancel_grace_seconds": 5, "taken_grace_seconds": 10,
        }

    def snapshot(self, emu: Any) -> tuple[Any, ...]:
        with emu.lock:
            return tuple(sorted((j.id, j.state) for j in emu.jobs.values()))

    def records(self, emu: Any) -> list[dict[str, Any]]:
        """Every Buildkite job: its build, rules, state and timeline (times included)."""
        with emu.lock:
            return [{"id": j.id, "build_id": j.build.id, "build": j.build.number,
                     "pipeline": j.build.pipeline.slug, "rules": list(j.agent_query_rules),
                     "state": j.state, "queue": j.queue_rule,
                     "timeline": [[e.at, e.kind, e.value] for e in j.timeline]}
                    for j in emu.jobs.values()]


SERVICES: dict[str, Service] = {s.name: s for s in (ClusterCockpit(), BankService(),
                                                    BuildkiteService())}


def price(partition: str) -> Decimal:
    return Decimal(BANK_PRICES[partition])
