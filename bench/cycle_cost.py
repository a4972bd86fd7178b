"""slurm-sync's whole cycle on a filled lab (issue 14): the real CLI, its own and Slurm's cost.

    python bench/cycle_cost.py --run-dir lab/run-fat [--version 24.11] [--steady 5]
        [--modes new all] [--latency 0.01] [--resident SECONDS] [--no-stop]

Needs root and a lab that is up, usually the fat-node lab (2 x 512 cores; see
``lab/slurm-lab --help`` and BENCHMARKS.md), filled by bench/fill.py (``--pending`` held +
``--running`` running jobs, 10,000 + 1,000 unless given; topped up, never submitted twice).

Each cycle is one ``slurm-sync -c CONFIG -vv run --json`` process: ``python -c`` of a prelude
that calls ``slurm_sync.cli.main`` (the console script's entry point), with the clustercockpit
connector pointed at the cc-backend emulator (tests/emulators/ccbackend.py, 1.5.4, in this
process on loopback, ``--latency`` per request) and ``state_dir`` in a temporary folder. Modes,
side by side in one run, each with its own emulator and state:

- ``new``: the product as it is (clustercockpit declares ``SlurmNeeds(detail="new")``: the
  plain squeue listing, ``scontrol show job -d`` of runs not yet handled);
- ``all``: the old read path, forced by the prelude, which replaces
  ``ClusterCockpitConnector.needs`` by the same needs with ``detail="all"`` (``squeue --json`` of
  every listed job each cycle). Product code is not changed.

Measured for each cycle: slurm-sync's own wall time (from outside), CPU time (user + system,
``RUSAGE_SELF`` at exit) and peak RSS (``VmHWM``: the process after its exec, not the memory of
the process that started it); and each Slurm command it ran, through a wrapper ``bin_dir`` whose
scripts exec ``/usr/bin/time`` on the lab's command (``time`` forks a small child that execs
it: the command's own wall, CPU and peak RSS, from ``wait4``). ``-vv`` logs (JSON) every
``slurm call`` with the seconds slurm-sync saw, the wrapper's start included.

Scenarios: the first cycle (1,000 new running jobs into cc-backend), ``--steady`` cycles with
nothing to do (median), then the running fill jobs are cancelled, the bench waits until sacct
lists them ended, and one cycle stops them. The floor, ``squeue -h -t all -o '%A|%T|%S|%e'``,
is measured through the same wrapper before and after the steady cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fill  # noqa: E402

from tests.emulators.base import Faults  # noqa: E402
from tests.emulators.ccbackend import CCBackend  # noqa: E402

TOKEN = "bench-token"
FLOOR = ["-h", "-t", "all", "-o", "%A|%T|%S|%e"]
TIME_FORMAT = "@@ %e %U %S %M %x %C"

# The CLI as its console script runs it, with its own figures written at exit. CYCLE_COST_DETAIL
# =all swaps clustercockpit's needs for the old read path (detail="all") before main runs.
PRELUDE = r"""
import atexit, json, os, resource, sys

def _report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    hwm = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    with open(os.environ["CYCLE_COST_SELF"], "w") as out:
        json.dump({"cpu": usage.ru_utime + usage.ru_stime, "hwm_kb": hwm}, out)

atexit.register(_report)
if os.environ.get("CYCLE_COST_DETAIL") == "all":
    import dataclasses
    from slurm_sync.connectors.clustercockpit.connector import ClusterCockpitConnector
    _needs = ClusterCockpitConnector.needs
    ClusterCockpitConnector.needs = (
        lambda self: dataclasses.replace(_needs(self), detail="all"))
from slurm_sync.cli import main
sys.exit(main())
"""


def write_wrappers(lab_bin: Path, into: Path, log_var: str) -> Path:
    """A bin_dir whose commands run the lab's under ``/usr/bin/time``, appending to $log_var."""
    into.mkdir(parents=True)
    for command in sorted(p.name for p in lab_bin.iterdir()):
        path = into / command
        path.write_text(f'#!/bin/sh\nexec /usr/bin/time -q -a -o "${log_var}" '
                        f"-f '{TIME_FORMAT}' {lab_bin / command} \"$@\"\n")
        path.chmod(0o755)
    return into


