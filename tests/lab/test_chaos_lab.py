"""The chaos scenario of tests/chaos once on the real lab (Slurm 24.11), shorter: to show that the
simulation is honest, the same faults against real ``squeue``/``sacct`` must leave the same
promises kept.

Two and a half to three minutes. 34 job ids are submitted on the lab over 90 s (seeded):
short ones (shorter than the 2 s poll), longer ones, a small array, one failing with exit 3, one
cancelled while running, one cancelled while pending (never eligible: ``--begin`` an hour on),
and one requeued with ``scontrol requeue`` and made eligible again at once. Meanwhile the real
CLI (``slurm-sync -c config.json``, the clustercockpit connector with default settings but url,
token and cluster) is launched every 2 s as cron would, whether or not the last cycle ended,
against the cc-backend 1.5.4 emulator with seeded faults (5xx, hangs, resets, 429); it is
``kill -9``-ed mid-cycle twice at seeded moments, stops for 20 s, and cc-backend is down for 20 s
(connections refused, then 503). Then the drain: faults off, every job over and sacct saying so,
cycles until cc-backend's tables and the outbox stop changing.

The truth is ``sacct --json -X -D -a`` on the lab (every run, a requeued job's first one too),
turned into a tests/chaos ``Timeline`` so that tests/chaos/check.py judges cc-backend's tables,
its request log and state.db exactly as it judges the simulated run. Two of its assertions have
nothing to read here: ``degraded`` and ``exit_codes`` need the stand-ins' call log, which real
Slurm does not keep; exit codes are checked for no internal error instead. The cores a record
carries are checked against ``squeue --json`` samples taken once a second during the run (a run
no sample saw, one shorter than a second, is counted, not checked). An earlier test's jobs that
squeue still holds (MinJobAge 300) are caught up by the first cycles and judged the same way.

    SLURM_SYNC_REQUIRE_LAB=1 .venv/bin/pytest -q tests/lab/test_chaos_lab.py
    CHAOS_LAB_SEED=5 CHAOS_LAB_KEEP=/tmp/chaos-lab ...   # another seed; keep the work folder
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.slurm.model import JobState
from slurm_sync.slurm.reader import ALL_STATES
from tests.chaos.check import check, figures
from tests.chaos.harness import Cycle, Result, _read_store
from tests.chaos.services import CC_CLUSTER, TOKEN
from tests.chaos.timeline import Job, Run, Scenario, Timeline
from tests.emulators.base import Faults
from tests.emulators.ccbackend import CCBackend
from tests.lab.conftest import LabCluster

pytestmark = pytest.mark.lab

SEED = int(os.environ.get("CHAOS_LAB_SEED", "11"))
POLL = 2.0
SYNCER_OUTAGE = 20.0
CC_OUTAGE = 20.0
KILLS = 2
SPAN = 90.0  # submissions over [0, SPAN] s
MAX_DRAIN = 120.0
FIRST_WINDOW = 10
STABLE_CYCLES = 4
EXIT_LOCKED = 75
#: judged here; ``degraded`` and ``exit_codes`` need the simulated Slurm's call log
JUDGED = ("lost", "duplicated", "invented", "not_stopped", "wrong_stop", "early_stop",
          "requeue", "wrong_fields", "refused", "outbox")


@dataclass
class Plan:
    """What happens when, seeded; times in seconds from t0."""

    seed: int
    submits: list[tuple[float, str, str, tuple[str, ...]]]  # (at, kind, script, sbatch options)
    requeue_at: float
    cancel_pending_at: float
    cancel_running_at: float
    syncer: tuple[float, float]
    cc: tuple[float, float]
    kills: list[float]
    kill_triggers: list[tuple[int, float]]

    @classmethod
    def make(cls, seed: int) -> Plan:
        rng = random.Random(seed)
        sh = "#!/bin/sh\n"
        submits: list[tuple[float, str, str, tuple[str, ...]]] = [
            (0.0, "requeue", sh + "sleep 25\n", ("--requeue", "--job-name=requeue")),
            (rng.uniform(4, 12), "pending", sh + "exit 0\n",
             ("--begin=now+3600", "--job-name=never")),
            (rng.uniform(2, 10), "cancel", sh + "sleep 300\n", ("--job-name=cancelme",)),
            (rng.uniform(5, SPAN - 10), "failed", sh + "sleep 1\nexit 3\n",
             ("--job-name=exit3",)),
            (rng.uniform(10, SPAN - 10), "array", sh + "sleep 3\n",
             ("--array=0-3", "--job-name=array")),
        ]
        for i in range(14):
            script = sh + ("exit 0\n" if rng.random() < 0.6 else "sleep 1\n")
            submits.append((rng.uniform(0, SPAN), "short", script, (f"--job-name=short{i}",)))
        for i in range(12):
            submits.append((rng.uniform(0, SPAN - 15), "long",
                            sh + f"sleep {rng.randint(4, 18)}\n", (f"--job-name=long{i}",)))
        submits.sort(key=lambda s: s[0])
        syncer_at = rng.uniform(40, 46)
        cc_at = syncer_at + SYNCER_OUTAGE + rng.uniform(5, 9)
        busy = [(syncer_at, syncer_at + SYNCER_OUTAGE), (cc_at, cc_at + CC_OUTAGE)]
        kills: list[float] = []
        while len(kills) < KILLS:
            at = rng.uniform(6, SPAN - 10)
            if any(a - 3 * POLL <= at <= b + 3 * POLL for a, b in busy):
                continue
            kills.append(at)
            busy.append((at, at))
        return cls(seed=seed, submits=submits, requeue_at=rng.uniform(18, 24),
                   cancel_pending_at=rng.uniform(16, 26), cancel_running_at=rng.uniform(40, 60),
                   syncer=(syncer_at, syncer_at + SYNCER_OUTAGE), cc=(cc_at, cc_at + CC_OUTAGE),
                   kills=sorted(kills),
                   kill_triggers=[(rng.randint(1, 6), rng.uniform(0.3, 1.5)) for _ in range(20)])


@dataclass
class Actions:
    """The jobs' side of the scenario, run in a thread: submits, the requeue, the cancels."""

    lab: LabCluster
    plan: Plan
    t0: float
    ids: dict[str, list[int]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def _sleep_until(self, at: float) -> None:
        delay = self.t0 + at - time.time()
        if delay > 0:
            time.sleep(delay)

    def run(self) -> None:
        try:
            steps: list[tuple[float, str, Any]] = [(s[0], "submit", s) for s in self.plan.submits]
            steps += [(self.plan.requeue_at, "requeue", None),
                      (self.plan.cancel_pending_at, "cancel_pending", None),
                      (self.plan.cancel_running_at, "cancel_running", None)]
            for at, what, item in sorted(steps, key=lambda s: s[0]):
                self._sleep_until(at)
                if what == "submit":
                    _, kind, script, options = item
                    self.ids.setdefault(kind, []).append(self.lab.submit(script, *options))
                elif what == "requeue":
                    (job,) = self.ids["requeue"]
                    self.lab.wait_state(job, "RUNNING", timeout=60)
                    self.lab.requeue(job)
                elif what == "cancel_pending":
                    (job,) = self.ids["pending"]
                    assert self.lab.state(job) == "PENDING", self.lab.show(job)
                    self.lab.cmd("scancel", str(job))
                else:
                    (job,) = self.ids["cancel"]
                    self.lab.wait_state(job, "RUNNING", timeout=60)
                    self.lab.cmd("scancel", str(job))
            # a job cancelled while pending and never eligible is not in sacct -S/-E at all
            mine = {j for kind, js in self.ids.items() for j in js if kind != "pending"}
            self.lab.wait("every job of the scenario to end", lambda: not self.lab.cmd(
                "squeue", "-h", "-t", "PD,R,CG,S", "-o", "%i").strip(), timeout=180)
            self.lab.wait("sacct to show every end",
                          lambda: _unended(self.lab, mine, time.time()) == set(), timeout=60)
        except Exception as exc:  # reported by the test
            self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            self.done.set()


class CoreSampler:
    """``squeue --json`` once a second through the project's reader: which cores each run held,
    to check the hwthreads cc-backend got (cpu_ids per (job id, start))."""

    def __init__(self, lab: LabCluster) -> None:
        self.reader = lab.reader()
        self.cores: dict[tuple[int, int], list[int]] = {}
        self.stop = threading.Event()
        self.samples = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                for job in self.reader.squeue(ALL_STATES).jobs:
                    if job.start_time and job.allocations and job.allocations[0].cpu_ids:
                        self.cores.setdefault((job.job_id, job.start_time),
                                              sorted(job.allocations[0].cpu_ids))
                self.samples += 1
            except Exception:  # a missed sample only checks less
                pass
            self.stop.wait(1.0)


def _number(value: Any) -> int:
    if isinstance(value, dict):
        return int(value.get("number") or 0) if value.get("set", True) else 0
    return int(value or 0)


def _sacct(lab: LabCluster, since: float) -> list[dict[str, Any]]:
    doc = json.loads(lab.cmd("sacct", "--json", "-X", "-D", "-a", "-S",
                             time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(since)),
                             "-E", "now"))
    return list(doc["jobs"])


