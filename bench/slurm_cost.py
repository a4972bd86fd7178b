"""What the reader's queries cost Slurm, next to a full ``squeue --json``, with N queued jobs.

    python bench/slurm_cost.py --version 24.11 --jobs 10000 [--keep]

Needs the lab (``lab/slurm-lab up VERSION``) and root. Submits N held jobs named
``bench-held`` (kept for the next run with --keep), starts two running jobs, then measures each
query: wall time and peak RSS of the Slurm command itself (``wait4`` on its process; the lab's
wrappers exec into the command), output size, and the time slurm-sync takes to parse it.
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

from slurm_sync.connector import Scope  # noqa: E402
from slurm_sync.connectors.events import EventsConnector  # noqa: E402
from slurm_sync.engine import merged_filter, sacct_window  # noqa: E402
from slurm_sync.slurm.parse import parse_squeue  # noqa: E402
from slurm_sync.slurm.query import JobFilter, sacct_args, squeue_args  # noqa: E402

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
                      os.waitstatus_to_exitcode(status), out.name]), flush=True)
"""
_spawner: subprocess.Popen[str] | None = None


def _start_spawner() -> None:
    global _spawner
    _spawner = subprocess.Popen([sys.executable, "-S", "-c", _SPAWNER], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)


def _measure(argv: list[str]) -> tuple[float, float, int, bytes]:
    """(seconds, peak RSS MB, exit code, output) of one command, measured on its own process."""
    assert _spawner is not None and _spawner.stdin and _spawner.stdout
    _spawner.stdin.write(json.dumps(argv) + "\n")
    _spawner.stdin.flush()
    seconds, maxrss_kb, code, path = json.loads(_spawner.stdout.readline())
    output = Path(path).read_bytes()
    os.unlink(path)
    return seconds, maxrss_kb / 1024, code, output


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="24.11")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--keep", action="store_true", help="leave the held jobs for next time")
    args = parser.parse_args()
    _start_spawner()
    info = json.loads((ROOT / "lab" / "run" / args.version / "lab.json").read_text())
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