def read_time_log(path: Path) -> list[dict[str, Any]]:
    """The wrapper's records: wall s, CPU s, peak RSS MB, exit code, command line."""
    calls = []
    if not path.exists():
        return calls
    for line in path.read_text().splitlines():
        if not line.startswith("@@ "):
            continue
        wall, user, system, rss_kb, code, command = line[3:].split(" ", 5)
        calls.append({"wall": float(wall), "cpu": float(user) + float(system),
                      "rss": int(rss_kb) / 1024, "exit": int(code),
                      "argv": command.replace(str(ROOT) + "/", "")})
    return calls


def short(argv: str) -> str:
    """``squeue -h -t ...`` from a wrapper's command line (the lab's path left out)."""
    head, *rest = argv.split()
    return " ".join([head.rsplit("/", 1)[-1], *rest])[:90]


def cli_env(work: Path, **extra: str) -> dict[str, str]:
    """The CLI's environment: bytecode cached under ``work`` (an installed slurm-sync has its
    .pyc files; with PYTHONDONTWRITEBYTECODE each run compiled 64 modules, 0.3 s)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPYCACHEPREFIX": str(work / "pycache"), "PYTHONPATH": str(ROOT),
            **extra}


class Mode:
    """One read path: its emulator, state folder and config."""

    def __init__(self, name: str, work: Path, bin_dir: Path, lab: fill.Lab,
                 latency: float, first_window: int) -> None:
        self.name = name
        self.folder = work / name
        self.folder.mkdir()
        cluster = lab.info["cluster"]
        self.emu = CCBackend(version="1.5.4", clusters={cluster: {"subclusters": {"main": "*"}}},
                             tokens={TOKEN}, faults=Faults(latency=latency))
        self.emu.start()
        token = self.folder / "token"
        token.write_text(TOKEN + "\n")
        token.chmod(0o600)
        self.config = self.folder / "config.json"
        self.config.write_text(json.dumps({
            "state_dir": str(self.folder / "state"),
            "log_format": "json",
            "first_window_seconds": first_window,
            "slurm": {"bin_dir": str(bin_dir),
                      "state_save_location": lab.info["state_save_location"]},
            "connectors": {"clustercockpit": {"url": self.emu.url,
                                              "token": {"file": str(token)}}},
        }, indent=1))
        self.cycles = 0

    def requests(self) -> tuple[int, int]:
        return (self.emu.count("POST", "/api/jobs/start_job/"),
                self.emu.count("POST", "/api/jobs/stop_job/"))

    def cycle(self, label: str) -> dict[str, Any]:
        """One CLI run, measured."""
        self.cycles += 1
        tag = f"{self.cycles:02d}-{label}"
        log, own = self.folder / f"{tag}.time", self.folder / f"{tag}.self.json"
        env = cli_env(self.folder.parent, CYCLE_COST_LOG=str(log), CYCLE_COST_SELF=str(own),
                      CYCLE_COST_DETAIL=self.name)
        before = self.requests()
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", PRELUDE, "-c", str(self.config), "-vv",
                               "run", "--json"], env=env, capture_output=True, text=True)
        wall = time.monotonic() - started
        (self.folder / f"{tag}.stderr").write_text(proc.stderr)
        (self.folder / f"{tag}.stdout").write_text(proc.stdout)
        mine = json.loads(own.read_text())
        seen = []
        for line in proc.stderr.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("message") == "slurm call":
                seen.append(entry)
        try:
            report = json.loads(proc.stdout)
            facts: dict[str, int] = {}
            for fact in report["facts"]:
                key = f"{fact['kind']} {fact['outcome']}"
                facts[key] = facts.get(key, 0) + 1
        except (ValueError, KeyError):
            facts = {"unreadable report": 1}
        after = self.requests()
        calls = read_time_log(log)
        return {"mode": self.name, "label": label, "exit": proc.returncode, "wall": wall,
                "cpu": mine["cpu"], "rss": mine["hwm_kb"] / 1024, "calls": calls,
                "seen": [(short(e["argv"]), e["seconds"], e["bytes"]) for e in seen],
                "facts": facts, "starts": after[0] - before[0], "stops": after[1] - before[1]}


def _runs(db: Path) -> list[tuple[float, float, int]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT started, ended, exit_code FROM runs ORDER BY started"
                            ).fetchall()


def _cpu_of(pid: int) -> tuple[float, float]:
    """(own CPU s, CPU s of its waited-for children) of a live process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def resident(mode: Mode, seconds: float, interval: float) -> dict[str, Any]:
    """A resident ``run --loop interval`` for ``seconds`` once its first cycle is recorded: its
    regular cycles' wall (the store's runs), CPU per cycle (/proc, the process's own and its
    Slurm children's) and the Slurm calls per cycle (the wrappers' log)."""
    log = mode.folder / "resident.time"
    env = cli_env(mode.folder.parent, CYCLE_COST_LOG=str(log),
                  CYCLE_COST_SELF=str(mode.folder / "resident.self.json"),
                  CYCLE_COST_DETAIL=mode.name)
    db = mode.folder / "state" / "state.db"
    before = len(_runs(db))
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE, "-c", str(mode.config), "-q",
                             "run", "--loop", str(interval)], env=env,
                            stderr=(mode.folder / "resident.stderr").open("w"))
    try:
        while len(_runs(db)) <= before:
            if proc.poll() is not None:
                raise SystemExit(f"the resident loop exited {proc.returncode}")
            time.sleep(0.05)
        first, calls_before = len(_runs(db)), len(read_time_log(log))
        cpu_before = _cpu_of(proc.pid)
        time.sleep(seconds)
        last, cpu_after = len(_runs(db)), _cpu_of(proc.pid)
        calls = read_time_log(log)[calls_before:]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    rows = _runs(db)[first:last]
    cycles = last - first
    walls = [ended - started for started, ended, _ in rows]
    return {"cycles": cycles, "wall": statistics.median(walls), "wall_range": (min(walls),
            max(walls)), "exits": sorted({r[2] for r in rows}),
            "cpu": (cpu_after[0] - cpu_before[0]) / cycles,
            "children_cpu": (cpu_after[1] - cpu_before[1]) / cycles,
            "rss": json.loads((mode.folder / "resident.self.json").read_text())["hwm_kb"] / 1024,
            "calls": len(calls) / cycles, "slurm_wall": sum(c["wall"] for c in calls) / cycles,
            "slurm_cpu": sum(c["cpu"] for c in calls) / cycles,
            "slurm_rss": max((c["rss"] for c in calls), default=0.0)}


