"""A steady cycle's cost against the number of running jobs: 10,000 and 100,000 (issue 14).

    python bench/scale_bench.py [--running 10000 100000] [--repeat 5]

The delta read path as the product runs it (``run_cycle`` with the events connector, whose
``SlurmNeeds(detail="new")`` makes the cycle read squeue's plain listing): every running job's
start was delivered in an earlier cycle (recorded in the store first), so a steady cycle lists,
reads the sacct window (empty: nothing ended), takes the store's snapshot of the listed jobs and
plans nothing; no ``scontrol show job`` is run (the bench fails if one is).

Slurm is a set of stand-in scripts (``cat`` of a prepared listing in ``squeue -h -o`` form, an
empty sacct document, ``scontrol show config``): this machine cannot run 100,000 jobs on the
lab (see BENCHMARKS.md, "the machine's limits"). What Slurm itself pays for the listing is
measured on the lab by bench/slurm_cost.py (0.12 s of CPU and 47 MB for 20,000 jobs). Both sizes
are measured in one run, cycles alternating; each figure is the median of ``repeat`` cycles
(wall and the process's CPU), and the target is the ratio: time(100k) / time(10k) <= 11.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slurm_sync.actions import Action, Outcome  # noqa: E402
from slurm_sync.connectors.events import EventsConnector  # noqa: E402
from slurm_sync.engine import CycleOptions, run_cycle  # noqa: E402
from slurm_sync.slurm.reader import SlurmReader  # noqa: E402
from slurm_sync.slurm.run import Runner, SlurmCommands  # noqa: E402
from slurm_sync.store import Store  # noqa: E402

CLUSTER = "bench"
T0 = 1_796_000_000


def _cluster(work: Path, running: int) -> tuple[Path, Path]:
    """Stand-in commands serving ``running`` running jobs; (bin folder, store path)."""
    listing = work / "listing.txt"
    with listing.open("w") as out:
        for job in range(1, running + 1):
            # %A|%F|%K|%T|%S|%e|%P|%u|%a|%D|%C|%N|%j, times in epoch seconds
            node = f"n{job % 500:03d}"
            out.write(f"{job}|{job}|N/A|RUNNING|{T0 + job % 3600}|NONE|main|user{job % 97}|"
                      f"lab|1|4|{node}|job {job}\n")
    sacct = json.loads((ROOT / "tests/fixtures/slurm/24.11/sacct.json").read_text())
    (work / "sacct.json").write_text(json.dumps({**sacct, "jobs": []}))
    (work / "config.txt").write_text(
        f"ClusterName             = {CLUSTER}\nMinJobAge               = 300 sec\n")
    bin_dir = work / "bin"
    bin_dir.mkdir()
    scripts = {
        "squeue": f'case "$1" in --version) echo "slurm 24.11.5";; *) exec cat {listing};; esac',
        "sacct": f"exec cat {work / 'sacct.json'}",
        "scontrol": (f'if [ "$1 $2" = "show config" ]; then exec cat {work / "config.txt"}; fi\n'
                     f'echo "$@" >> {work / "scontrol-calls"}; exit 1'),
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(0o755)
    state = work / "state.db"
    with Store.open(state) as store:
        store.record_outcomes(
            outcomes=[Outcome.done(Action("events", "start", f"{CLUSTER}/{job}/{T0 + job % 3600}"))
                      for job in range(1, running + 1)],
            now=float(T0 + 3600), watermarks={"events": time.time() - 60},
            opening=("start",), closing=("stop",))
    return bin_dir, state


def _cycle(bin_dir: Path, state: Path) -> tuple[float, float]:
    """One steady cycle in this process: (wall s, CPU s)."""
    reader = SlurmReader(Runner(SlurmCommands(bin_dir=str(bin_dir))))
    connectors = {"events": EventsConnector({"output": "/dev/null"})}
    wall, cpu = time.perf_counter(), time.process_time()
    with Store.open(state) as store:
        report = run_cycle(reader, store, connectors, CycleOptions(), now=time.time())
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert not report.planned and not report.slurm_errors, (report.planned[:3],
                                                             report.slurm_errors)
    return wall, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--running", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-scale-bench-"))
    clusters = {}
    for running in args.running:
        folder = work / str(running)
        folder.mkdir()
        clusters[running] = _cluster(folder, running)
        _cycle(*clusters[running])  # warm: the store's open runs built, files cached
    figures: dict[int, list[tuple[float, float]]] = {n: [] for n in args.running}
    for _ in range(args.repeat):
        for running, cluster in clusters.items():
            figures[running].append(_cycle(*cluster))
    for cluster in clusters.values():
        assert not (cluster[0].parent / "scontrol-calls").exists(), "a full record was fetched"
    print("| running jobs | steady cycle wall s (median) | CPU s (median) |")
    print("|---|---|---|")
    for running, runs in figures.items():
        print(f"| {running:,} | {statistics.median(w for w, _ in runs):.3f} | "
              f"{statistics.median(c for _, c in runs):.3f} |")
    small, large = min(args.running), max(args.running)
    if small != large:
        ratio = (statistics.median(w for w, _ in figures[large])
                 / statistics.median(w for w, _ in figures[small]))
        target = 1.1 * large / small
        print(f"\ntime({large:,}) / time({small:,}) = {ratio:.2f} (target <= {target:.0f}): "
              f"{'met' if ratio <= target else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
