"""Synthetic ``squeue --json`` documents of N jobs, in the shape of a captured Slurm release.

    python bench/gen.py --shape 24.11 --jobs 10000 -o bench/out/24.11-10000.json

Records are copies of records captured from the lab (tests/fixtures/slurm/<shape>/), so every
key, nesting and value kind is Slurm's own; ids, names, users, hosts and times vary per job.
A third of the jobs run (with a per-node core allocation on one of many 2x16-core nodes), the
rest are pending, which is what a busy queue looks like.
"""

from __future__ import annotations

import argparse
import copy
import json
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "slurm"
CORES_PER_SOCKET = 16


def _templates(shape: str) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(document without jobs, a running job record, a pending job record)."""
    running = pending = None
    document: dict[str, Any] = {}
    for path in sorted((FIXTURES / shape).glob("squeue-*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        for record in document["jobs"]:
            state = record.get("job_state")
            words = state if isinstance(state, list) else [state]
            if running is None and words == ["RUNNING"] and record.get("job_resources"):
                running = record
            if pending is None and words == ["PENDING"]:
                pending = record
        if running and pending:
            break
    if running is None or pending is None:
        raise SystemExit(f"no running and pending records captured under {FIXTURES / shape}")
    return {k: v for k, v in document.items() if k != "jobs"}, running, pending


def _set_number(record: dict[str, Any], key: str, value: int) -> None:
    """Write ``value`` in whatever layout the template uses for ``key``."""
    current = record.get(key)
    if isinstance(current, dict):
        record[key] = {"set": True, "infinite": False, "number": value}
    else:
        record[key] = value


def _allocation(record: dict[str, Any], host: str, cores: list[int]) -> None:
    """Rewrite the template's job_resources for ``host`` holding node-wide ``cores``."""
    resources = record.get("job_resources") or {}
    nodes = resources.get("nodes")
    if isinstance(nodes, dict) and "allocation" in nodes:  # v0.0.41+
        node = nodes["allocation"][0]
        node["name"] = host
        node["sockets"] = [
            {
                "index": s,
                "cores": [
                    {
                        "index": c,
                        "status": (
                            ["ALLOCATED"] if s * CORES_PER_SOCKET + c in cores else ["UNALLOCATED"]
                        ),
                    }
                    for c in range(CORES_PER_SOCKET)
                ],
            }
            for s in range(2)
        ]
        nodes["allocation"] = [node]
        nodes["list"] = host
    elif isinstance(resources.get("allocated_nodes"), list):  # v0.0.38 to v0.0.40
        node = resources["allocated_nodes"][0]
        node["nodename"] = host
        sockets: dict[str, Any] = {}
        for core in cores:
            socket, index = divmod(core, CORES_PER_SOCKET)
            sockets.setdefault(str(socket), {"cores": {}})["cores"][str(index)] = "allocated"
        node["sockets"] = sockets
        resources["allocated_nodes"] = [node]
        resources["nodes"] = host


def generate(shape: str, jobs: int, seed: int = 1, running_every: int = 3) -> dict[str, Any]:
    """A document of ``jobs`` records in ``shape``'s layout; every ``running_every``-th runs."""
    rng = random.Random(seed)
    head, running, pending = _templates(shape)
    users = [f"user{i:03d}" for i in range(200)]
    now = 1_790_000_000
    records = []
    for i in range(jobs):
        job_id = 1_000_000 + i
        is_running = i % running_every == 0
        record = copy.deepcopy(running if is_running else pending)
        _set_number(record, "job_id", job_id)
        record["name"] = f"job-{job_id}-{rng.choice(['train', 'sim', 'post', 'ci'])}"
        record["user_name"] = rng.choice(users)
        _set_number(record, "submit_time", now - rng.randint(60, 86_400))
        cpus = rng.choice([1, 2, 4, 8, 16])
        _set_number(record, "cpus", cpus)
        if is_running:
            host = f"node{rng.randint(1, 4000):05d}"
            record["nodes"] = host
            first = rng.randint(0, 2 * CORES_PER_SOCKET - cpus)
            _allocation(record, host, list(range(first, first + cpus)))
            _set_number(record, "start_time", now - rng.randint(1, 3_600))
        records.append(record)
    return {**head, "jobs": records}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="24.11", help="captured release to copy (22.05, 24.11)")
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    document = generate(args.shape, args.jobs)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    # Slurm pretty-prints with an indent of 2; keep the size per job realistic.
    Path(args.output).write_text(json.dumps(document, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
