"""What the reader's queries cost Slurm, next to a full ``squeue --json``, with N queued jobs.

    python bench/slurm_cost.py --version 24.11 --jobs 10000 [--keep]
    python bench/slurm_cost.py --run-dir lab/run-fat --profile fat [--repeat 3] [--clean]

Needs the lab (``lab/slurm-lab up VERSION``) and root. Submits N held jobs named
``bench-held`` (kept for the next run with --keep), starts two running jobs, then measures each
query: wall time and peak RSS of the Slurm command itself (``wait4`` on its process; the lab's
wrappers exec into the command), output size, and the time slurm-sync takes to parse it.

``--profile fat|small`` (issue 14) measures instead the commands of issue 14's list, each
``--repeat`` times, on a lab filled by bench/fill.py (``--pending`` held + ``--running``
running jobs; 10,000 + 1,000 unless given), usually a second lab with the fat-node shape
(``--run-dir lab/run-fat``; see ``lab/slurm-lab --help``). ``fat`` expects 2 x 512 cores,
``small`` 2 x 64 cores with an oversubscribed partition; the shape is read from lab.json and
printed. The fill jobs stay for the next run unless ``--clean``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import fill  # noqa: E402

from slurm_sync.connector import Scope  # noqa: E402
from slurm_sync.connectors.events import EventsConnector  # noqa: E402
from slurm_sync.engine import merged_filter, sacct_window  # noqa: E402
from slurm_sync.slurm.parse import parse_squeue  # noqa: E402
from slurm_sync.slurm.query import (  # noqa: E402
    WINDOW_RUNS,
    JobFilter,
    sacct_args,
    squeue_args,
)

# Linux counts the memory a process had when it forked (or shared, with vfork) into the
# ru_maxrss of the command it then execs. Measured from this script, which by then holds a parsed
# 76 MB dump, every command would look 250 MB big. So commands are started by a small helper
# process, spawned before anything large is loaded; its own size (about 10 MB) is the floor.
_SPAWNER = r"""
import json, os, subprocess, sys, tempfile, time
for line in sys.stdin:
    argv = json.loads(line)
    out = tempfile.NamedTemporaryFile(delete=False)
    started = time.monotonic()
    proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    out.close()
    print(json.dumps([time.monotonic() - started, usage.ru_maxrss,
                      os.waitstatus_to_exitcode(status), out.name,
                      usage.ru_utime + usage.ru_stime]), flush=True)
"""
_spawner: subprocess.Popen[str] | None = None


def _start_spawner() -> None:
    global _spawner
    _spawner = subprocess.Popen([sys.executable, "-S", "-c", _SPAWNER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)


def _measure(argv: list[str]) -> tuple[float, float, int, bytes]:
    """(seconds, peak RSS MB, exit code, output) of one command, measured on its own process."""
    return _measure_cpu(argv)[:4]  # type: ignore[return-value]


def _measure_cpu(argv: list[str]) -> tuple[float, float, int, bytes, float]:
    """_measure's figures and the CPU seconds (user + system) the command itself used."""
    assert _spawner is not None and _spawner.stdin and _spawner.stdout
    _spawner.stdin.write(json.dumps(argv) + "\n")
    _spawner.stdin.flush()
    seconds, maxrss_kb, code, path, cpu = json.loads(_spawner.stdout.readline())
    output = Path(path).read_bytes()
    os.unlink(path)
    return seconds, maxrss_kb / 1024, code, output, cpu


def _count_held(bin_dir: str) -> int:
    out = subprocess.run([f"{bin_dir}/squeue", "-h", "-t", "PD", "--name=bench-held", "-o", "%i"],
                         capture_output=True, text=True, check=True).stdout
    return len(out.split())


def _submit_held(bin_dir: str, count: int) -> None:
    def one(_: int) -> None:
        subprocess.run([f"{bin_dir}/sbatch", "--hold", "--job-name=bench-held", "--chdir=/tmp",
                        "--output=/dev/null", "--wrap=true"],
                       capture_output=True, check=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(one, range(count)))


ENDED_AND_RUNNING = ("RUNNING,SUSPENDED,COMPLETED,CANCELLED,FAILED,TIMEOUT,NODE_FAIL,PREEMPTED,"
                     "BOOT_FAIL,DEADLINE,OUT_OF_MEMORY,REQUEUED")
PROFILES = {"fat": (2, 512), "small": (2, 64)}  # sockets, cores per socket


def _records(argv: list[str], output: bytes) -> str:
    """Jobs in a command's output: JSON documents parsed, text counted by lines/records."""
    if "--json" in argv:
        try:
            return str(len(json.loads(output)["jobs"]))
        except (ValueError, KeyError):
            return "?"
    if argv[0].endswith("scontrol"):  # not ArrayJobId=
        return str(output.count(b"\nJobId=") + output.startswith(b"JobId="))
    return str(output.count(b"\n"))


