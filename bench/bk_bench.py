"""Buildkite: 500 scheduled jobs of a few shapes, from one poll to all submitted.

    python bench/bk_bench.py [--jobs 500] [--shapes 5] [--lab 24.11]

The Buildkite emulator holds one build of N scheduled jobs spread over a few shapes (their
slurm_* options). One cycle of the connector runs, in REST mode and in Stacks mode, against:
- stand-in Slurm commands (sbatch answers at once), to see the connector's own cost;
- with --lab VERSION, a real lab cluster (lab/slurm-lab up VERSION; root), where sbatch and
  squeue are slurmctld's. The agent command is /bin/true there, and every job is cancelled
  afterwards.
Reported: sbatch calls, other Slurm calls, Buildkite requests, wall time of the cycle.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from standins import stand_ins  # noqa: E402

from slurm_sync.connector import SlurmContext  # noqa: E402
from slurm_sync.connectors.buildkite import BuildkiteConnector  # noqa: E402
from slurm_sync.engine import CycleOptions, run_cycle  # noqa: E402
from slurm_sync.slurm.reader import SlurmReader  # noqa: E402
from slurm_sync.slurm.run import Runner, SlurmCommands  # noqa: E402
from slurm_sync.store import Store  # noqa: E402
from tests.emulators.buildkite import Buildkite  # noqa: E402

SHAPES = [[], ["slurm_cpus_per_task=2"], ["slurm_time=00:20:00"], ["slurm_mem=1G"],
          ["slurm_ntasks=2"], ["slurm_exclusive"], ["slurm_mem=2G"], ["slurm_cpus_per_task=4"]]


def _stand_ins(work: Path) -> Path:
    empty = json.loads((ROOT / "tests/fixtures/slurm/24.11/sacct.json").read_text())
    (work / "empty.json").write_text(json.dumps({**empty, "jobs": []}))
    n = work / "n"
    return stand_ins(work, squeue=work / "empty.json", sacct=work / "empty.json", extra={
        "sbatch": f'cat > /dev/null; n=$(cat {n} 2>/dev/null || echo 100); '
                  f'echo $((n + 1)) > {n}; echo "$n;bench"'})


def _cycle(mode: str, jobs: int, shapes: int, bin_dir: str, work: Path,
           agent: str) -> tuple[float, int, int, int, int]:
    with Buildkite() as emu:
        emu.add_queue("slurm")
        emu.add_build("bench", jobs=[
            {"step_key": f"s{i}", "command": "true",
             "agent_query_rules": ["queue=slurm", *SHAPES[i % shapes]]}
            for i in range(jobs)])
        token = work / f"token-{mode}"
        token.write_text((emu.api_token if mode == "rest" else emu.agent_token) + "\n")
        token.chmod(0o600)
        settings = {
            "mode": mode, "queue": "slurm",
            "agent": {"command": agent, "config": str(work / "agent.cfg"),
                      "build_root": str(work / "builds")},
            "batch_dir": str(work / "batches"),
            "policy": {"defaults": {"partition": "main", "time": "00:10:00"}},
        }
        if mode == "rest":
            settings["rest"] = {"url": emu.url, "organization": emu.default_org,
                                "token": {"file": str(token)}}
        else:
            settings["stacks"] = {"url": emu.url, "token": {"file": str(token)},
                                  "stack_key": "bench"}
        connector = BuildkiteConnector(settings)
        reader = SlurmReader(Runner(SlurmCommands(bin_dir=bin_dir)))
        connector.bind(SlurmContext(reader=reader, cluster="bench"))
        with Store.memory() as store:
            started = time.perf_counter()
            report = run_cycle(reader, store, {"buildkite": connector}, CycleOptions(),
                               now=time.time())
            seconds = time.perf_counter() - started
        connector.close()
        done = sum(o.status.delivered for o in report.outcomes)
        sbatch = sum(1 for c in reader.runner.calls if any(a.endswith("sbatch") for a in c.argv))
        other = len(reader.runner.calls) - sbatch
        return seconds, done, sbatch, other, len(emu.seen)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--shapes", type=int, default=5)
    parser.add_argument("--lab", help="a lab version to run against too (needs root)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-sync-bk-bench-"))
    (work / "agent.cfg").write_text("token=x\n")
    (work / "builds").mkdir()
    targets = [("stand-in Slurm", str(_stand_ins(work)), "/bin/true", None)]
    if args.lab:
        info = json.loads((ROOT / "lab" / "run" / args.lab / "lab.json").read_text())
        shared = Path(info["shared_dir"]) / "bk-bench"
        (shared / "builds").mkdir(parents=True, exist_ok=True)
        targets.append((f"lab Slurm {info['release']}", info["bin_dir"], "/bin/true", shared))
    print(f"{args.jobs} scheduled jobs in {args.shapes} shapes, one build")
    print("| Slurm | mode | sbatch calls | other Slurm calls | Buildkite requests | "
          "submitted | wall s |")
    print("|---|---|---|---|---|---|---|")
    for label, bin_dir, agent, shared in targets:
        for mode in ("rest", "stacks"):
            place = shared or work
            seconds, done, sbatch, other, requests = _cycle(
                mode, args.jobs, args.shapes, bin_dir, place, agent)
            print(f"| {label} | {mode} | {sbatch} | {other} | {requests} | "
                  f"{done}/{args.jobs} | {seconds:.2f} |", flush=True)
            if shared is not None:
                subprocess.run([f"{bin_dir}/scancel", "-n", "buildkite"], check=False)
                time.sleep(2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
