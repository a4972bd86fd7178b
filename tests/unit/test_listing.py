"""squeue's plain listing (``squeue -h -o LISTING_FORMAT``), read into listed ``Job`` records."""

from __future__ import annotations

import pytest

from slurm_sync.slurm.listing import parse_listing
from slurm_sync.slurm.model import JobState


def _line(job_id: int, state: str, start: str = "1796266691", end: str = "N/A",
          task: str = "N/A", name: str = "job") -> bytes:
    return (f"{job_id}|{job_id}|{task}|{state}|{start}|{end}|main|alice|lab|1|4|n1|{name}\n"
            .encode())


@pytest.mark.parametrize(("word", "state"), [
    ("RUNNING", JobState.RUNNING),
    # squeue's %T prints a flag in place of the base state: while PrologSlurmctld runs (the
    # moment the hook announces a start) a running job reads CONFIGURING
    ("CONFIGURING", JobState.RUNNING),
    ("RESIZING", JobState.RUNNING),
    ("SIGNALING", JobState.RUNNING),
    ("COMPLETING", JobState.COMPLETING),
    ("REQUEUED", JobState.PENDING),
    ("PENDING", JobState.PENDING),
    ("COMPLETED", JobState.COMPLETED),
])
def test_a_state_word_reads_as_the_json_and_scontrol_read_it(word: str, state: JobState) -> None:
    result = parse_listing(_line(7, word, end="1796266700"), cluster="c")
    assert not result.skipped
    assert result.jobs[0].state is state


def test_a_word_no_state_explains_is_skipped_and_named() -> None:
    result = parse_listing(_line(7, "RUNNING") + _line(8, "BOGUS"), cluster="c")
    assert [j.job_id for j in result.jobs] == [7]
    assert result.skipped[0].job_id == 8 and "BOGUS" in result.skipped[0].reason


def test_times_tasks_and_names() -> None:
    result = parse_listing(
        _line(9, "RUNNING", task="3", name="a|b")
        + _line(10, "PENDING", start="1796266999", task="4-6%2")
        + _line(11, "COMPLETED", end="1796267000"), cluster="c")
    running, pending, done = result.jobs
    assert (running.array_task_id, running.name, running.end_time) == (3, "a|b", None)
    assert (pending.start_time, pending.array_tasks_pending) == (None, "4-6%2")
    assert done.end_time == 1796267000
