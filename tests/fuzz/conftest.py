"""The fuzz suite's knobs and its count of inputs tried.

    pytest tests/fuzz                          # short: part of `make test`, well under a minute
    SLURM_SYNC_FUZZ=long pytest tests/fuzz     # `make fuzz`: twenty times as many inputs
    SLURM_SYNC_FUZZ=5 pytest tests/fuzz        # five times as many
    SLURM_SYNC_FUZZ_SEED=7 pytest tests/fuzz   # other inputs (the default seed is 1)

Each input is rebuilt from (seed, name, index); a failure names all three. The count of inputs
each test tried is printed at the end of the run (the figure BENCHMARKS.md quotes).
"""

from __future__ import annotations

import os
from collections import Counter

import pytest

_SCALE = os.environ.get("SLURM_SYNC_FUZZ", "1")
SCALE = 20 if _SCALE == "long" else max(1, int(_SCALE))
SEED = int(os.environ.get("SLURM_SYNC_FUZZ_SEED", "1"))

TRIED: Counter[str] = Counter()
"""Inputs tried so far, by kind (``parse``, ``jobs``, ``check``)."""


def inputs(short: int) -> int:
    """How many inputs a test tries: ``short`` in a short run, scaled otherwise."""
    return short * SCALE


@pytest.fixture
def tried() -> Counter[str]:
    return TRIED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TRIED:
        parts = ", ".join(f"{kind} {count}" for kind, count in sorted(TRIED.items()))
        terminalreporter.write_line(
            f"fuzz: {sum(TRIED.values())} inputs tried ({parts}); seed {SEED}, scale {SCALE}")
