"""Mutated Slurm documents through the parser: records, skipped records with reasons, or one
SlurmError for the document; never another exception, and bounded memory and time.

Every captured or documented fixture (tests/fixtures/slurm/*/squeue-*.json, sacct.json) is
mutated (tests/fuzz/mutate.py) and read as text and as bytes. What comes out must be valid: each
job's fields JSON-ready and writable as UTF-8, numbers within 64 bits, times before the year
10000.
"""

from __future__ import annotations

import json
import math
import random
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.errors import SlurmError
from slurm_sync.slurm.parse import ParseResult, parse_sacct, parse_squeue
from slurm_sync.slurm.shapes import INT_MAX, INT_MIN, MAX_EPOCH
from tests.fuzz.conftest import SEED, inputs
from tests.fuzz.mutate import mutate

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
DOCUMENTS = sorted(
    p for p in FIXTURES.glob("*/*.json") if p.name.startswith(("squeue-", "sacct"))
)
PER_DOCUMENT = inputs(40)
SECONDS_PER_DOCUMENT = 10.0  # typical is milliseconds; generous so a busy machine cannot flake
MEMORY_FLOOR = 96 * 1024 * 1024  # one record may name 100,000 hosts (~35 MB of Job)
MEMORY_PER_BYTE = 200
TIMES = ("submit_time", "eligible_time", "start_time", "end_time")


def _valid(value: Any, where: str) -> None:
    """Every string writable as UTF-8, every number finite and within 64 bits."""
    stack = [(where, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")
        elif isinstance(item, bool) or item is None:
            pass
        elif isinstance(item, int):
            assert INT_MIN <= item <= INT_MAX, f"{path}={item}"
        elif isinstance(item, float):
            assert math.isfinite(item), f"{path}={item}"
        elif isinstance(item, dict):
            stack.extend((f"{path}.{k}", v) for k, v in item.items())
            stack.extend((f"{path}.<key>", k) for k in item)
        elif isinstance(item, (list, tuple)):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(item))
        else:
            raise AssertionError(f"{path}: {type(item).__name__} in the model")


def _check_result(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    for job in result.jobs:
        data = job.to_dict()
        _valid(data, f"job {job.job_id}")
        json.dumps(data, ensure_ascii=False).encode("utf-8")
        for key in TIMES:
            assert data[key] is None or 0 < data[key] <= MAX_EPOCH, (key, data[key])
    for skipped in result.skipped:
        assert isinstance(skipped.reason, str) and skipped.reason
        skipped.reason.encode("utf-8")
        assert skipped.job_id is None or isinstance(skipped.job_id, (int, str))
        json.dumps({"job_id": skipped.job_id, "reason": skipped.reason})
    _valid([result.producer.plugin, result.producer.release, result.producer.cluster,
            list(result.producer.version)], "producer")


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_mutated_documents_parse_skip_or_fail_cleanly(
    document: Path, tried: Counter[str]
) -> None:
    original = document.read_text(encoding="utf-8")
    parse = parse_sacct if document.name.startswith("sacct") else parse_squeue
    name = f"{document.parent.name}/{document.name}"
    for index in range(PER_DOCUMENT):
        rng = random.Random(f"{SEED}:{name}:{index}")
        text, what = mutate(original, rng)
        raw: str | bytes = text if index % 2 else text.encode("utf-8", "surrogatepass")
        context = f"seed {SEED}, {name}, input {index}: {what}"
        tracemalloc.start()
        started = time.perf_counter()
        try:
            result = parse(raw, cluster="fuzz")
        except SlurmError as exc:
            assert str(exc), context
            result = None
        except Exception as exc:  # pragma: no cover - what the suite is here to find
            raise AssertionError(f"{context}: {type(exc).__name__}: {exc}") from exc
        finally:
            seconds = time.perf_counter() - started
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        tried["parse"] += 1
        assert seconds < SECONDS_PER_DOCUMENT, f"{context}: {seconds:.1f} s"
        assert peak < MEMORY_FLOOR + MEMORY_PER_BYTE * len(raw), f"{context}: peak {peak} B"
        if result is not None:
            try:
                _check_result(result)
            except (AssertionError, ValueError) as exc:
                raise AssertionError(f"{context}: {exc}") from exc