def _unended(lab: LabCluster, ids: set[int], since: float) -> set[int]:
    """Job ids of ``ids`` that sacct does not show ended yet (any run without an end)."""
    seen: set[int] = set()
    open_: set[int] = set()
    for rec in _sacct(lab, since - 900):
        if rec["job_id"] in ids:
            seen.add(rec["job_id"])
            if not _number(rec["time"]["end"]):
                open_.add(rec["job_id"])
    return open_ | (ids - seen)


def _state_of(rec: dict[str, Any]) -> str:
    """The run's end state: 24.11 shows a requeued job's earlier run as PENDING,REQUEUED."""
    words = rec["state"]["current"]
    words = words if isinstance(words, list) else [words]
    if "REQUEUED" in words:
        return "REQUEUED"
    return str(next(w for w in words if w in JobState.__members__))


def truth(records: list[dict[str, Any]], cores: dict[tuple[int, int], list[int]],
          held: dict[tuple[int, int], list[int]], cluster: str, t0: float) -> Timeline:
    """sacct -D's records as a chaos Timeline: one Job per job id, one Run per record that got
    nodes. Cores of a run squeue never showed are taken from cc-backend's record (``held``):
    not checked, counted by the test."""
    jobs: dict[int, Job] = {}
    for rec in sorted(records, key=lambda r: (r["job_id"], _number(r["time"]["start"]))):
        job_id = rec["job_id"]
        array = rec.get("array") or {}
        task = array.get("task_id")
        job = jobs.get(job_id)
        if job is None:
            job = jobs[job_id] = Job(
                job_id=job_id, name=rec["name"], user=rec["user"], account=rec["account"],
                partition=rec["partition"], submit=_number(rec["time"]["submission"]),
                cpus_per_node=1, nodes=1, gpus_per_node=0,
                time_limit=_number(rec["time"]["limit"]),
                array_job_id=_number(array.get("job_id")),
                array_task_id=_number(task) if task and task.get("set") else None)
        state = _state_of(rec)
        start, end = _number(rec["time"]["start"]), _number(rec["time"]["end"])
        nodes = rec.get("nodes") or ""
        if not start or nodes in ("", "None assigned"):
            if state == "CANCELLED" and not job.runs:
                job.cancel_at = end  # cancelled while pending: never ran
            continue
        key = (job_id, start)
        run_cores = cores.get(key) or held.get(key) or []
        job.runs.append(Run(start=start, end=end, state=state,
                            exit_code=_number(rec["exit_code"]["return_code"]), signal=0,
                            hosts=[nodes], cores=[run_cores], gpus=[[]], start_lag=0,
                            end_lag=0))
    for job in jobs.values():
        for before, after in zip(job.runs, job.runs[1:]):
            job.requeue_gaps.append(after.start - before.end)
    return Timeline(seed=SEED, t0=t0, cluster=cluster, min_job_age=300,
                    jobs=list(jobs.values()))