def floor(bin_dir: Path, work: Path, repeat: int) -> list[dict[str, Any]]:
    """The plain listing through the same wrapper, ``repeat`` times."""
    log = work / "floor.time"
    env = {**os.environ, "CYCLE_COST_LOG": str(log)}
    for _ in range(repeat):
        subprocess.run([str(bin_dir / "squeue"), *FLOOR], env=env, check=True,
                       stdout=subprocess.DEVNULL)
    calls = read_time_log(log)
    log.unlink()
    return calls


def startup(work: Path, repeat: int) -> list[float]:
    """Wall s of ``slurm-sync --version`` through the same prelude: interpreter and imports
    (the first run also fills the bytecode cache)."""
    walls = []
    env = cli_env(work, CYCLE_COST_SELF=str(work / "version.json"))
    for _ in range(repeat):
        started = time.monotonic()
        subprocess.run([sys.executable, "-c", PRELUDE, "--version"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        walls.append(time.monotonic() - started)
    return walls


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over ``runs`` (one run: itself)."""
    def med(values: list[float]) -> float:
        return statistics.median(values)

    slurm_wall = [sum(c["wall"] for c in r["calls"]) for r in runs]
    slurm_cpu = [sum(c["cpu"] for c in r["calls"]) for r in runs]
    slurm_rss = [max((c["rss"] for c in r["calls"]), default=0.0) for r in runs]
    return {"n": len(runs), "wall": med([r["wall"] for r in runs]),
            "wall_range": (min(r["wall"] for r in runs), max(r["wall"] for r in runs)),
            "cpu": med([r["cpu"] for r in runs]), "rss": max(r["rss"] for r in runs),
            "calls": med([len(r["calls"]) for r in runs]), "slurm_wall": med(slurm_wall),
            "slurm_cpu": med(slurm_cpu), "slurm_rss": max(slurm_rss),
            "exits": sorted({r["exit"] for r in runs}),
            "starts": sum(r["starts"] for r in runs), "stops": sum(r["stops"] for r in runs)}


def print_run(run: dict[str, Any]) -> None:
    print(f"  [{run['mode']}] {run['label']}: exit {run['exit']}, wall {run['wall']:.2f} s, "
          f"CPU {run['cpu']:.2f} s, peak RSS {run['rss']:.0f} MB; cc-backend start_job "
          f"{run['starts']}, stop_job {run['stops']}; facts {run['facts']}", flush=True)
    for call in run["calls"]:
        print(f"    slurm {short(call['argv'])}: wall {call['wall']:.2f} s, CPU "
              f"{call['cpu']:.2f} s, peak RSS {call['rss']:.0f} MB, exit {call['exit']}")
    for argv, seconds, size in run["seen"]:
        print(f"    -vv slurm call {argv}: {seconds:.3f} s, {size / 1e6:.2f} MB")


def wait_ended(lab: fill.Lab, expected: int, limit: float = 600.0) -> float:
    """Seconds until no fill job runs and sacct lists ``expected`` of them ended."""
    started = time.monotonic()
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 7200))
    while time.monotonic() - started < limit:
        alive = lab.run("squeue", "-h", "-t", "R,CG", f"--name={fill.RUNNING_NAME}", "-o", "%i")
        ended = lab.run("sacct", "-X", "-n", "-a", "-S", since, "-E", "now",
                        f"--name={fill.RUNNING_NAME}", "-s", "CA", "-o", "JobID")
        if not alive.split() and len(ended.split()) >= expected:
            return time.monotonic() - started
        time.sleep(2)
    raise SystemExit(f"the fill jobs did not end within {limit:.0f} s")


def wait_purged(lab: fill.Lab, limit: float = 600.0) -> float:
    """Seconds until squeue lists no ended fill job (an earlier run's, kept for MinJobAge):
    the first cycle would see them as runs to start and stop."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        rows = lab.run("squeue", "-h", "-t", "all", f"--name={fill.RUNNING_NAME}", "-o", "%T")
        if not [r for r in rows.split() if r not in ("RUNNING", "PENDING")]:
            return time.monotonic() - started
        time.sleep(5)
    raise SystemExit(f"ended fill jobs still listed after {limit:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "lab" / "run-fat")
    parser.add_argument("--version", default="24.11")
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--running", type=int, default=1_000)
    parser.add_argument("--steady", type=int, default=5, help="steady cycles per mode")
    parser.add_argument("--modes", nargs="+", choices=("new", "all"), default=["new", "all"])
    parser.add_argument("--latency", type=float, default=0.01, help="cc-backend s per request")
    parser.add_argument("--floor-repeat", type=int, default=3)
    parser.add_argument("--first-window", type=int, default=3600,
                        help="first_window_seconds: shorter than the time since an earlier "
                             "run cancelled its jobs, or the first cycle sends their ends too")
    parser.add_argument("--resident", type=float, default=0, metavar="SECONDS",
                        help="after the steady cycles, a resident `run --loop` of the first "
                             "mode for this long: its regular cycles measured alike")
    parser.add_argument("--resident-interval", type=float, default=2.0)
    parser.add_argument("--no-stop", action="store_true",
                        help="leave the running jobs: no cancel, no stop cycle")
    args = parser.parse_args()

    lab = fill.Lab(args.run_dir, args.version)
    waited = wait_purged(lab)
    if waited:
        print(f"waited {waited:.0f} s for slurmctld to forget ended fill jobs", flush=True)
    subprocess.run([sys.executable, str(ROOT / "bench" / "fill.py"), "--run-dir",
                    str(args.run_dir), "--version", args.version, "--pending",
                    str(args.pending), "--running", str(args.running)], check=True)
    running = lab.count(fill.RUNNING_NAME, "R")
    held = lab.count(fill.PENDING_NAME, "PD")
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-cycle-cost-"))
    bin_dir = write_wrappers(lab.bin, work / "bin", "CYCLE_COST_LOG")
    info = lab.info
    print(f"\nSlurm {info['release']}, node {info.get('sockets')} x "
          f"{info.get('cores_per_socket')} cores; {held} held pending + {running} running; "
          f"cc-backend 1.5.4 emulator at {args.latency * 1000:.0f} ms per request; "
          f"load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; work {work}", flush=True)
    modes = [Mode(name, work, bin_dir, lab, args.latency, args.first_window)
             for name in args.modes]
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}

    def record(mode: Mode, label: str) -> None:
        run = mode.cycle(label)
        print_run(run)
        results.setdefault((mode.name, label), []).append(run)

    floors = floor(bin_dir, work, args.floor_repeat)
    start_walls = startup(work, 3)
    print(f"startup (slurm-sync --version) wall s: {[round(w, 2) for w in start_walls]}")
    for mode in modes:
        record(mode, "start")
    for _ in range(args.steady):  # interleaved, so that the machine's load hits both alike
        for mode in modes:
            record(mode, "steady")
    floors += floor(bin_dir, work, args.floor_repeat)
    loop = None
    if args.resident:
        loop = resident(modes[0], args.resident, args.resident_interval)
        print(f"  [{modes[0].name}] resident loop: {loop}", flush=True)
        floors += floor(bin_dir, work, args.floor_repeat)
    print(f"load {os.getloadavg()[0]:.1f}", flush=True)
    if not args.no_stop:
        lab.run("scancel", f"--name={fill.RUNNING_NAME}")
        waited = wait_ended(lab, running)
        print(f"cancelled {running} running jobs; sacct lists them ended after {waited:.0f} s",
              flush=True)
        for mode in modes:
            record(mode, "stop")
    for mode in modes:
        mode.emu.stop()

    floor_wall = statistics.median(c["wall"] for c in floors)
    floor_cpu = statistics.median(c["cpu"] for c in floors)
    floor_rss = max(c["rss"] for c in floors)
    print(f"\nfloor `squeue {' '.join(FLOOR)}`: {len(floors)} runs, wall median "
          f"{floor_wall:.2f} s (min-max {min(c['wall'] for c in floors):.2f}-"
          f"{max(c['wall'] for c in floors):.2f}), CPU {floor_cpu:.2f} s, peak RSS "
          f"{floor_rss:.0f} MB; slurm-sync --version {statistics.median(start_walls):.2f} s; "
          f"load {os.getloadavg()[0]:.1f}\n")
    print("| cycle | read path | runs | exit | slurm-sync wall s (min-max) | CPU s | peak RSS MB"
          " | Slurm calls | Slurm wall s (sum) | Slurm CPU s | Slurm peak RSS MB (max) | "
          "all included MB | cc-backend start / stop requests | wall / floor |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label in ("start", "steady", "stop"):
        for mode in args.modes:
            runs = results.get((mode, label))
            if not runs:
                continue
            s = summary(runs)
            span = (f" ({s['wall_range'][0]:.2f}-{s['wall_range'][1]:.2f})" if s["n"] > 1
                    else "")
            path = "delta (detail=new)" if mode == "new" else "old (detail=all)"
            print(f"| {label} | {path} | {s['n']} | {s['exits']} | {s['wall']:.2f}{span} | "
                  f"{s['cpu']:.2f} | {s['rss']:.0f} | {s['calls']:g} | {s['slurm_wall']:.2f} | "
                  f"{s['slurm_cpu']:.2f} | {s['slurm_rss']:.0f} | "
                  f"{s['rss'] + s['slurm_rss']:.0f} | {s['starts']} / {s['stops']} | "
                  f"{s['wall'] / floor_wall:.1f}x |")
    if loop is not None:
        print(f"| steady, resident `run --loop {args.resident_interval:g}` | "
              f"{args.modes[0]} | {loop['cycles']} | {loop['exits']} | {loop['wall']:.2f} "
              f"({loop['wall_range'][0]:.2f}-{loop['wall_range'][1]:.2f}) | {loop['cpu']:.2f} | "
              f"{loop['rss']:.0f} | {loop['calls']:.1f} | {loop['slurm_wall']:.2f} | "
              f"{loop['slurm_cpu']:.2f} | {loop['slurm_rss']:.0f} | "
              f"{loop['rss'] + loop['slurm_rss']:.0f} | - | {loop['wall'] / floor_wall:.1f}x |")
        print("(resident: wall is each regular cycle's, from the store's runs table; CPU per "
              "cycle from /proc; the process's peak RSS at exit)")
    print(f"\n(each cycle's stderr, report and time log are in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
