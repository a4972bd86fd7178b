"""Run the real ``slurm-sync`` CLI like cron against the simulated Slurm and a faulty service.

    result = run_scenario(Scenario.short(seed=7), work=Path("/tmp/chaos-7"))
    findings = check(result)              # check.py: what went wrong, per assertion

The service is cc-backend (``Scenario.service == "clustercockpit"``, the default), the myBRC
allocation service (``"bank"``) or Buildkite (``"buildkite"``), see services.py. What happens, in
real time (the timeline is compressed: jobs of 0-40 s, a cycle every 2 s):
- a cycle (``.venv/bin/slurm-sync -c config.json``, the one connector with default settings but
  url, token, cluster or prices, bin_dir and state_dir) is launched every ``poll`` seconds,
  whether or not the last one has finished, as cron would; each cycle's exit code, output and
  the ``slurm-sync status`` that follows it are kept;
- at seeded moments a cycle is killed with SIGKILL mid-cycle: after its n-th request reached the
  service (so between the service's commit and slurm-sync's), or after a short delay when it
  sends nothing;
- the syncer stops for ``syncer_outage`` seconds; the service is down for ``cc_outage`` seconds
  (connections refused, then 503 for the last third), and otherwise faults a share of requests
  (5xx, 429 with Retry-After, hangs, resets);
- ``squeue`` fails twice (exit 1, slurm_load_jobs error), ``sacct`` answers once with no jobs,
  and answers come slow (stale) once or twice;
- then the drain: faults off, every job ends, and once squeue has forgotten the last of them
  (MinJobAge), cycles go on until the outbox is empty and the service's records have not changed
  for five cycles (or ``max_drain`` runs out).

Against Buildkite the connector submits the jobs itself: builds arrive over the run (and some
are cancelled), the stand-in sbatch and scancel keep what it submits in the simulated Slurm
(submits.py) and the service's driver starts those jobs and runs their agents (bkagent.py).
Besides the faults above, sbatch fails (nothing submitted), loses its answer (submitted, yet it
failed or hung past slurm.timeout) and has its caller killed right after answering (between
sbatch and the commit of the cycle: such kills count among the run's kills), and scancel
fails, each at seeded moments (each taken by the next call).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tests.chaos import slurmsim
from tests.chaos.services import BK_SLURM_TIMEOUT, CC_CLUSTER, SERVICES, TOKEN, bank_users
from tests.chaos.timeline import USERS, Scenario, Timeline, build_timeline
from tests.emulators.base import Faults

__all__ = ["CC_CLUSTER", "Cycle", "Result", "load_result", "run_scenario"]

ROOT = Path(__file__).resolve().parents[2]
LEAD_IN = 4.0
STABLE_CYCLES = 5
EXIT_LOCKED = 75


@dataclass
class Cycle:
    """One launch of ``slurm-sync``."""

    index: int
    pid: int
    launched: float
    phase: str
    ended: float | None = None
    exit_code: int | None = None
    killed: bool = False
    armed: list[str] = field(default_factory=list)
    status: str = ""
    status_code: int | None = None
    status_done: float | None = None  # when the status after it had ended

    @property
    def alive_until(self) -> float:
        return self.ended if self.ended is not None else float("inf")


@dataclass
class Result:
    """What one scenario did and what was left: everything the checks read."""

    scenario: Scenario
    timeline: Timeline
    work: Path
    api_version: str
    cycles: list[Cycle]
    records: list[dict[str, Any]]  # the service's records at the end (cc: job and job_cache)
    requests: list[dict[str, Any]]  # every request the service saw
    calls: list[dict[str, Any]]  # every stand-in Slurm call
    deliveries: list[dict[str, Any]]  # state.db deliveries at the end
    outbox: list[dict[str, Any]]  # state.db outbox at the end
    final_status: str
    final_status_code: int
    windows: dict[str, list[float]]  # name -> [start, end] of the outages, the drain...
    kills: int
    wall: float
    drained: bool
    armed_left: dict[str, list[str]] = field(default_factory=dict)
    service: str = "clustercockpit"
    usage: dict[str, str] = field(default_factory=dict)  # bank: account (and account/user) SU
    extra: dict[str, Any] = field(default_factory=dict)  # the service driver's (buildkite)

    def summary(self) -> dict[str, Any]:
        return {"scenario": asdict(self.scenario), "work": str(self.work),
                "cycles": len(self.cycles), "kills": self.kills, "wall": round(self.wall, 1),
                "drained": self.drained, "windows": self.windows}


def _config(work: Path, name: str, settings: dict[str, Any],
            slurm: dict[str, Any] | None = None) -> Path:
    config = {
        "state_dir": str(work / "state"),
        "slurm": {"bin_dir": str(work / "bin"), **(slurm or {})},
        "connectors": {name: settings},
    }
    path = work / "config.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def _read_store(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """deliveries and outbox of state.db, read-only."""
    if not path.exists():
        return [], []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        conn.row_factory = sqlite3.Row
        deliveries = [dict(r) for r in conn.execute("SELECT * FROM deliveries")]
        outbox = [dict(r) for r in conn.execute("SELECT * FROM outbox")]
    finally:
        conn.close()
    return deliveries, outbox


def _outbox_depth(path: Path) -> int:
    try:
        return len(_read_store(path)[1])
    except sqlite3.Error:
        return -1


def _product_path(product: Path, work: Path) -> str:
    """The PYTHONPATH that runs the slurm-sync of ``product`` (a checkout, or a ``git archive``
    of a commit): its folders as the import root they install as, ``slurm_sync`` (sync/, with
    connectors/ as slurm_sync.connectors), through a tree of links in ``work``, ahead of the
    installed (editable) one; and ``product`` itself, for a commit from before that root."""
    if not (product / "sync" / "cli.py").is_file():
        raise FileNotFoundError(f"{product} holds no slurm-sync (sync/cli.py)")
    links = work / "product"
    if links.exists():
        shutil.rmtree(links)
    root = links / "slurm_sync"
    root.mkdir(parents=True)
    for entry in (product / "sync").iterdir():
        if entry.name != "__pycache__":
            (root / entry.name).symlink_to(entry.resolve())
    if (product / "connectors").is_dir():
        (root / "connectors").symlink_to((product / "connectors").resolve())
    return os.pathsep.join([str(links), str(product.resolve())])


def _slurm_sync() -> str:
    return str(Path(sys.executable).parent / "slurm-sync")


class _Schedule:
    """Seeded moments of the faults, in epoch seconds."""

    def __init__(self, scenario: Scenario, t0: float, last_end: float) -> None:
        rng = random.Random(scenario.seed * 7919 + 17)
        span = max(scenario.span, 20.0)
        self.syncer = (t0 + 0.22 * span + rng.uniform(0, 0.08 * span), 0.0)
        self.syncer = (self.syncer[0], self.syncer[0] + scenario.syncer_outage)
        cc_start = max(self.syncer[1] + 4, t0 + 0.5 * span + rng.uniform(0, 0.08 * span))
        self.cc = (cc_start, cc_start + scenario.cc_outage)
        self.active_end = float(last_end)
        busy = [self.syncer, self.cc]

        def moments(count: int) -> list[float]:
            """``count`` moments while jobs run, away from the outages and from each other
            (closer together when the time is short)."""
            out: list[float] = []
            gap = 3 * scenario.poll
            tries = 0
            while len(out) < count:
                tries += 1
                if tries % 500 == 0:
                    gap /= 2
                at = rng.uniform(t0 + 4, max(t0 + 8, last_end - 6))
                if tries < 5000 and any(a - gap <= at <= b + gap for a, b in busy):
                    continue
                out.append(at)
                busy.append((at, at))
            return sorted(out)

        self.kills = moments(scenario.kills)
        self.squeue_fail = moments(scenario.squeue_failures)
        self.sacct_empty = moments(scenario.sacct_empty)
        self.slow = [(at, "squeue" if i % 2 == 0 else "sacct")
                     for i, at in enumerate(moments(scenario.slow_answers))]
        self.kill_trigger = [(rng.randint(1, 6), rng.uniform(0.3, 1.5))
                             for _ in range(scenario.kills * 10)]
        # Buildkite: sbatch's and scancel's faults, each taken by the next call after its moment
        hang = f"hang:{BK_SLURM_TIMEOUT + 4:g}"
        faults = [("sbatch", "fail")] * scenario.sbatch_failures + [
            ("sbatch", "lost")] * scenario.sbatch_lost + [("sbatch", hang)] * (
            scenario.sbatch_hangs) + [("scancel", "fail")] * scenario.scancel_failures
        kinds = faults + [("sbatch", "kill")] * scenario.sbatch_kills
        # while builds still come (sbatch is called only then), outages or not: a fault armed
        # during one waits for the next call
        when = [rng.uniform(t0 + 2, t0 + max(4.0, 0.8 * scenario.span)) for _ in kinds]
        self.control = sorted(
            (at, command, f"kill:{rng.uniform(0.0, 0.03):.3f}" if fault == "kill" else fault)
            for at, (command, fault) in zip(when, rng.sample(kinds, len(kinds))))


def run_scenario(scenario: Scenario, work: Path, *, log: Any = None,
                 product: Path | None = None) -> Result:
    """Run ``scenario`` in ``work`` (made if missing) and return what happened. ``product``:
    another checkout of slurm-sync to run (an older commit, to see what the suite finds there);
    by default the installed one."""
    say = log or (lambda *_: None)
    started = time.time()
    work = work.resolve()  # the config's paths must be absolute, and cycles run in work
    work.mkdir(parents=True, exist_ok=True)
    (work / "cycles").mkdir(exist_ok=True)
    t0 = started + LEAD_IN
    service = SERVICES[scenario.service]
    users = bank_users() if service.name == "bank" else list(USERS)
    submitting = service.name == "buildkite"  # the connector submits; the timeline is others'
    timeline = build_timeline(replace(scenario, jobs=scenario.background_jobs) if submitting
                              else scenario, t0, users=users)
    slurmsim.install(work, timeline)
    emu: Any = service.make(scenario, users)
    emu.start()
    token = work / "service-token"
    token.write_text(TOKEN + "\n")
    token.chmod(0o600)
    config = _config(work, service.name, service.settings(emu.url, token, scenario),
                     service.slurm_settings(scenario))
    driver = service.begin(emu, work, scenario, t0)
    store = work / "state" / "state.db"
    last_end = max(timeline.last_end + max(
        (r.end_lag for _, _, r in timeline.runs()), default=0) + 2,
        service.active_until(scenario, timeline, t0))
    plan = _Schedule(scenario, t0, last_end)
    # slurm-sync may act on a job only once squeue has forgotten it (a stop held back while
    # squeue alone says the run ended): "nothing changes" counts only after that. The
    # Buildkite connector reads only our jobs' active states: once they are over.
    settled_after = (last_end + 2 * scenario.poll if submitting
                     else timeline.last_end + timeline.min_job_age + 2 * scenario.poll)
    windows: dict[str, list[float]] = {"syncer_outage": list(plan.syncer),
                                       "cc_outage": list(plan.cc)}
    say(f"seed {scenario.seed}: {len(timeline.jobs)} jobs, {len(timeline.runs())} runs, "
        f"jobs end by +{last_end - t0:.0f} s; syncer stops at +{plan.syncer[0] - t0:.0f} s, "
        f"{service.name} down at +{plan.cc[0] - t0:.0f} s")
    cycles: list[Cycle] = []
    procs: dict[int, subprocess.Popen[bytes]] = {}
    status_procs: dict[int, tuple[subprocess.Popen[bytes], Path]] = {}
    kill_plan: dict[int, tuple[int, float, int]] = {}  # cycle index -> (n, delay, seen at launch)
    kills_done = 0
    control_armed: list[list[Any]] = []  # [at, command, fault] of sbatch's and scancel's
    triggers = iter(plan.kill_trigger)
    next_tick = t0 - scenario.poll
    cc_phase = "up"
    faults_on = False
    drain_start: float | None = None
    stable: list[tuple[Any, ...]] = []
    drained = False
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("SLURM_CONF", None)
    if product is not None:
        env["PYTHONPATH"] = _product_path(product, work)

    def snapshot() -> tuple[Any, ...]:
        return (*service.snapshot(emu), *driver.snapshot())

    def launch(phase: str, armed: list[str], kill: bool) -> None:
        index = len(cycles)
        out = open(work / "cycles" / f"{index:04d}.out", "wb")  # noqa: SIM115
        err = open(work / "cycles" / f"{index:04d}.err", "wb")  # noqa: SIM115
        proc = subprocess.Popen([_slurm_sync(), "-c", str(config)], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, env=env, cwd=work)
        out.close()
        err.close()
        cycles.append(Cycle(index, proc.pid, time.time(), phase, armed=armed))
        procs[index] = proc
        if kill:
            n, delay = next(triggers)
            kill_plan[index] = (n, delay, len(emu.seen))

    def reap() -> None:
        nonlocal kills_done
        now = time.time()
        for index, proc in list(procs.items()):
            cycle = cycles[index]
            code = proc.poll()
            if code is None and index in kill_plan:
                n, delay, seen0 = kill_plan[index]
                if len(emu.seen) - seen0 >= n or now - cycle.launched >= delay:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    cycle.killed = True
                    kills_done += 1
                    if plan.kills:
                        plan.kills.pop(0)
                    code = proc.returncode
            if code is None:
                continue
            if code == -signal.SIGKILL and not cycle.killed:
                # killed by the stand-in sbatch right after it answered (kill:D)
                cycle.killed = True
                cycle.armed.append("sbatch:kill")
                kills_done += 1
            cycle.ended = time.time()
            cycle.exit_code = code
            del procs[index]
            kill_plan.pop(index, None)
            if cycle.phase == "drain" and not cycle.killed and code != EXIT_LOCKED:
                stable.append((index, snapshot(), _outbox_depth(store), cycle.launched))
            if not cycle.killed and code != EXIT_LOCKED:
                path = work / "cycles" / f"{index:04d}.status"
                with open(path, "wb") as out:
                    status_procs[index] = (subprocess.Popen(
                        [_slurm_sync(), "-c", str(config), "status"], stdout=out,
                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env), path)
        for index, (sproc, path) in list(status_procs.items()):
            if sproc.poll() is not None:
                cycles[index].status = path.read_text(errors="replace")
                cycles[index].status_code = sproc.returncode
                cycles[index].status_done = time.time()
                del status_procs[index]

    try:
        while True:
            now = time.time()
            reap()
            driver.tick(now)
            # cc-backend's faults and outage
            if not faults_on and now >= t0 and drain_start is None:
                emu.faults = Faults(
                    latency=scenario.cc_latency, error_share=scenario.cc_error_share,
                    timeout_share=scenario.cc_timeout_share, hang=scenario.cc_hang,
                    rate_limit=scenario.cc_rate_limit, rate_window=1.0,
                    reset_share=scenario.cc_reset_share, seed=scenario.seed)
                faults_on = True
            if cc_phase == "up" and now >= plan.cc[0] and scenario.cc_outage > 0:
                emu.outage(None, "refuse")
                cc_phase = "refuse"
                say(f"+{now - t0:.0f} s: {service.name} refuses connections")
            elif cc_phase == "refuse" and now >= plan.cc[0] + scenario.cc_outage * 2 / 3:
                emu.outage(None, "error")
                cc_phase = "error"
            elif cc_phase == "error" and now >= plan.cc[1]:
                emu.restore()
                cc_phase = "done"
                say(f"+{now - t0:.0f} s: {service.name} is back")
            # the drain: faults off once every job has ended and sacct has said so
            if drain_start is None and now >= plan.active_end and cc_phase in ("up", "done"):
                drain_start = now
                emu.faults = Faults()
                plan.control = []
                left = slurmsim.disarm(work, ("sbatch", "scancel"))
                for item in control_armed:
                    if item[1] in left and item[2] in left[item[1]]:
                        left[item[1]].remove(item[2])
                        item.append("disarmed")
                windows["drain"] = [now, now]
                say(f"+{now - t0:.0f} s: drain ({len(cycles)} cycles so far, "
                    f"{kills_done} kills)")
            if now >= next_tick:
                next_tick += scenario.poll
                if plan.syncer[0] <= now < plan.syncer[1]:
                    continue
                armed: list[str] = []
                kill = False
                if drain_start is None:
                    if plan.kills and now >= plan.kills[0] and not kill_plan:
                        kill = True
                    else:
                        for queue, command, fault in (
                                (plan.squeue_fail, "squeue", "fail"),
                                (plan.sacct_empty, "sacct", "empty")):
                            if queue and now >= queue[0] and not armed:
                                queue.pop(0)
                                slurmsim.arm(work, command, fault)
                                armed.append(f"{command}:{fault}")
                        if plan.slow and now >= plan.slow[0][0] and not armed:
                            _, command = plan.slow.pop(0)
                            slurmsim.arm(work, command, f"slow:{scenario.slow_seconds:g}")
                            armed.append(f"{command}:slow")
                # sbatch's and scancel's faults: taken by whichever cycle calls it next
                while drain_start is None and plan.control and now >= plan.control[0][0]:
                    _, command, fault = plan.control.pop(0)
                    slurmsim.arm(work, command, fault)
                    control_armed.append([now, command, fault])
                # a planned kill whose cycle ends before the trigger moves to the next cycle
                launch("drain" if drain_start is not None else "active", armed, kill)
            if drain_start is not None and now >= settled_after:
                recent = [s for s in stable if s[3] >= settled_after][-STABLE_CYCLES:]
                if (len(recent) == STABLE_CYCLES and all(s[1] == recent[0][1] for s in recent)
                        and all(s[2] == 0 for s in recent) and not driver.busy()):
                    drained = True
                    break
                if now > drain_start + scenario.max_drain:
                    break
            time.sleep(0.02)
        # a last cycle's stragglers
        deadline = time.time() + 60
        while (procs or status_procs) and time.time() < deadline:
            reap()
            time.sleep(0.05)
        if "drain" in windows:
            windows["drain"][1] = time.time()
        final = subprocess.run([_slurm_sync(), "-c", str(config), "status"],
                               capture_output=True, env=env, check=False)
        deliveries, outbox = _read_store(store)
        records = service.records(emu)
        extra = driver.extra()
        if control_armed:
            extra["control_armed"] = control_armed
        usage = service.usage(emu, users)
        requests = [{"method": s.method, "path": s.path, "status": s.status, "at": s.at,
                     "received": s.received, "body": s.body.decode("utf-8", "replace")}
                    for s in emu.seen]
    finally:
        for proc in procs.values():
            proc.kill()
        emu.stop()
    result = Result(
        scenario=scenario, timeline=timeline, work=work,
        api_version=service.api_version(scenario), cycles=cycles, records=records,
        requests=requests, calls=slurmsim.calls(work), deliveries=deliveries, outbox=outbox,
        final_status=(final.stdout + final.stderr).decode("utf-8", "replace"),
        final_status_code=final.returncode, windows=windows, kills=kills_done,
        wall=time.time() - started, drained=drained,
        armed_left=slurmsim.pending_faults(work), service=service.name, usage=usage,
        extra=extra)
    _save(result)
    return result


def load_result(work: Path) -> Result:
    """The Result a finished run left in ``work`` (result.json, requests.json, calls.jsonl,
    timeline.json), to check it again without running it again."""
    data = json.loads((work / "result.json").read_text())
    summary = data["summary"]
    scenario = Scenario(**summary["scenario"])
    timeline = Timeline.from_dict(json.loads((work / "timeline.json").read_text()))
    return Result(
        scenario=scenario, timeline=timeline, work=work,
        api_version=SERVICES[scenario.service].api_version(scenario),
        cycles=[Cycle(**c) for c in data["cycles"]], records=data["records"],
        requests=json.loads((work / "requests.json").read_text()),
        calls=slurmsim.calls(work), deliveries=data["deliveries"], outbox=data["outbox"],
        final_status=data["final_status"], final_status_code=0, windows=summary["windows"],
        kills=summary["kills"], wall=summary["wall"], drained=summary["drained"],
        armed_left=data.get("armed_left", {}), service=scenario.service,
        usage=data.get("usage", {}), extra=data.get("extra", {}))


def _save(result: Result) -> None:
    """result.json in the work folder, for a look after the fact."""
    data = {
        "summary": result.summary(),
        "cycles": [asdict(c) for c in result.cycles],
        "records": result.records,
        "deliveries": result.deliveries,
        "outbox": result.outbox,
        "usage": result.usage,
        "extra": result.extra,
        "final_status": result.final_status,
        "armed_left": result.armed_left,
    }
    (result.work / "result.json").write_text(json.dumps(data, indent=1, default=str))
    (result.work / "requests.json").write_text(json.dumps(result.requests))
