"""Fill a lab cluster with N held pending jobs and M running jobs, quickly; --clean cancels them.

    python bench/fill.py --run-dir lab/run-fat --version 24.11 --pending 10000 --running 1000
    python bench/fill.py --run-dir lab/run-fat --version 24.11 --clean

Needs root and a lab cluster that is up (``lab/slurm-lab up``; a fat-node profile for issue 14
is a second lab, see ``lab/slurm-lab --help``). Tops up to the numbers asked: jobs of an earlier
fill are counted, not submitted again.

- Pending jobs are single held jobs (``sbatch --hold``, named ``fill-held``), one job record
  each. A held array would be faster but is one record in slurmctld (and one in
  ``squeue --json``) until its tasks start, so it would not load Slurm like N jobs do. They are
  submitted by two shell loops run inside the cluster's root: about 10 ms a job, where the lab's
  wrappers (a chroot per call) cost 70 ms.
- Running jobs are array tasks (``--array=0-999``, named ``fill-run``, one CPU each, script
  ``exec sleep``): every task that starts becomes its own job record.
- Each running batch job has a slurmstepd (14 threads on 24.11) and its ``sleep``: the kernel
  tasks this needs are checked against ``kernel.pid_max`` before submitting (other people's
  processes share it); ``--force`` skips that check.

At the end it prints the job counts, the time taken, and what the running jobs cost the machine
(PSS and threads of the cluster's slurmstepd and sleep processes, MemAvailable).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PENDING_NAME = "fill-held"
RUNNING_NAME = "fill-run"
ARRAY_MAX = 1000  # the lab's MaxArraySize=1001 allows indices 0-1000
TASKS_PER_JOB = 15  # slurmstepd's 14 threads and the job's sleep, seen on 24.11
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

_SUBMIT_LOOP = r"""
i=0
while [ "$i" -lt "$1" ]; do
    tries=0
    until sbatch --hold --job-name=fill-held --chdir=/tmp --output=/dev/null --wrap=true \
            >/dev/null 2>/tmp/fill-sbatch.err; do
        tries=$((tries + 1))
        [ "$tries" -lt 30 ] || { cat /tmp/fill-sbatch.err >&2; exit 1; }
        sleep 1
    done
    i=$((i + 1))
done
"""


class Lab:
    """One lab cluster, from its ``lab.json``."""

    def __init__(self, run_dir: Path, version: str) -> None:
        self.info = json.loads((run_dir / version / "lab.json").read_text())
        self.bin = Path(self.info["bin_dir"])
        self.root = self.info["root_dir"]

    def run(self, *argv: str, check: bool = True) -> str:
        """A Slurm client through the lab's wrapper."""
        return subprocess.run([str(self.bin / argv[0]), *argv[1:]], capture_output=True,
                              text=True, check=check).stdout

    def in_root(self, *argv: str) -> list[str]:
        """argv run inside the cluster's root with its slurm.conf, without the wrappers."""
        env = ["/usr/bin/env", "-i", f"PATH={SYS_PATH}", "LANG=C.UTF-8",
               f"SLURM_CONF={self.info['slurm_conf']}", *argv]
        return env if self.root == "/" else ["chroot", self.root, *env]

    def count(self, name: str, states: str) -> int:
        out = self.run("squeue", "-h", "-r", "-t", states, f"--name={name}", "-o", "%i")
        return len(out.split())

    def job_processes(self) -> tuple[int, int, float]:
        """(processes, threads, PSS MB) of the cluster's slurmstepds and sleeps (chroot only)."""
        procs = threads = 0
        pss_kb = 0
        if self.root == "/":
            return 0, 0, 0.0
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                if os.readlink(f"/proc/{pid}/root") != self.root:
                    continue
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                if comm not in ("slurmstepd", "sleep"):
                    continue
                status = Path(f"/proc/{pid}/status").read_text()
                rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            procs += 1
            threads += int(_field(status, "Threads:"))
            pss_kb += int(_field(rollup, "Pss:"))
        return procs, threads, pss_kb / 1024


def _field(text: str, name: str) -> str:
    for line in text.splitlines():
        if line.startswith(name):
            return line.split()[1]
    return "0"


def mem_available_mb() -> float:
    return int(_field(Path("/proc/meminfo").read_text(), "MemAvailable:")) / 1024


def kernel_tasks() -> int:
    """Every process and thread on the machine (the 4th field of /proc/loadavg)."""
    return int(Path("/proc/loadavg").read_text().split()[3].split("/")[1])


