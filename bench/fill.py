"""Fill a lab cluster with N held pending jobs and M running jobs, quickly; --clean cancels them.

    python bench/fill.py --run-dir lab/run-fat --version 24.11 --pending 10000 --running 1000
    python bench/fill.py --run-dir lab/run-fat --running 1000 --allocs 9000 --blocked 10000
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
- ``--allocs M`` makes M running jobs that have no process at all: allocations of one CPU made
  with ``salloc --no-shell`` (named ``fill-alloc``; no step is launched, so slurmd starts no
  slurmstepd). slurmctld holds and reports them as RUNNING jobs like batch jobs (the same
  ``squeue --json`` record size on 24.11, without a batch script), so a machine whose pid_max
  or memory cannot hold 10,000 slurmstepds still gets 10,000 running jobs.
- ``--blocked N`` makes N eligible pending jobs (named ``fill-blocked``, not held) that ask
  for all 4 GPUs of the node while an allocation (``fill-gpu-holder``) holds one, so they pend
  (Resources/Priority) whatever the cores and OverSubscribe: unlike held jobs they are in a
  ``sacct -S -E`` window without ``--state``. ``--clean`` cancels them before the holder.

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
ALLOC_NAME = "fill-alloc"
BLOCKED_NAME = "fill-blocked"
HOLDER_NAME = "fill-gpu-holder"
ARRAY_MAX = 1000  # the lab's MaxArraySize=1001 allows indices 0-1000
TASKS_PER_JOB = 15  # slurmstepd's 14 threads and the job's sleep, seen on 24.11
SYS_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"

# sh -c LOOP sh COUNT COMMAND...: COMMAND run COUNT times, each retried for up to 30 s
_SUBMIT_LOOP = r"""
n=$1; shift
err=$(mktemp)
i=0
while [ "$i" -lt "$n" ]; do
    tries=0
    until "$@" >/dev/null 2>"$err"; do
        tries=$((tries + 1))
        [ "$tries" -lt 30 ] || { cat "$err" >&2; rm -f "$err"; exit 1; }
        sleep 1
    done
    i=$((i + 1))
done
rm -f "$err"
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


def submit_loop(lab: Lab, count: int, command: list[str], loops: int = 2) -> None:
    """``command`` run ``count`` times by ``loops`` shell loops inside the cluster's root."""
    started = time.monotonic()
    shares = [count // loops + (1 if i < count % loops else 0) for i in range(loops)]
    procs = [subprocess.Popen(lab.in_root("sh", "-c", _SUBMIT_LOOP, "sh", str(n), *command))
             for n in shares if n]
    failed = [p for p in procs if p.wait() != 0]
    if failed:
        raise SystemExit(f"{command[0]} failed (see above)")
    print(f"{count} x {' '.join(command[:2])} ... in {time.monotonic() - started:.0f} s",
          flush=True)


def submit_pending(lab: Lab, count: int) -> None:
    submit_loop(lab, count, ["sbatch", "--hold", f"--job-name={PENDING_NAME}", "--chdir=/tmp",
                             "--output=/dev/null", "--wrap=true"])


def submit_blocked(lab: Lab, count: int) -> None:
    """Eligible pending jobs: each asks for every GPU while the holder keeps one."""
    gpus = int(lab.info.get("gpus") or 4)
    if not lab.count(HOLDER_NAME, "R"):
        subprocess.run(lab.in_root("salloc", "--no-shell", "--immediate=60", "-n1",
                                   "--gres=gpu:1", f"--job-name={HOLDER_NAME}", "--chdir=/tmp"),
                       capture_output=True, check=True)  # no salloc wrapper in the lab
    submit_loop(lab, count, ["sbatch", f"--job-name={BLOCKED_NAME}", "--chdir=/tmp",
                             "--output=/dev/null", "-n1", f"--gres=gpu:{gpus}", "--wrap=true"])


def submit_allocs(lab: Lab, count: int) -> None:
    """Running jobs without processes: one-CPU allocations, no shell, no step."""
    extra = ["--oversubscribe"] if lab.info.get("oversubscribe") else []
    submit_loop(lab, count, ["salloc", "--no-shell", "--immediate=60", "-n1",
                             f"--job-name={ALLOC_NAME}", "--chdir=/tmp", *extra])


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


def settle(lab: Lab, want: int, timeout: float = 60) -> tuple[int, int, float]:
    """job_processes() once every running batch job has its slurmstepd and sleep (or timeout)."""
    end = time.monotonic() + timeout
    while True:
        found = lab.job_processes()
        if found[0] >= 2 * want or lab.root == "/" or time.monotonic() > end:
            return found
        time.sleep(2)


def clean(lab: Lab, timeout: float) -> None:
    started = time.monotonic()
    names = (BLOCKED_NAME, PENDING_NAME, ALLOC_NAME, RUNNING_NAME, HOLDER_NAME)  # in order
    for name in names:
        lab.run("scancel", f"--name={name}", check=False)
    end = time.monotonic() + timeout
    while sum(lab.count(n, "PD,R,CG,S,CF") for n in names) and time.monotonic() < end:
        time.sleep(2)
    left = sum(lab.count(n, "PD,R,CG,S,CF") for n in names)
    procs, threads, _ = lab.job_processes()
    print(f"cancelled in {time.monotonic() - started:.0f} s; {left} fill jobs left, "
          f"{procs} job processes ({threads} threads) left")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=ROOT / "lab" / "run",
                        help="the lab's run dir (SLURM_LAB_RUN_DIR; default lab/run)")
    parser.add_argument("--version", default="24.11")
    parser.add_argument("--pending", type=int, default=0, help="held pending jobs wanted")
    parser.add_argument("--running", type=int, default=0, help="running batch jobs wanted")
    parser.add_argument("--allocs", type=int, default=0,
                        help="running allocations without processes wanted (salloc --no-shell)")
    parser.add_argument("--blocked", type=int, default=0,
                        help="eligible pending jobs wanted (whole node each, not held)")
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
        submit_pending(lab, args.pending - have_pending)
    have_allocs = lab.count(ALLOC_NAME, "R,PD,CF")
    if args.allocs > have_allocs:
        submit_allocs(lab, args.allocs - have_allocs)
    if new_running:
        t = time.monotonic()
        submit_running(lab, new_running, args.cpus)
        running = wait_running(lab, args.running, args.timeout)
        print(f"submitted {new_running} running jobs; {running} running after "
              f"{time.monotonic() - t:.0f} s", flush=True)
    have_blocked = lab.count(BLOCKED_NAME, "PD")
    if args.blocked > have_blocked:
        submit_blocked(lab, args.blocked - have_blocked)
    procs, threads, pss = settle(lab, lab.count(RUNNING_NAME, "R"))
    pending, running = lab.count(PENDING_NAME, "PD"), lab.count(RUNNING_NAME, "R")
    allocs, blocked = lab.count(ALLOC_NAME, "R"), lab.count(BLOCKED_NAME, "PD")
    print(f"fill jobs: {pending} held pending, {blocked} eligible pending, {running} running "
          f"batch, {allocs} running allocations ({time.monotonic() - started:.0f} s)")
    print(f"job processes: {procs0} -> {procs} ({threads0} -> {threads} threads), "
          f"PSS {pss0:.0f} -> {pss:.0f} MB; MemAvailable {mem0:.0f} -> {mem_available_mb():.0f}"
          f" MB; kernel tasks {tasks0} -> {kernel_tasks()} (pid_max {pid_max})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
