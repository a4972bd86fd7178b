"""Every Slurm version's documents, captured or documented, normalize to what expected.json says.

The ground truth in expected.json comes from outside the parser (``scontrol show job -d`` and the
scripts' known exit codes for captured folders; Slurm's source for documented ones); see
tests/fixtures/slurm/README.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.slurm.model import Job, NodeTopology
from slurm_sync.slurm.parse import ParseResult, parse_sacct, parse_squeue, resolve_cpu_ids

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
FOLDERS = sorted(p.parent for p in FIXTURES.glob("*/expected.json"))
# Every fixture cluster has one node of 2 sockets x 2 cores (README.md); in production this
# comes from one sinfo call.
TOPOLOGY = NodeTopology(sockets=2, cores_per_socket=2)


def _documents() -> list[tuple[Path, str, dict[str, Any], dict[str, Any]]]:
    cases = []
    for folder in FOLDERS:
        expected = json.loads((folder / "expected.json").read_text())
        for name, spec in expected["documents"].items():
            cases.append((folder, name, spec, expected))
    return cases


CASES = _documents()


def _parse(folder: Path, name: str, spec: dict[str, Any]) -> ParseResult:
    text = (folder / name).read_text(encoding="utf-8")
    parse = parse_sacct if spec["source"] == "sacct" else parse_squeue
    return parse(text)


def _with_topology(result: ParseResult) -> tuple[Job, ...]:
    hosts = {a.hostname for j in result.jobs for a in j.allocations}
    return resolve_cpu_ids(result.jobs, {h: TOPOLOGY for h in hosts})


def _find(jobs: tuple[Job, ...], want: dict[str, Any]) -> Job:
    found = [
        j
        for j in jobs
        if j.job_id == want["job_id"]
        and ("array_task_id" not in want or j.array_task_id == want["array_task_id"])
    ]
    if len(found) > 1 and "start_time" in want:
        # sacct lists a requeued job's earlier run as its own record: tell them by start.
        found = [j for j in found if j.start_time == want["start_time"]]
    assert len(found) == 1, f"job {want['job_id']} appears {len(found)} times"
    return found[0]


def _actual(job: Job, key: str) -> Any:
    if key == "state":
        return job.state.value
    if key == "flags":
        return list(job.flags)
    if key == "hosts":
        return list(job.hosts)
    if key in ("return_code", "signal"):
        return getattr(job.exit_code, key)
    if key == "alloc":
        return {
            a.hostname: {
                "cpu_ids": list(a.cpu_ids) if a.cpu_ids is not None else None,
                "gpu_ids": list(a.gpu_ids),
            }
            for a in job.allocations
        }
    if key == "alloc_ambiguous":
        return any(a.ambiguous for a in job.allocations)
    return getattr(job, key)


@pytest.mark.parametrize(
    ("folder", "name", "spec", "expected"),
    CASES,
    ids=[f"{c[0].name}/{c[1]}" for c in CASES],
)
def test_document_normalizes_to_expected(
    folder: Path, name: str, spec: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Each job listed in expected.json has exactly the values given there."""
    result = _parse(folder, name, spec)
    assert result.producer.release == expected["release"]
    assert result.producer.plugin.removeprefix("db") == expected["producer"]
    assert len(result.skipped) == expected.get("skipped", {}).get(name, 0), result.skipped
    jobs = _with_topology(result)
    mismatches = []
    for want in spec["jobs"]:
        job = _find(jobs, want)
        for key, value in want.items():
            if key == "flags":
                if not set(value) <= set(job.flags):
                    mismatches.append(f"{job.display_id}.flags: {job.flags} lacks {value}")
                continue
            got = _actual(job, key)
            if got != value:
                mismatches.append(
                    f"{job.display_id} ({job.name}).{key}: got {got!r}, want {value!r}"
                )
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("folder", FOLDERS, ids=[f.name for f in FOLDERS])
def test_every_document_in_a_folder_is_described(folder: Path) -> None:
    """A fixture document without expectations would be a test that cannot fail."""
    expected = json.loads((folder / "expected.json").read_text())
    on_disk = {p.name for p in folder.glob("*.json")} - {"expected.json"}
    assert on_disk == set(expected["documents"]), "documents and expected.json disagree"
    assert all(spec["jobs"] for spec in expected["documents"].values())


def test_all_producers_are_covered() -> None:
    """openapi v0.0.37 and v0.0.38, and data_parser v0.0.39 to v0.0.45, each have fixtures."""
    producers = {
        json.loads((f / "expected.json").read_text())["producer"] for f in FOLDERS
    }
    wanted = {f"v0.0.{n}" for n in range(37, 46)}
    assert producers == wanted, f"no fixtures for {sorted(wanted - producers)}"
