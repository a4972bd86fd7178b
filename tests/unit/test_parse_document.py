"""Document-level behaviour: errors, non-JSON, malformed records, states and exit codes."""

from __future__ import annotations

import json

import pytest

from slurm_sync.errors import SlurmError, SlurmFormatError
from slurm_sync.slurm.model import JobState
from slurm_sync.slurm.parse import exit_code, job_state, parse_sacct, parse_squeue, read_producer

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


def _job(job_id: int, name: str = "x") -> dict[str, object]:
    return {"job_id": job_id, "job_state": ["RUNNING"], "name": name, "nodes": "n1"}


def test_streamed_bytes_keep_any_unicode_exactly() -> None:
    names = ["Ωmega-déjà-✓", "🚀 launch", "naïve", "日本語"]
    doc = {"jobs": [_job(i + 1, n) for i, n in enumerate(names)], "meta": META_2411,
           "errors": []}
    raw = json.dumps(doc, ensure_ascii=False, indent=2).encode("utf-8")
    assert [j.name for j in parse_squeue(raw).jobs] == names


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    raw = b'{"jobs": [{"job_id": 1, "job_state": "RUNNING", "name": "caf\xe9"}], "errors": []}'
    assert parse_squeue(raw).jobs[0].name == "caf\ufffd"


def test_meta_after_jobs_still_names_the_cluster() -> None:
    doc = {"jobs": [_job(1)], "last_update": {"set": True, "number": 1}, "meta": META_2411,
           "errors": [], "warnings": [{"description": "slow"}]}
    result = parse_squeue(json.dumps(doc))
    assert result.jobs[0].cluster == "lab2411" and result.warnings == ("slow",)
    assert parse_squeue(json.dumps(doc), cluster="configured").jobs[0].cluster == "lab2411"
    assert parse_squeue(json.dumps({**doc, "meta": {}}), cluster="c").jobs[0].cluster == "c"


def test_errors_after_jobs_still_raise() -> None:
    doc = {"jobs": [_job(1)], "meta": META_2411, "errors": [{"description": "boom"}]}
    with pytest.raises(SlurmError, match="boom"):
        parse_squeue(json.dumps(doc))


def test_truncated_output_is_not_json() -> None:
    raw = json.dumps({"meta": META_2411, "jobs": [_job(1), _job(2)]})
    with pytest.raises(SlurmFormatError, match="not JSON"):
        parse_squeue(raw[: len(raw) // 2])


def test_streamed_and_decoded_documents_agree() -> None:
    sacct_meta = {"plugin": {"type": "openapi/dbv0.0.38"},
                  "Slurm": {"version": {"major": 22, "minor": 5, "micro": 7},
                            "release": "22.05.7"}}
    record = {"job_id": 3, "name": "s", "state": {"current": "COMPLETED", "reason": "None"},
              "time": {"start": 100, "end": 500, "elapsed": 300, "suspended": 0,
                       "eligible": 100, "submission": 90}, "nodes": "n1"}
    # 22.05.7 puts the eligible time in time.start: start is rebuilt as end - elapsed.
    for doc in ({"meta": sacct_meta, "errors": [], "jobs": [record]},
                {"jobs": [record], "meta": sacct_meta, "errors": []}):
        assert parse_sacct(json.dumps(doc)).jobs[0].start_time == 200
        assert parse_sacct(doc).jobs[0].start_time == 200


def test_nothing_found_is_an_empty_window_not_an_error() -> None:
    """22.05's sacct --json says an empty window with error 9003 and exit code 0."""
    doc = {"meta": {"plugin": {"type": "openapi/dbv0.0.38"},
                    "Slurm": {"version": {"major": 22, "minor": 5, "micro": 8},
                              "release": "22.05.8"}},
           "errors": [{"error": "Nothing found", "error_number": 9003,
                       "source": "Nothing found with query", "description": "Nothing found"}],
           "jobs": []}
    assert parse_sacct(json.dumps(doc)).jobs == ()
    doc["errors"].append({"description": "Unable to contact slurm controller"})
    with pytest.raises(SlurmError, match="Unable to contact"):
        parse_sacct(json.dumps(doc))


def test_sacct_requeued_run_is_its_own_finished_record() -> None:
    """22.05's sacct lists a requeued job's ended run (state REQUEUED) beside its new run."""
    meta = {"plugin": {"type": "openapi/dbv0.0.38"},
            "Slurm": {"version": {"major": 22, "minor": 5, "micro": 8}, "release": "22.05.8"}}
    first = {"job_id": 20, "name": "r", "state": {"current": "REQUEUED", "reason": "None"},
             "time": {"start": 100, "end": 130, "submission": 90, "eligible": 95}, "nodes": "n1"}
    again = {**first, "state": {"current": "RUNNING", "reason": "None"},
             "time": {"start": 260, "end": 0, "submission": 130, "eligible": 250}}
    jobs = parse_sacct(json.dumps({"meta": meta, "errors": [], "jobs": [first, again]})).jobs
    assert [(j.state, j.start_time, j.end_time) for j in jobs] == [
        (JobState.REQUEUED, 100, 130), (JobState.RUNNING, 260, None)]
    assert jobs[0].identity != jobs[1].identity
    assert jobs[0].state.finished and not jobs[0].state.active


def _v37_node(sockets: dict[str, str], cores: dict[str, str]) -> bytes:
    record = {"job_id": 5, "job_state": "RUNNING", "nodes": "n1", "start_time": 100,
              "job_resources": {"nodes": "n1", "allocated_nodes": {
                  "0": {"sockets": sockets, "cores": cores, "memory": 100, "cpus": 2}}}}
    return json.dumps({"meta": {"plugin": {"type": "openapi/v0.0.37"},
                                "Slurm": {"release": "21.08.8"}},
                       "jobs": [record]}).encode()


@pytest.mark.parametrize(("sockets", "cores", "cpu_ids"), [
    # unpatched 21.08: keys are the core inside the socket
    ({"1": "assigned"}, {"0": "assigned", "1": "assigned"}, (2, 3)),
    ({"0": "assigned"}, {"1": "assigned"}, (1,)),
    # with patches/: keys are node-wide; a key >= cores per socket can only be that
    ({"1": "assigned"}, {"2": "assigned", "3": "assigned"}, (2, 3)),
    ({"0": "assigned", "1": "assigned"}, {"0": "assigned", "2": "assigned"}, (0, 2)),
    # unpatched over two sockets: the keys collided, nothing is guessed
    ({"0": "assigned", "1": "assigned"}, {"0": "assigned"}, None),
])
def test_v0037_core_keys_patched_or_not(sockets: dict[str, str], cores: dict[str, str],
                                        cpu_ids: tuple[int, ...] | None) -> None:
    from slurm_sync.slurm.model import NodeTopology
    from slurm_sync.slurm.parse import resolve_cpu_ids

    (job,) = parse_squeue(_v37_node(sockets, cores)).jobs
    (job,) = resolve_cpu_ids([job], {"n1": NodeTopology(sockets=2, cores_per_socket=2)})
    (alloc,) = job.allocations
    assert alloc.cpu_ids == cpu_ids
    assert alloc.ambiguous is (cpu_ids is None)