def _ctld_memory(info: dict[str, object]) -> str:
    """slurmctld's RSS and peak RSS (VmHWM), MB, from its pid file."""
    base = Path(str(info["state_save_location"])).parent
    try:
        pid = (base / "run" / "slurmctld.pid").read_text().strip()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "slurmctld not found"
    rss, hwm = (int(fill._field(status, key)) / 1024 for key in ("VmRSS:", "VmHWM:"))
    return f"slurmctld RSS {rss:.0f} MB (peak {hwm:.0f} MB)"


def issue14(args: argparse.Namespace) -> int:
    """Issue 14's command list on a filled lab, each command's own time, peak RSS and output."""
    lab = fill.Lab(args.run_dir, args.version)
    info, bin_dir = lab.info, str(lab.bin)
    shape = (info.get("sockets"), info.get("cores_per_socket"))
    if shape != PROFILES[args.profile]:
        print(f"warning: profile {args.profile} wants {PROFILES[args.profile]} sockets x cores, "
              f"the lab has {shape}", file=sys.stderr)
    pending = 10_000 if args.pending is None else args.pending
    running = 1_000 if args.running is None else args.running
    subprocess.run([sys.executable, str(ROOT / "bench" / "fill.py"), "--run-dir",
                    str(args.run_dir), "--version", args.version, "--pending", str(pending),
                    "--running", str(running), "--allocs", str(args.allocs),
                    "--blocked", str(args.blocked)], check=True)
    def job_ids(states: str) -> list[str]:
        """Jobs' own ids, less an array's base id: ``-j <base>`` selects every task."""
        rows = lab.run("squeue", "-h", "-t", states, f"--name={fill.RUNNING_NAME},"
                       f"{fill.ALLOC_NAME}", "-o", "%A|%K|%F").split()
        return [a for a, k, f in (r.split("|") for r in rows) if k == "N/A" or a != f]

    kind, ids = "running", job_ids("R")
    if not ids:  # e.g. after they were cancelled: the ended ones slurmctld still holds
        kind, ids = "ended", job_ids("all")
    if not ids:
        raise SystemExit("no running or ended fill jobs")
    hundred, one = ",".join(ids[:100]), ids[len(ids) // 2]
    start = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 3600))
    window = sacct_window(time.time() - 3600, time.time(), 0, 3600)  # the same hour
    sq, sc, sa = f"{bin_dir}/squeue", f"{bin_dir}/scontrol", f"{bin_dir}/sacct"
    queries: list[tuple[str, list[str]]] = [
        ("squeue --json --states=RUNNING", [sq, "--json", "--states=RUNNING"]),
        ("squeue --json --states=all", [sq, "--json", "--states=all"]),
        (f"squeue --json -j <{len(ids[:100])} {kind} ids>", [sq, "--json", "-j", hundred]),
        ("squeue -h -t all -o '%A|%T|%S|%e'", [sq, "-h", "-t", "all", "-o", "%A|%T|%S|%e"]),
        ("squeue -h --states=PD,R,CG,S -o '%A|%F|%K|%T|%S|%e|%P|%u|%a|%D|%C|%N|%j'",
         [sq, "-h", "--states=PD,R,CG,S", "-o", "%A|%F|%K|%T|%S|%e|%P|%u|%a|%D|%C|%N|%j"]),
        ("scontrol show job -d (all)", [sc, "show", "job", "-d"]),
        (f"scontrol show job -d <one {kind} id>", [sc, "show", "job", "-d", one]),
        ("sacct --json -X -D -a -S <1 h ago> -E now", [sa, "--json", "-X", "-D", "-a", "-S",
                                                        start, "-E", "now"]),
        ("sacct --json -X -D -a -S <1 h ago> -E now --state=RUNNING,...,REQUEUED",
         [sa, "--json", "-X", "-D", "-a", "-S", start, "-E", "now",
          f"--state={ENDED_AND_RUNNING}"]),
        ("slurm-sync's window today: sacct " + " ".join(sacct_args(window, WINDOW_RUNS)),
         [sa, *sacct_args(window, WINDOW_RUNS)]),
    ]
    held, blocked = lab.count(fill.PENDING_NAME, "PD"), lab.count(fill.BLOCKED_NAME, "PD")
    batch, allocs = lab.count(fill.RUNNING_NAME, "R"), lab.count(fill.ALLOC_NAME, "R")
    print(f"\nSlurm {info['release']}, node {shape[0]} x {shape[1]} cores "
          f"(oversubscribe {info.get('oversubscribe') or 'no'}); jobs: {held} held pending, "
          f"{blocked} eligible pending, {batch} running batch, {allocs} running allocations; "
          f"{_ctld_memory(info)}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; "
          f"{args.repeat} runs each\n")
    print("| command | wall s (min-max) | CPU s (min) | peak RSS MB (max) | output MB | jobs |")
    print("|---|---|---|---|---|---|")
    for label, argv in queries:
        runs = [_measure_cpu(argv) for _ in range(args.repeat)]
        secs = [r[0] for r in runs]
        codes = {r[2] for r in runs}
        output = runs[-1][3]
        note = "" if codes == {0} else f" (exit {sorted(codes)})"
        print(f"| `{label}`{note} | {min(secs):.2f}-{max(secs):.2f} | "
              f"{min(r[4] for r in runs):.2f} | {max(r[1] for r in runs):.0f} | "
              f"{len(output) / 1e6:.2f} | {_records(argv, output)} |", flush=True)
        del runs, output
    print(f"\nafter: {_ctld_memory(info)}; load {os.getloadavg()[0]:.1f}")
    if args.clean:
        subprocess.run([sys.executable, str(ROOT / "bench" / "fill.py"), "--run-dir",
                        str(args.run_dir), "--version", args.version, "--clean"], check=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="24.11")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="leave the held jobs for next time")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "lab" / "run",
                        help="the lab's run dir (SLURM_LAB_RUN_DIR; default lab/run)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help="issue 14's command list on a lab filled by bench/fill.py")
    parser.add_argument("--pending", type=int, help="--profile: held jobs (default 10000)")
    parser.add_argument("--running", type=int, help="--profile: running jobs (default 1000)")
    parser.add_argument("--allocs", type=int, default=0,
                        help="--profile: running allocations without processes (bench/fill.py)")
    parser.add_argument("--blocked", type=int, default=0,
                        help="--profile: eligible (not held) pending jobs (bench/fill.py)")
    parser.add_argument("--repeat", type=int, default=3, help="--profile: runs per command")
    parser.add_argument("--clean", action="store_true", help="--profile: cancel the fill jobs")
    args = parser.parse_args()
    _start_spawner()
    if args.profile:
        return issue14(args)
    info = json.loads((args.run_dir / args.version / "lab.json").read_text())
    bin_dir = info["bin_dir"]
    missing = args.jobs - _count_held(bin_dir)
    if missing > 0:
        started = time.monotonic()
        _submit_held(bin_dir, missing)
        print(f"submitted {missing} held jobs in {time.monotonic() - started:.0f} s", flush=True)
    running = [
        subprocess.run([f"{bin_dir}/sbatch", "--parsable", "--job-name=bench-run", "--chdir=/tmp",
                        "--output=/dev/null", "--wrap=sleep 600"],
                       capture_output=True, text=True, check=True).stdout.strip()
        for _ in range(2)
    ]
    time.sleep(3)
    version = tuple(int(p) for p in info["release"].split(".")[:3])
    queries = {
        "full dump: squeue --json": ["--json"],
        "full dump, finished too: squeue --json --states=all": ["--json", "--states=all"],
        "reader, running jobs (JobFilter(states=R))": squeue_args(
            JobFilter(states=("R",)), version),  # type: ignore[arg-type]
        "reader, one connector's jobs (JobFilter(names=bench-run))": squeue_args(
            JobFilter(names=("bench-run",)), version),  # type: ignore[arg-type]
        "text: squeue -h -t all -o '%i|%T|%S'": ["-h", "-t", "all", "-o", "%i|%T|%S"],
    }
    steady = merged_filter([EventsConnector({"output": "-"}).needs()], Scope())
    assert steady is not None
    queries["steady cycle, events connector: squeue"] = squeue_args(
        steady, version)  # type: ignore[arg-type]
    window = sacct_window(time.time() - 60, time.time(), 60, 3600)
    print(f"\nSlurm {info['release']}, {_count_held(bin_dir)} held + 2 running jobs\n")
    print("| query | argv | seconds | peak RSS MB (squeue) | output MB | parse s (slurm-sync) |")
    print("|---|---|---|---|---|---|")
    for label, query in queries.items():
        seconds, rss, code, output = _measure([f"{bin_dir}/squeue", *query])
        parse_s = "-"
        if "--json" in query and code == 0:
            started = time.monotonic()
            result = parse_squeue(output)
            parse_s = f"{time.monotonic() - started:.2f} ({len(result.jobs)} jobs)"
        print(f"| {label} | `squeue {' '.join(query)}` | {seconds:.2f} | {rss:.0f} | "
              f"{len(output) / 1e6:.2f} | {parse_s} |", flush=True)
    seconds, rss, code, output = _measure([f"{bin_dir}/sacct", *sacct_args(window)])
    print(f"| steady cycle, events connector: sacct | `sacct {' '.join(sacct_args(window))}` | "
          f"{seconds:.2f} | {rss:.0f} (sacct) | {len(output) / 1e6:.2f} | - |", flush=True)
    subprocess.run([f"{bin_dir}/scancel", *running], check=False)
    if not args.keep:
        subprocess.run([f"{bin_dir}/scancel", "--name=bench-held"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
