"""Document-level behaviour: errors, non-JSON, malformed records, states and exit codes."""

from __future__ import annotations

import json

import pytest

from sync.errors import SlurmError, SlurmFormatError
from sync.slurm.model import JobState
from sync.slurm.parse import exit_code, job_state, parse_sacct, parse_squeue, read_producer

META_2411 = {
    "plugin": {"type": "", "name": "", "data_parser": "data_parser/v0.0.42"},
    "slurm": {"version": {"major": "24", "micro": "5", "minor": "11"}, "release": "24.11.5",
              "cluster": "lab2411"},
}


def test_not_json_raises_one_clear_error() -> None:
    with pytest.raises(SlurmFormatError, match="not JSON"):
        parse_squeue("squeue: error: Invalid user: bob\n")


def test_slurm_errors_raise_with_description() -> None:
    doc = {"meta": META_2411, "errors": [{"description": "Unable to contact slurm controller",
                                          "error_number": 1007}], "jobs": []}
    with pytest.raises(SlurmError, match="Unable to contact slurm controller"):
        parse_squeue(json.dumps(doc))


def test_missing_jobs_list_is_an_error_not_an_empty_cluster() -> None:
    with pytest.raises(SlurmFormatError, match="no jobs list"):
        parse_sacct(json.dumps({"meta": META_2411, "errors": []}))


def test_text_before_json_is_skipped() -> None:
    doc = json.dumps({"meta": META_2411, "errors": [], "jobs": []})
    result = parse_squeue("CLUSTER: lab2411\n" + doc)
    assert result.jobs == () and result.producer.cluster == "lab2411"


def test_bad_records_are_skipped_and_the_rest_parses() -> None:
    good = {"job_id": 5, "job_state": ["RUNNING"], "name": "x", "nodes": "n1"}
    doc = {"meta": META_2411, "errors": [], "jobs": [
        good, "not an object", {"job_id": 6, "job_state": 12}, {"name": "no id"}]}
    result = parse_squeue(json.dumps(doc))
    assert [j.job_id for j in result.jobs] == [5]
    assert [s.index for s in result.skipped] == [1, 2, 3]
    assert "job_state" in result.skipped[1].reason


def test_producer_of_each_meta_layout() -> None:
    old = {"meta": {"plugin": {"type": "openapi/v0.0.38", "name": "Slurm OpenAPI v0.0.38"},
                    "Slurm": {"version": {"major": 22, "micro": 8, "minor": 5},
                              "release": "22.05.8"}}}
    mid = {"meta": {"plugins": {"data_parser": "data_parser/v0.0.39"},
                    "Slurm": {"version": {"major": 23, "micro": 6, "minor": 2},
                              "release": "23.02.6"}}}
    assert read_producer(old).plugin == "v0.0.38" and read_producer(old).version == (22, 5, 8)
    assert read_producer(mid).plugin == "v0.0.39" and read_producer(mid).version == (23, 2, 6)
    assert read_producer({"meta": META_2411}).version == (24, 11, 5)


@pytest.mark.parametrize(
    ("raw", "state", "flags"),
    [
        ("RUNNING", JobState.RUNNING, ()),
        (["PENDING", "REQUEUED"], JobState.PENDING, ("REQUEUED",)),
        (["RUNNING", "COMPLETING"], JobState.COMPLETING, ("COMPLETING",)),
        ("COMPLETING", JobState.COMPLETING, ("COMPLETING",)),  # 22.05 prints the flag alone
        ("REQUEUED", JobState.PENDING, ("REQUEUED",)),
        ("CANCELLED by 1000", JobState.CANCELLED, ()),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY, ()),
        ("SOMETHING_NEW", JobState.UNKNOWN, ("SOMETHING_NEW",)),
    ],
)
def test_job_state(raw: object, state: JobState, flags: tuple[str, ...]) -> None:
    assert job_state(raw) == (state, flags)


def test_exit_code_layouts() -> None:
    done, failed = JobState.COMPLETED, JobState.FAILED
    assert exit_code(3 << 8, failed).return_code == 3  # raw wait status
    assert exit_code(9, failed).signal == 9
    assert exit_code({"set": True, "infinite": False, "number": 2 << 8}, failed).return_code == 2
    new = {"status": ["ERROR"], "return_code": {"set": True, "infinite": False, "number": 3},
           "signal": {"id": {"set": False, "infinite": False, "number": 0}, "name": ""}}
    assert exit_code(new, failed).return_code == 3
    signalled = {"status": ["SIGNALED"], "return_code": {"set": True, "number": 0},
                 "signal": {"id": {"set": True, "number": 9}, "name": "KILL"}}
    assert (exit_code(signalled, failed).return_code, exit_code(signalled, failed).signal) == (
        None, 9)
    # Up to 23.02 sacct says SUCCESS for any normal exit: believed only for COMPLETED.
    old_success = {"status": "SUCCESS", "return_code": 0}
    assert exit_code(old_success, done).return_code == 0
    assert exit_code(old_success, failed).return_code is None
    assert exit_code(0, JobState.RUNNING).return_code is None  # not ended yet