def _slurm_sync() -> str:
    return str(Path(sys.executable).parent / "slurm-sync")


@pytest.fixture
def work(tmp_path: Path) -> Iterator[Path]:
    keep = os.environ.get("CHAOS_LAB_KEEP")
    if not keep:
        yield tmp_path
        return
    path = Path(keep) / f"seed-{SEED}"
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    yield path


@pytest.mark.parametrize("lab", ["24.11"], indirect=True)
def test_chaos_scenario_on_the_real_lab(lab: LabCluster, work: Path) -> None:
    started = time.time()
    plan = Plan.make(SEED)
    emu = CCBackend("1.5.4", clusters={CC_CLUSTER: {"subclusters": {"main": [lab.node]}}},
                    tokens={TOKEN}, commit_interval=5.0)
    emu.start()
    token = work / "cc-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = work / "config.json"
    config.write_text(json.dumps({
        "state_dir": str(work / "state"),
        # earlier tests' jobs (still in squeue for MinJobAge) are judged like ours if seen
        "first_window_seconds": FIRST_WINDOW,
        "slurm": {"bin_dir": lab.bin_dir,
                  "state_save_location": str(lab.info["state_save_location"])},
        "connectors": {"clustercockpit": {"url": emu.url, "token": {"file": str(token)},
                                          "cluster": CC_CLUSTER}},
    }, indent=1))
    (work / "cycles").mkdir(exist_ok=True)
    store = work / "state" / "state.db"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SLURM_CONF", None)
    cycles: list[Cycle] = []
    procs: dict[int, subprocess.Popen[bytes]] = {}
    kill_plan: dict[int, tuple[int, float, int]] = {}
    triggers = iter(plan.kill_triggers)
    kills = list(plan.kills)
    kills_done = 0
    stable: list[tuple[tuple[Any, ...], int, float]] = []
    windows: dict[str, list[float]] = {}

    def seen() -> int:
        with emu.lock:
            return len(emu.seen)

    def snapshot() -> tuple[Any, ...]:
        with emu.lock:
            return tuple(sorted((r["jobId"], r["startTime"], r["jobState"])
                                for r in emu.all_jobs()))

    def launch(phase: str, kill: bool) -> None:
        index = len(cycles)
        with open(work / "cycles" / f"{index:04d}.out", "wb") as out, \
                open(work / "cycles" / f"{index:04d}.err", "wb") as err:
            proc = subprocess.Popen([_slurm_sync(), "-c", str(config)], stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, env=env, cwd=work)
        cycles.append(Cycle(index, proc.pid, time.time(), phase))
        procs[index] = proc
        if kill:
            n, delay = next(triggers)
            kill_plan[index] = (n, delay, seen())

    def reap() -> None:
        nonlocal kills_done
        now = time.time()
        for index, proc in list(procs.items()):
            cycle = cycles[index]
            code = proc.poll()
            if code is None and index in kill_plan:
                n, delay, seen0 = kill_plan[index]
                if seen() - seen0 >= n or now - cycle.launched >= delay:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    cycle.killed = True
                    kills_done += 1
                    kills.pop(0)
                    code = proc.returncode
            if code is None:
                continue
            cycle.ended, cycle.exit_code = time.time(), code
            del procs[index]
            kill_plan.pop(index, None)
            if cycle.phase == "drain" and not cycle.killed and code != EXIT_LOCKED:
                depth = len(_read_store(store)[1])
                stable.append((snapshot(), depth, cycle.launched))

    # one quiet cycle first: the connector's watermark starts before the first job
    first_at = time.time()
    first = subprocess.run([_slurm_sync(), "-c", str(config)], capture_output=True, env=env,
                           timeout=120)
    assert first.returncode == 0, first.stderr.decode()
    sampler = CoreSampler(lab)
    sampler.thread.start()
    t0 = time.time() + 1
    actions = Actions(lab, plan, t0)
    worker = threading.Thread(target=actions.run, daemon=True)
    worker.start()
    emu.faults = Faults(latency=0.003, error_share=0.08, timeout_share=0.03, hang=2.0,
                        reset_share=0.03, rate_limit=60, rate_window=1.0, seed=SEED)
    next_tick = t0
    cc_phase = "up"
    drain_start: float | None = None
    settled_after = float("inf")
    drained = False
    try:
        while True:
            now = time.time()
            reap()
            if cc_phase == "up" and now >= t0 + plan.cc[0]:
                emu.outage(None, "refuse")
                cc_phase = "refuse"
            elif cc_phase == "refuse" and now >= t0 + plan.cc[0] + CC_OUTAGE * 2 / 3:
                emu.outage(None, "error")
                cc_phase = "error"
            elif cc_phase == "error" and now >= t0 + plan.cc[1]:
                emu.restore()
                cc_phase = "done"
            if drain_start is None and actions.done.is_set() and cc_phase == "done" \
                    and now >= t0 + plan.syncer[1]:
                drain_start = now
                settled_after = now + POLL
                emu.faults = Faults()
                windows["drain"] = [now, now]
            if now >= next_tick:
                next_tick += POLL
                if not t0 + plan.syncer[0] <= now < t0 + plan.syncer[1]:
                    kill = (drain_start is None and bool(kills) and now >= t0 + kills[0]
                            and not kill_plan)
                    launch("drain" if drain_start is not None else "active", kill)
            if drain_start is not None:
                recent = [s for s in stable if s[2] >= settled_after][-STABLE_CYCLES:]
                if (len(recent) == STABLE_CYCLES and all(s[0] == recent[0][0] for s in recent)
                        and all(s[1] == 0 for s in recent)):
                    drained = True
                    break
                if now > drain_start + MAX_DRAIN:
                    break
            time.sleep(0.02)
        deadline = time.time() + 60
        while procs and time.time() < deadline:
            reap()
            time.sleep(0.05)
        windows["drain"][1] = time.time()
        sampler.stop.set()
        final = subprocess.run([_slurm_sync(), "-c", str(config), "status", "--json"],
                               capture_output=True, env=env, timeout=60)
        deliveries, outbox = _read_store(store)
        with emu.lock:
            records = [dict(r) for r in emu.all_jobs()]
            requests: list[dict[str, Any]] = [
                {"method": s.method, "path": s.path, "status": s.status, "at": s.at,
                 "received": s.received, "body": s.body.decode("utf-8", "replace")}
                for s in emu.seen]
        sacct = _sacct(lab, started - 900)
    finally:
        for proc in procs.values():
            proc.kill()
        sampler.stop.set()
        emu.stop()

    ids = actions.ids
    # sbatch --array gives the array's id; Slurm splits the tasks off under ids of their own
    ids["array"] = sorted({r["job_id"] for r in sacct
                           if _number((r.get("array") or {}).get("job_id")) in ids["array"]}
                          | set(ids["array"]))
    mine = {j for js in ids.values() for j in js}
    cluster = next((d["key"].split("/")[0] for d in deliveries), CC_CLUSTER)
    held = {(r["jobId"], r["startTime"]): sorted((r.get("resources") or [{}])[0]
                                                 .get("hwthreads") or [])
            for r in records}
    recorded = {r["jobId"] for r in records}
    # An earlier test's job that squeue still shows (MinJobAge) may get records too; of its
    # runs, those that ended before this test's first sacct window are no business of ours.
    horizon = first_at - FIRST_WINDOW
    seen_runs = {(r["jobId"], r["startTime"]) for r in records}
    timeline = truth([r for r in sacct if r["job_id"] in mine or (
        r["job_id"] in recorded and ((r["job_id"], _number(r["time"]["start"])) in seen_runs
                                     or _number(r["time"]["end"]) >= horizon))],
                     sampler.cores, held, cluster, t0)
    for job_id in ids.get("pending", []):
        if job_id not in {j.job_id for j in timeline.jobs}:  # not in sacct: never eligible
            timeline.jobs.append(Job(job_id=job_id, name="never", user="alice", account="lab",
                                     partition="main", submit=int(t0), cpus_per_node=1,
                                     nodes=1, gpus_per_node=0, time_limit=0,
                                     cancel_at=int(t0 + plan.cancel_pending_at)))
    scenario = Scenario(seed=SEED, jobs=len(mine), span=SPAN, kills=KILLS,
                        syncer_outage=SYNCER_OUTAGE, cc_outage=CC_OUTAGE, squeue_failures=0,
                        sacct_empty=0, slow_answers=0, min_job_age=300, max_drain=MAX_DRAIN)
    windows.update(syncer_outage=[t0 + plan.syncer[0], t0 + plan.syncer[1]],
                   cc_outage=[t0 + plan.cc[0], t0 + plan.cc[1]])
    result = Result(
        scenario=scenario, timeline=timeline, work=work, api_version="1.5", cycles=cycles,
        records=records, requests=requests, calls=[], deliveries=deliveries, outbox=outbox,
        final_status=final.stdout.decode(), final_status_code=final.returncode,
        windows=windows, kills=kills_done, wall=time.time() - started, drained=drained)
    findings = check(result)
    numbers = figures(result, findings)
    numbers["wall_seconds"] = round(time.time() - started, 1)
    runs = {(j.job_id, r.start) for j, _, r in timeline.runs()}
    numbers["hwthreads_checked"] = sum(1 for k in runs if k in sampler.cores)
    numbers["squeue_samples"] = sampler.samples
    # figures of this test's own jobs only (an earlier test's jobs can be caught up too)
    ended = {(j.job_id, r.start): r.end for j, _, r in timeline.runs() if j.job_id in mine}
    delays = sorted({(b["jobId"], b["startTime"]): q["received"] - ended[(b["jobId"],
                                                                           b["startTime"])]
                     for q in requests if q["path"] == "/api/jobs/stop_job/"
                     and q["status"] == 200 and (b := json.loads(q["body"] or "{}"))
                     and (b.get("jobId"), b.get("startTime")) in ended}.values())
    numbers.update(my_jobs=len(mine), my_runs=len(ended),
                   stop_delay_p50=round(delays[len(delays) // 2], 1) if delays else None,
                   stop_delay_max=round(delays[-1], 1) if delays else None)
    (work / "figures.json").write_text(json.dumps(numbers, indent=1))
    (work / "sacct.json").write_text(json.dumps(sacct))
    (work / "records.json").write_text(json.dumps(records, default=str))
    (work / "requests.json").write_text(json.dumps(requests))
    (work / "cycles.json").write_text(json.dumps([c.__dict__ for c in cycles], default=str))
    (work / "findings.json").write_text(json.dumps(
        {name: [str(f) for f in found] for name, found in findings.items()}, indent=1))
    print(json.dumps(numbers))
    assert not actions.errors, actions.errors

    # the scenario happened (not a vacuous pass)
    by_id = {j.job_id: j for j in timeline.jobs}
    (requeued,) = ids["requeue"]
    (pending,) = ids["pending"]
    (cancelled,) = ids["cancel"]
    (failed,) = ids["failed"]
    assert kills_done == KILLS, numbers
    assert numbers["faults"]["service_5xx"] and (
        numbers["faults"]["service_hang"] + numbers["faults"]["service_reset"]), numbers
    assert drained, f"cc-backend's tables or the outbox still changed: {numbers}"
    assert len(mine) == 34 and mine <= set(by_id), (mine, sorted(by_id))
    assert [r.state for r in by_id[requeued].runs] == ["REQUEUED", "COMPLETED"], by_id[requeued]
    assert not by_id[pending].runs, by_id[pending]
    assert by_id[cancelled].runs[-1].state == "CANCELLED"
    assert (by_id[failed].runs[-1].state, by_id[failed].runs[-1].exit_code) == ("FAILED", 3)
    assert len(ids["array"]) == 4 and len({by_id[j].array_job_id for j in ids["array"]}) == 1
    assert numbers["short_runs"] >= 8, numbers

    # the promises, as tests/chaos/check.py judges them
    broken = {name: [str(f) for f in findings[name][:8]] for name in JUDGED if findings[name]}
    assert not broken, f"seed {SEED} ({work}): {json.dumps(broken, indent=1)}"
    codes = Counter(c.exit_code for c in cycles if not c.killed)
    assert not set(codes) - {0, 1, 3, 4, 5, EXIT_LOCKED}, codes  # no 70: no internal error

    # the requeued job's second run: its own record (still in 1.5's job_cache when it came) or
    # refused by cc-backend's 24 h duplicate rule, recorded as such and named by status
    second = by_id[requeued].runs[1]
    status = json.loads(final.stdout)
    assert final.returncode == 0, final.stderr
    refusals = {r["key"]: r for r in status["refusals"]}
    key = f"{cluster}/{requeued}/{second.start}"
    if not any(r["jobId"] == requeued and r["startTime"] == second.start for r in records):
        assert key in refusals, (key, status["refusals"])
        assert "24 h" in refusals[key]["detail"] or "duplicate" in refusals[key]["detail"], \
            refusals[key]
    assert set(refusals) <= {key}, status["refusals"]
    (row,) = status["connectors"]
    assert row["outbox"] == 0 and not row["behind"], row
    assert not row["ended_unstopped"] and not row["held_by_guard"], row