def submit_pending(lab: Lab, count: int, loops: int = 2) -> None:
    shares = [count // loops + (1 if i < count % loops else 0) for i in range(loops)]
    procs = [subprocess.Popen(lab.in_root("sh", "-c", _SUBMIT_LOOP, "sh", str(n)))
             for n in shares if n]
    failed = [p for p in procs if p.wait() != 0]
    if failed:
        raise SystemExit("sbatch --hold failed (see above)")


def submit_running(lab: Lab, count: int, cpus: int) -> None:
    extra = ["--oversubscribe"] if lab.info.get("oversubscribe") else []
    while count > 0:
        size = min(count, ARRAY_MAX)
        lab.run("sbatch", "--parsable", f"--array=0-{size - 1}", f"--job-name={RUNNING_NAME}",
                "--chdir=/tmp", "--output=/dev/null", "-n1", f"--cpus-per-task={cpus}", *extra,
                "--wrap=exec sleep 10000000")
        count -= size


def wait_running(lab: Lab, want: int, timeout: float) -> int:
    end = time.monotonic() + timeout
    last = -1
    while True:
        running = lab.count(RUNNING_NAME, "R")
        if running != last:
            print(f"  {running} running", flush=True)
            last = running
        if running >= want or time.monotonic() > end:
            return running
        time.sleep(5)


def clean(lab: Lab, timeout: float) -> None:
    started = time.monotonic()
    for name in (RUNNING_NAME, PENDING_NAME):
        lab.run("scancel", f"--name={name}", check=False)
    end = time.monotonic() + timeout
    while lab.count(RUNNING_NAME, "R,CG") + lab.count(PENDING_NAME, "PD") and \
            time.monotonic() < end:
        time.sleep(2)
    left = lab.count(RUNNING_NAME, "R,CG,PD") + lab.count(PENDING_NAME, "PD")
    procs, threads, _ = lab.job_processes()
    print(f"cancelled in {time.monotonic() - started:.0f} s; {left} fill jobs left, "
          f"{procs} job processes ({threads} threads) left")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "lab" / "run",
                        help="the lab's run dir (SLURM_LAB_RUN_DIR; default lab/run)")
    parser.add_argument("--version", default="24.11")
    parser.add_argument("--pending", type=int, default=0, help="held pending jobs wanted")
    parser.add_argument("--running", type=int, default=0, help="running jobs wanted")
    parser.add_argument("--cpus", type=int, default=1, help="CPUs per running job (default 1)")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="seconds to wait for the running jobs to start / end")
    parser.add_argument("--force", action="store_true", help="skip the pid_max check")
    parser.add_argument("--clean", action="store_true", help="cancel every fill job")
    args = parser.parse_args()
    lab = Lab(args.run_dir, args.version)
    if args.clean:
        clean(lab, args.timeout)
        return 0
    mem0, tasks0, started = mem_available_mb(), kernel_tasks(), time.monotonic()
    procs0, threads0, pss0 = lab.job_processes()
    have_pending = lab.count(PENDING_NAME, "PD")
    have_running = lab.count(RUNNING_NAME, "R,PD,CF")
    new_running = max(0, args.running - have_running)
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    need = tasks0 + new_running * TASKS_PER_JOB
    if new_running and need > 0.8 * pid_max and not args.force:
        raise SystemExit(f"{new_running} more running jobs need about {new_running * TASKS_PER_JOB}"
                         f" kernel tasks; with {tasks0} now that is {need}, over 80% of "
                         f"kernel.pid_max ({pid_max}). Ask for fewer, or --force.")
    cpus = lab.info.get("cpus")
    if cpus and not lab.info.get("oversubscribe") and args.running * args.cpus > cpus:
        print(f"warning: {args.running} x {args.cpus} CPUs > the node's {cpus}: "
              "some will pend", file=sys.stderr)
    if args.pending > have_pending:
        t = time.monotonic()
        submit_pending(lab, args.pending - have_pending)
        print(f"submitted {args.pending - have_pending} held jobs in "
              f"{time.monotonic() - t:.0f} s", flush=True)
    if new_running:
        t = time.monotonic()
        submit_running(lab, new_running, args.cpus)
        running = wait_running(lab, args.running, args.timeout)
        print(f"submitted {new_running} running jobs; {running} running after "
              f"{time.monotonic() - t:.0f} s", flush=True)
    time.sleep(2)
    procs, threads, pss = lab.job_processes()
    pending, running = lab.count(PENDING_NAME, "PD"), lab.count(RUNNING_NAME, "R")
    print(f"{pending} held pending + {running} running fill jobs "
          f"({time.monotonic() - started:.0f} s)")
    print(f"job processes: {procs0} -> {procs} ({threads0} -> {threads} threads), "
          f"PSS {pss0:.0f} -> {pss:.0f} MB; MemAvailable {mem0:.0f} -> {mem_available_mb():.0f}"
          f" MB; kernel tasks {tasks0} -> {kernel_tasks()} (pid_max {pid_max})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
