"""Normalize cost against ``json.loads``, and peak memory, at 10k and 100k jobs.

    python bench/parse_bench.py [--sizes 10000 100000] [--shapes 22.05 24.11] [--repeat 3]

For each captured shape and size: ``json.loads`` time and ``parse_squeue`` time on the loaded
document, measured side by side in the same fresh process (best of --repeat), their ratio
(goal <= 0.5), and the peak RSS of a fresh process that reads the bytes and normalizes them as
the reader does (goal <= 2.5 x document size + 60 MB). Prints a Markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "out"

TIMING = r"""
import json, sys, time
from slurm_sync.slurm.parse import parse_squeue
raw = open(sys.argv[1], "rb").read()
best_load = best_norm = float("inf")
for _ in range(int(sys.argv[2])):
    t0 = time.perf_counter(); doc = json.loads(raw); t1 = time.perf_counter()
    result = parse_squeue(doc); t2 = time.perf_counter()
    best_load = min(best_load, t1 - t0); best_norm = min(best_norm, t2 - t1)
    assert not result.skipped and len(result.jobs) == len(doc["jobs"])
    del doc, result
print(json.dumps({"load": best_load, "normalize": best_norm}))
"""

MEMORY = r"""
import json, resource, sys
from slurm_sync.slurm.parse import parse_squeue
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
raw = open(sys.argv[1], "rb").read()
result = parse_squeue(raw)
del raw
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"peak_kb": peak, "base_kb": base, "jobs": len(result.jobs)}))
"""


def _run(code: str, *args: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--shapes", nargs="+", default=["22.05", "24.11"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for shape in args.shapes:
        for size in args.sizes:
            path = OUT / f"squeue-{shape}-{size}.json"
            if not path.exists():
                subprocess.run(
                    [sys.executable, str(HERE / "gen.py"), "--shape", shape, "--jobs", str(size),
                     "-o", str(path)],
                    check=True,
                )
            mb = path.stat().st_size / 1e6
            timing = _run(TIMING, str(path), str(args.repeat))
            memory = _run(MEMORY, str(path))
            peak_mb = memory["peak_kb"] / 1024
            goal_mb = 2.5 * mb + 60
            ratio = timing["normalize"] / timing["load"]
            rows.append(
                f"| {shape} | {size:,} | {mb:.1f} | {timing['load']:.2f} | "
                f"{timing['normalize']:.2f} | {ratio:.2f} {'ok' if ratio <= 0.5 else 'MISSED'} | "
                f"{peak_mb:.0f} | {goal_mb:.0f} {'ok' if peak_mb <= goal_mb else 'MISSED'} |"
            )
            print(rows[-1], flush=True)
    print()
    print("| shape | jobs | document MB | json.loads s | normalize s | ratio (goal <= 0.5) "
          "| peak RSS MB | goal MB |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
