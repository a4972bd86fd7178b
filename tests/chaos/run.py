"""Run the chaos scenario for one or more seeds and print what broke.

    python -m tests.chaos.run --seed 1 --seed 2 --seed 3 --jobs 1000      # the long run
    python -m tests.chaos.run --short --seed 7                             # what make test runs
    python -m tests.chaos.run --seed 4 --cc-version 1.4.4 --keep /tmp/c4   # keep the work folder
    python -m tests.chaos.run --seed 1 --seed 2@1.4.4                      # per-seed cc-backend
    python -m tests.chaos.run --service buildkite --seed 1 --jobs 300      # the Buildkite run

Each seed prints its figures and every failed assertion with a count and a few examples; the
exit code is 1 when any seed failed. ``--json FILE`` writes the figures of every seed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.chaos.check import assertions_of, check, figures
from tests.chaos.harness import load_result, run_scenario
from tests.chaos.timeline import Scenario

EXAMPLES = 5


def run_one(scenario: Scenario, work: Path, quiet: bool = False,
            product: Path | None = None) -> dict[str, Any]:
    say = (lambda *_: None) if quiet else (lambda text: print(f"  {text}", flush=True))
    result = run_scenario(scenario, work, log=say, product=product)
    findings = check(result)
    numbers = figures(result, findings)
    numbers["examples"] = {name: [str(f) for f in items[:EXAMPLES]]
                           for name, items in findings.items() if items}
    return numbers


def report_buildkite(numbers: dict[str, Any]) -> str:
    lines = [
        f"seed {numbers['seed']} (buildkite): {'PASS' if numbers['passed'] else 'FAIL'} in "
        f"{numbers['wall_seconds']} s",
        f"  {numbers['bk_jobs']} Buildkite jobs ({numbers['bk_jobs_ours']} for our queue) in "
        f"{numbers['builds']} builds, cancelled {numbers['builds_cancelled']}; final states "
        f"{numbers['bk_final_states']}; cancelled before running "
        f"{numbers['cancelled_before_running']}, while running "
        f"{numbers['cancelled_while_running']}",
        f"  {numbers['sbatch_calls']} sbatch calls: {numbers['submissions']} submissions "
        f"({numbers['arrays']} arrays), {numbers['slurm_jobs']} Slurm jobs/tasks ended "
        f"{numbers['slurm_ended']}; {numbers['held_then_cancelled']} held pending until "
        f"scancel'd; {numbers['acquire_refused']} acquires refused; "
        f"{numbers['scancel_calls']} scancel calls",
        f"  {numbers['cycles']} cycles (exit codes {numbers['exit_codes']}), "
        f"{numbers['kills']} kill -9 ({numbers['kills_by_sbatch']} right after sbatch), "
        f"{numbers['slurm_calls']} Slurm calls, {numbers['requests']} requests "
        f"{numbers['requests_by_endpoint']}",
        f"  faults: {numbers['faults']}",
        f"  submitted {numbers['submit_delay_p50']} s after scheduled (median), at most "
        f"{numbers['submit_delay_max']} s; a cancelled job's Slurm job over "
        f"{numbers['cancel_delay_p50']} s after the cancel (median), at most "
        f"{numbers['cancel_delay_max']} s; drained {numbers['drained']}",
    ]
    return "\n".join(lines + _failures(numbers))


def _failures(numbers: dict[str, Any]) -> list[str]:
    lines = []
    for name in assertions_of(numbers["service"]):
        count = numbers["failed"].get(name, 0)
        if count:
            lines.append(f"  FAILED {name}: {count}")
            lines.extend(f"    {example}" for example in numbers["examples"][name])
    return lines


def report(numbers: dict[str, Any]) -> str:
    if numbers["service"] == "buildkite":
        return report_buildkite(numbers)
    lines = [
        f"seed {numbers['seed']} ({numbers['service']} {numbers['cc_version']}".rstrip()
        + f"): "
        f"{'PASS' if numbers['passed'] else 'FAIL'} in {numbers['wall_seconds']} s",
        f"  {numbers['jobs']} jobs, {numbers['runs']} runs ({numbers['short_runs']} shorter "
        f"than a poll, {numbers['requeued_jobs']} jobs requeued, {numbers['array_tasks']} array "
        f"tasks, {numbers['gpu_jobs']} GPU jobs, {numbers['cancelled_pending']} cancelled "
        f"while pending)",
        f"  {numbers['cycles']} cycles (exit codes {numbers['exit_codes']}), "
        f"{numbers['kills']} kill -9, {numbers['slurm_calls']} Slurm calls, "
        f"{numbers['requests']} requests {numbers['requests_by_endpoint']}",
        f"  faults: {numbers['faults']}",
        f"  stops {numbers['stop_delay_p50']} s after the end (median), at most "
        f"{numbers['stop_delay_max']} s; {numbers['stops_later_than_min_job_age']} later than "
        f"MinJobAge",
        f"  records {numbers['records']}, still running {numbers['records_running']}"
        + (f", refused by cc-backend's duplicate rule {numbers['duplicate_rule_refusals']}"
           if numbers["service"] != "bank" else "")
        + f", drained {numbers['drained']}",
    ]
    return "\n".join(lines + _failures(numbers))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", action="append", default=[],
                        help="a seed, or SEED@VERSION for that seed's cc-backend (repeatable)")
    parser.add_argument("--jobs", type=int, default=None)
    parser.add_argument("--short", action="store_true", help="the short scenario of make test")
    parser.add_argument("--cc-version", default=None, help="1.5.4 (default) or 1.4.4")
    parser.add_argument("--service", default="clustercockpit",
                        help="clustercockpit (default), bank or buildkite")
    parser.add_argument("--keep", default=None,
                        help="keep each seed's work folder in KEEP/seed-N (emptied first); "
                             "default: a temporary one")
    parser.add_argument("--json", default=None, help="write every seed's figures here")
    parser.add_argument("--recheck", default=None, metavar="WORK",
                        help="check a kept work folder (KEEP/seed-N) again; run nothing")
    parser.add_argument("--product", default=None,
                        help="run the slurm-sync of this folder (e.g. an older commit's "
                             "`git archive`) instead of the installed one")
    args = parser.parse_args(argv)
    if args.recheck:
        result = load_result(Path(args.recheck))
        findings = check(result)
        numbers = figures(result, findings)
        numbers["examples"] = {name: [str(f) for f in items[:EXAMPLES]]
                               for name, items in findings.items() if items}
        print(report(numbers))
        for items in findings.values():
            for finding in items[EXAMPLES:]:
                print(f"    {finding}")
        return 0 if numbers["passed"] else 1
    seeds = args.seed or ["1"]
    product = Path(args.product).resolve() if args.product else None
    results = []
    started = time.time()
    for text in seeds:
        seed_text, _, version = text.partition("@")
        seed = int(seed_text)
        changes: dict[str, Any] = {"service": args.service}
        if version or args.cc_version:
            changes["cc_version"] = version or args.cc_version
        if args.short:
            if args.jobs:
                changes["jobs"] = args.jobs
            scenario = Scenario.short(seed=seed, **changes)
        else:
            scenario = Scenario.long(seed=seed, jobs=args.jobs or 1000, **changes)
        print(f"seed {seed}: {scenario.jobs} jobs, {scenario.kills} kills, syncer stop "
              f"{scenario.syncer_outage:g} s, {scenario.service} down {scenario.cc_outage:g} s",
              flush=True)
        if args.keep:
            work = Path(args.keep) / f"seed-{seed}"
            if work.exists():
                shutil.rmtree(work)  # an earlier run's call log and state.db would mix in
            numbers = run_one(scenario, work, product=product)
        else:
            with tempfile.TemporaryDirectory(prefix=f"chaos-{seed}-") as folder:
                numbers = run_one(scenario, Path(folder), product=product)
        print(report(numbers), flush=True)
        results.append(numbers)
    print(f"{len(results)} seed(s) in {time.time() - started:.0f} s: "
          f"{sum(r['passed'] for r in results)} passed", flush=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0 if all(r["passed"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
