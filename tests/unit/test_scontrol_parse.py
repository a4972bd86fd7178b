"""``scontrol show job -d`` text normalizes to the same ``Job`` records as ``squeue --json``.

Each captured folder (22.05, 24.11, 26.05) holds both documents taken at one moment
(``scontrol-show-job.txt``, ``squeue-pair.json``; see its ORIGIN.md): every job of both must
agree field by field. The fields scontrol cannot give as squeue's JSON does are listed in
``NOT_COMPARED`` or have their exact, documented difference checked in ``RULES``. Then hostile
text: each bad record is skipped with a reason naming the job and the field.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import fields, replace
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.errors import SlurmCommandError, SlurmFormatError
from slurm_sync.slurm.gres import MAX_GPU_INDICES
from slurm_sync.slurm.model import ExitCode, Job, JobState, NodeTopology
from slurm_sync.slurm.parse import ParseResult, parse_squeue, resolve_cpu_ids
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import CommandResult, Runner
from slurm_sync.slurm.scontrol import PRODUCER, parse_show_config, parse_show_job

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
VERSIONS = ("22.05", "24.11", "26.05")
# Every lab node: 2 sockets x 2 cores, 1 thread (fixtures README); sinfo in production.
TOPOLOGY = NodeTopology(sockets=2, cores_per_socket=2)
# The captures' time zone (each ORIGIN.md): scontrol prints local times without a zone.
TZ = timezone.utc


def _cluster(version: str) -> str:
    return "lab" + version.replace(".", "")


def _scontrol_text(version: str) -> bytes:
    return (FIXTURES / version / "scontrol-show-job.txt").read_bytes()


def _topology(version: str) -> dict[str, NodeTopology]:
    return {f"{_cluster(version)}n1": TOPOLOGY}


def _show(text: bytes | str, version: str = "24.11", **kw: Any) -> ParseResult:
    options: dict[str, Any] = {"cluster": _cluster(version), "topology": _topology(version),
                               "tz": TZ}
    options.update(kw)
    return parse_show_job(text, **options)


def _pair(version: str) -> tuple[dict[int, Job], dict[int, Job], dict[int, dict[str, Any]]]:
    """(squeue's jobs, scontrol's jobs, squeue's raw records), by job id."""
    raw = (FIXTURES / version / "squeue-pair.json").read_bytes()
    squeue = parse_squeue(raw, cluster=_cluster(version))
    assert not squeue.skipped
    squeue_jobs = resolve_cpu_ids(squeue.jobs, _topology(version))
    shown = _show(_scontrol_text(version), version)
    assert not shown.skipped, shown.skipped
    assert not shown.warnings
    records = {r["job_id"]: r for r in json.loads(raw)["jobs"]}
    return ({j.job_id: j for j in squeue_jobs}, {j.job_id: j for j in shown.jobs}, records)


# --- equality of the two captures ---------------------------------------------------------------

# Fields not compared, and why: scontrol's text cannot say them as squeue's JSON does.
NOT_COMPARED = {
    "source": "names the producer, 'squeue' or 'scontrol', by design",
}

Rule = Callable[[Job, Job, dict[str, Any], str], None]


def _flags(sq: Job, sc: Job, record: dict[str, Any], version: str) -> None:
    # scontrol prints one state word: a flag in place of the base state, never several.
    assert len(sc.flags) <= 1 and set(sc.flags) <= set(sq.flags)
    if len(sq.flags) <= 1:
        assert sc.flags == sq.flags


def _reason(sq: Job, sc: Job, record: dict[str, Any], version: str) -> None:
    # Where Slurm set a description, scontrol prints it (spaces made '_') for the code.
    description = record.get("state_description") or ""
    if description:
        assert sq.reason == record["state_reason"]
        assert sc.reason == description.replace(" ", "_")
    else:
        assert sc.reason == sq.reason


def _one_tres_string(attribute: str) -> Rule:
    # 22.05 prints one TRES= line: the allocated TRES once the job has nodes, the requested
    # before. The other one is not compared there (scontrol leaves it empty).
    def rule(sq: Job, sc: Job, record: dict[str, Any], version: str) -> None:
        single_line = b"\n   TRES=" in _scontrol_text(version)
        has_nodes = bool(sc.hosts)
        unknown = single_line and (has_nodes if attribute == "tres_requested" else not has_nodes)
        if unknown:
            assert dict(getattr(sc, attribute)) == {}
        else:
            assert dict(getattr(sc, attribute)) == dict(getattr(sq, attribute))
    return rule


def _shared(sq: Job, sc: Job, record: dict[str, Any], version: str) -> None:
    if version == "22.05" and sq.shared == "shared":
        # openapi v0.0.38 writes job_share_string's YES as "shared"; parse_squeue keeps the word
        assert sc.shared == "oversubscribe"
    elif version == "26.05" and record["shared"] == [] and sc.shared is not None:
        # data_parser v0.0.45 gives shared=[] for --oversubscribe and --exclusive jobs alike;
        # scontrol's OverSubscribe=YES / Exclusive=NODE still tell them apart
        assert (sc.name, sc.shared) in {("held job", "oversubscribe"), ("exclusive", "none")}
    else:
        assert sc.shared == sq.shared


def _cpus(sq: Job, sc: Job, record: dict[str, Any], version: str) -> None:
    if record.get("cpus") is None and record.get("tasks") is None:
        # openapi v0.0.38 (22.05, jobs.c) writes cpus as null while the job's task count is
        # unset (NO_VAL); scontrol prints NumCPUs (num_cpus) all the same
        assert sq.cpus is None and sc.cpus is not None and sc.cpus >= 1
    else:
        assert sc.cpus == sq.cpus


RULES: dict[str, Rule] = {
    "cpus": _cpus,
    "flags": _flags,
    "reason": _reason,
    "tres_requested": _one_tres_string("tres_requested"),
    "tres_allocated": _one_tres_string("tres_allocated"),
    "shared": _shared,
}
COMPARED = tuple(f.name for f in fields(Job) if f.name not in NOT_COMPARED)


def test_every_model_field_is_compared_or_listed_as_not() -> None:
    """A field added to Job fails here until this test says how scontrol gives it."""
    names = {f.name for f in fields(Job)}
    assert set(NOT_COMPARED) <= names
    assert set(RULES) <= set(COMPARED)
    assert set(COMPARED) | set(NOT_COMPARED) == names


@pytest.mark.parametrize("version", VERSIONS)
def test_both_captures_hold_the_same_jobs_and_every_case(version: str) -> None:
    squeue, shown, _ = _pair(version)
    assert sorted(shown) == sorted(squeue)
    jobs = list(shown.values())
    running = [j for j in jobs if j.state is JobState.RUNNING]
    # the cases the capture was made for (ORIGIN.md)
    assert any(j.array_job_id is None and j.node_count == 1 and j.cpus == 1 for j in jobs)
    assert any(j.array_job_id is None and (j.cpus or 0) >= 2 for j in running)
    tasks = [j for j in running if j.array_job_id is not None]
    assert len(tasks) >= 2 and any(j.array_tasks_pending for j in jobs)
    assert any(a.gpu_ids for j in running for a in j.allocations)
    assert any(j.state is JobState.PENDING for j in jobs)
    assert any(j.state.finished and j.exit_code.return_code == 3 for j in jobs)
    assert any(j.state.finished and j.exit_code.signal == 9 for j in jobs)
    assert any(j.comment and j.admin_comment for j in jobs)
    assert any(" " in j.name for j in jobs)
    assert any(j.restart_count == 1 for j in jobs)


@pytest.mark.parametrize("field", COMPARED)
@pytest.mark.parametrize("version", VERSIONS)
def test_field_agrees_with_squeue_json(version: str, field: str) -> None:
    squeue, shown, records = _pair(version)
    rule = RULES.get(field)
    mismatches = []
    for job_id, sq in squeue.items():
        sc = shown[job_id]
        try:
            if rule is not None:
                rule(sq, sc, records[job_id], version)
            else:
                assert getattr(sc, field) == getattr(sq, field)
        except AssertionError:
            mismatches.append(f"{job_id} ({sq.name}): squeue {getattr(sq, field)!r}, "
                              f"scontrol {getattr(sc, field)!r}")
    assert not mismatches, "\n".join(mismatches)


@pytest.mark.parametrize("version", VERSIONS)
def test_allocations_are_the_cores_and_gpus_scontrol_prints(version: str) -> None:
    """Not only equal to squeue's: the values themselves, as the capture placed them."""
    _, shown, _ = _pair(version)
    node = f"{_cluster(version)}n1"
    by_name: dict[tuple[str, int | None], Job] = {(j.name, j.array_task_id): j
                                                  for j in shown.values()}
    plain = by_name[("plain job with spaces", None)].allocations
    assert [(a.hostname, a.cpu_ids, a.cores, a.gpu_ids) for a in plain] == [
        (node, (0, 2), ((0, 0), (1, 0)), ())]
    gpus = {by_name[("array", t)].allocations[0].gpu_ids for t in (0, 1)}
    assert gpus == {(0, 1), (2, 3)}
    assert by_name[("array", 0)].gres_detail == ("gpu:a100:2(IDX:0-1)",)


# --- parse_show_job on its own ------------------------------------------------------------------

TEXT_2411 = _scontrol_text("24.11").decode()


def _record(name: str, text: str = TEXT_2411) -> str:
    """The record (with its blank line) of the job named ``name``."""
    for block in text.split("\n\n"):
        if f" JobName={name}\n" in block + "\n":
            return block + "\n\n"
    raise KeyError(name)


PLAIN = _record("plain job with spaces")


def _only(result: ParseResult) -> Job:
    assert not result.skipped, result.skipped
    (job,) = result.jobs
    return job


def _skipped(result: ParseResult, *words: str) -> str:
    (skipped,) = result.skipped
    assert not result.jobs
    for word in words:
        assert word in skipped.reason, skipped.reason
    return skipped.reason


def test_one_record_as_scontrol_show_job_ID_prints_it() -> None:
    job = _only(_show(PLAIN))
    assert job.name == "plain job with spaces"
    assert job.comment == "capture: a comment, with = signs and spaces"
    assert job.admin_comment == "set by root"
    assert (job.user, job.uid, job.account, job.partition, job.qos) == (
        "alice", 5001, "lab", "main", "normal")
    assert job.time_limit == 30 and job.cpus == 2 and job.node_count == 1
    assert job.source == "scontrol" and job.cluster == "lab2411"
    assert job.start_time == 1796266685 and job.end_time is None  # 2026-12-03T02:58:05 UTC
    assert job.tres_allocated == {"cpu": 2, "node": 1, "billing": 2}


def test_times_are_read_in_the_given_zone() -> None:
    utc = _only(_show(PLAIN))
    east = _only(_show(PLAIN, tz=timezone(timedelta(hours=2))))
    assert utc.submit_time is not None and east.submit_time == utc.submit_time - 7200


def test_empty_output_and_no_jobs_are_an_empty_result() -> None:
    for text in (b"", b"\n", b"No jobs in the system\n"):
        result = _show(text)
        assert result.jobs == () and result.skipped == ()
        assert result.producer.plugin == PRODUCER


@pytest.mark.parametrize("text", [
    b'{"jobs": []}',
    b"slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
    b"   UserId=alice(5001)\n\n",
])
def test_text_that_is_not_scontrol_output_raises(text: bytes) -> None:
    with pytest.raises(SlurmFormatError, match="scontrol"):
        _show(text)


def test_without_topology_cpu_ids_are_unknown_and_said_so() -> None:
    result = _show(PLAIN, topology=None)
    (alloc,) = _only(result).allocations
    assert alloc.cpu_ids is None and alloc.cores == () and alloc.hostname == "lab2411n1"
    assert result.warnings and "lab2411n1" in result.warnings[0]


def test_cpu_ids_are_threads_turned_into_cores() -> None:
    """Slurm's CPU ids count threads (core x threads + thread): 4-7 on a 2-thread node are
    cores 2 and 3, the first two of socket 1 (4 cores per socket)."""
    text = PLAIN.replace("CPU_IDs=0,2 ", "CPU_IDs=4-7 ")
    layout = NodeTopology(sockets=2, cores_per_socket=4, threads_per_core=2)
    (alloc,) = _only(_show(text, topology={"lab2411n1": layout})).allocations
    assert alloc.cpu_ids == (2, 3) and alloc.cores == ((0, 2), (0, 3))


def test_a_node_line_for_several_hosts() -> None:
    text = (PLAIN.replace("NodeList=lab2411n1", "NodeList=n[1-3]")
            .replace("Nodes=lab2411n1 CPU_IDs=0,2 Mem=0 GRES=",
                     "Nodes=n[1-2] CPU_IDs=0-3 Mem=100 GRES=gpu:1(IDX:1)\n"
                     "     Nodes=n3 CPU_IDs=1 Mem=50 GRES="))
    job = _only(_show(text, topology={f"n{i}": TOPOLOGY for i in (1, 2, 3)}))
    assert job.hosts == ("n1", "n2", "n3")
    assert [(a.hostname, a.cpu_ids, a.memory_mb, a.gpu_ids) for a in job.allocations] == [
        ("n1", (0, 1, 2, 3), 100, (1,)), ("n2", (0, 1, 2, 3), 100, (1,)), ("n3", (1,), 50, ())]
    assert job.gres_detail == ("gpu:1(IDX:1)", "gpu:1(IDX:1)", "")


def test_a_name_with_a_line_break_round_trips() -> None:
    text = PLAIN.replace("JobName=plain job with spaces\n",
                         "JobName=two\nlines  and\ta tab\n")
    assert _only(_show(text)).name == "two\nlines  and\ta tab"


def test_a_value_among_tokens_keeps_its_tabs_and_spaces() -> None:
    """A word that is no ``Key=`` belongs to the value before it, spaces and tabs as printed."""
    text = PLAIN.replace("Reason=None ", "Reason=odd\tword  and more ")
    assert _only(_show(text)).reason == "odd\tword  and more"


def test_the_trailing_space_before_25_11_is_dropped_once() -> None:
    """22.05 and 24.11 print 'Comment=%s ' and end each record with a line of spaces; 25.11 and
    later print neither: a comment's own trailing space survives on both shapes."""
    old = PLAIN.replace("Comment=capture: a comment, with = signs and spaces \n",
                        "Comment=ends with a space  \n")
    assert old.endswith("   \n\n")
    assert _only(_show(old)).comment == "ends with a space "
    new = _record("plain job with spaces", _scontrol_text("26.05").decode())
    assert not new.endswith("   \n\n")
    new = new.replace("Comment=capture: a comment, with = signs and spaces\n",
                      "Comment=ends with a space \n")
    assert _only(_show(new, "26.05")).comment == "ends with a space "


def test_26_05_shape_reads_exclusive() -> None:
    text = _scontrol_text("26.05").decode()
    jobs = {j.name: j for j in _show(text, "26.05").jobs}
    assert jobs["exclusive"].shared == "none" and jobs["held job"].shared == "oversubscribe"
    assert jobs["fail3"].shared is None


def test_array_meta_record_and_a_task() -> None:
    jobs = _show(TEXT_2411).jobs
    meta = next(j for j in jobs if j.array_tasks_pending)
    assert (meta.job_id, meta.array_job_id, meta.array_task_id) == (1269, 1269, None)
    assert meta.array_tasks_pending == "2-3%2" and meta.display_id == "1269_[2-3%2]"
    task = next(j for j in jobs if j.array_task_id == 1)
    assert task.display_id == "1269_1" and task.job_id == 1271


def test_het_job_ids_on_the_first_line() -> None:
    text = PLAIN.replace("JobId=1268 JobName=", "JobId=1268 HetJobId=1268 HetJobOffset=1 JobName=")
    job = _only(_show(text))
    assert (job.het_job_id, job.het_job_offset, job.display_id) == (1268, 1, "1268+1")


def test_the_22_05_single_tres_line() -> None:
    text = _scontrol_text("22.05").decode()
    jobs = {j.name: j for j in _show(text, "22.05").jobs}
    assert jobs["fail3"].tres_allocated == {"cpu": 1, "node": 1, "billing": 1}
    assert jobs["fail3"].tres_requested == {}
    assert jobs["held job"].tres_requested == {"cpu": 1, "mem": 4000, "node": 1, "billing": 1}
    assert jobs["held job"].tres_allocated == {}


# --- hostile text: skipped with a reason naming the job and the field ----------------------------


def test_a_truncated_record_is_skipped_and_the_rest_read() -> None:
    records = TEXT_2411.rstrip("\n").split("\n\n")
    last_id = records[-1].split(" ", 1)[0]
    for cut in (TEXT_2411[: TEXT_2411.rindex("Partition=")],  # at a line's start
                TEXT_2411[: TEXT_2411.rindex("StdOut=") + 9],  # inside a line
                TEXT_2411.rstrip("\n")):  # all there but the blank line after it
        result = _show(cut)
        (skipped,) = result.skipped
        assert f"({last_id})" in skipped.reason and "cut short" in skipped.reason
        assert len(result.jobs) == len(records) - 1


def test_a_record_missing_a_required_key_is_skipped() -> None:
    text = PLAIN.replace("   SubmitTime=", "   Submitted=")
    _skipped(_show(text), "JobId=1268", "SubmitTime", "missing")


def test_a_huge_cpu_range_is_refused_before_it_is_expanded() -> None:
    text = PLAIN.replace("CPU_IDs=0,2 ", "CPU_IDs=0-999999999 ")
    _skipped(_show(text), "JobId=1268", "CPU_IDs", "beyond the node's 4 CPUs")
    # without a topology the ids are not expanded, only bounded (parse.MAX_INDEX)
    _skipped(_show(text, topology=None), "JobId=1268", "CPU_IDs", "beyond 16777216")
    text = PLAIN.replace("CPU_IDs=0,2 ", "CPU_IDs=0-99999999999 ")
    _skipped(_show(text), "JobId=1268", "CPU_IDs", "not a list of CPU ids")


def test_a_huge_gpu_index_range_is_refused() -> None:
    text = PLAIN.replace("Mem=0 GRES=\n", "Mem=0 GRES=gpu:a100:2(IDX:0-99999999)\n")
    _skipped(_show(text), "JobId=1268", "GRES", f"more than {MAX_GPU_INDICES}")


def test_a_huge_host_range_is_refused() -> None:
    text = PLAIN.replace("NodeList=lab2411n1", "NodeList=n[0-99999999]")
    _skipped(_show(text), "JobId=1268", "NodeList", "more than")


def test_bytes_that_are_not_utf8() -> None:
    """In a name they read as U+FFFD, as parse_squeue reads them; in a state, the record is
    skipped naming the field."""
    name = PLAIN.encode().replace(b"JobName=plain", b"JobName=pl\xffain\xc3")
    assert _only(_show(name)).name == "pl\ufffdain\ufffd job with spaces"
    state = PLAIN.encode().replace(b"JobState=RUNNING", b"JobState=RUN\xffNING")
    _skipped(_show(state), "JobId=1268", "JobState")


@pytest.mark.parametrize("word", ["EXPEDITING", "?", "FROBNICATED"])
def test_a_state_word_without_a_known_base_state_is_skipped(word: str) -> None:
    text = PLAIN.replace("JobState=RUNNING", f"JobState={word}")
    _skipped(_show(text), "JobId=1268", "JobState", "not a state this parser knows")


@pytest.mark.parametrize(("old", "new", "field"), [
    ("SubmitTime=2026-12-03T02:58:04", "SubmitTime=yesterday", "SubmitTime"),
    ("SubmitTime=2026-12-03T02:58:04", "SubmitTime=2026-13-45T02:58:04", "SubmitTime"),
    ("ExitCode=0:0", "ExitCode=zero", "ExitCode"),
    ("TimeLimit=00:30:00", "TimeLimit=soon", "TimeLimit"),
    ("UserId=alice(5001)", "UserId=alice", "UserId"),
    ("Restarts=0", "Restarts=99999999999999999999999", "Restarts"),
    ("NumCPUs=2", "NumCPUs=many", "NumCPUs"),
    ("Mem=0 GRES=", "Mem=lots GRES=", "Nodes"),
])
def test_a_bad_value_is_skipped_naming_the_job_and_the_field(
    old: str, new: str, field: str
) -> None:
    assert old in PLAIN
    _skipped(_show(PLAIN.replace(old, new)), "scontrol.jobs[0] (JobId=1268)", field)


def test_a_comment_imitating_a_later_key_is_skipped() -> None:
    """What the lab printed for --comment=$'line1\\n   JobState=COMPLETED' (a user's comment)."""
    text = PLAIN.replace("signs and spaces \n", "x\n   JobState=COMPLETED \n")
    _skipped(_show(text), "JobId=1268", "JobState", "twice")


def test_a_comment_imitating_allocation_lines_is_skipped() -> None:
    text = PLAIN.replace("signs and spaces \n",
                         "x\n     Nodes=lab2411n1 CPU_IDs=0-3 Mem=0 GRES=gpu:4(IDX:0-3) \n")
    _skipped(_show(text), "JobId=1268", "Nodes", "not after JOB_GRES=")


def test_first_line_keys_elsewhere_are_skipped() -> None:
    text = PLAIN.replace("signs and spaces \n", "x\n   ArrayJobId=5 ArrayTaskId=1 \n")
    _skipped(_show(text), "JobId=1268", "ArrayJobId")


def test_a_name_imitating_a_whole_record_is_skipped_with_its_job() -> None:
    """A job name with a blank line and a record of its own: the text after the blank line is
    no record (it does not start with JobId=) or repeats a job id; nothing of it is read."""
    fake = _record("held job").replace("JobId=1272 JobName=held job", "JobId=999 JobName=fake")
    text = PLAIN.replace("JobName=plain job with spaces\n",
                         "JobName=x\n\n" + fake.rstrip("\n") + "\n")
    result = _show(text)
    assert result.jobs == ()
    assert {s.job_id for s in result.skipped} >= {1268, 999}
    # a record of another job's id: both are skipped
    twin = _record("held job") + PLAIN.replace("JobId=1268 ", "JobId=1272 ")
    result = _show(twin)
    assert result.jobs == () and len(result.skipped) == 2
    assert all("more than once" in s.reason for s in result.skipped)


def test_a_line_that_is_no_key_value_after_a_non_text_key_is_skipped() -> None:
    text = PLAIN.replace("   Partition=main", "   Partition=main\nstray text")
    _skipped(_show(text), "JobId=1268", "line")


def test_skipped_records_leave_the_others() -> None:
    bad = PLAIN.replace("JobState=RUNNING", "JobState=?")
    result = _show(_record("fail3") + bad + _record("held job"))
    assert [j.name for j in result.jobs] == ["fail3", "held job"]
    assert [s.index for s in result.skipped] == [1]


# --- SlurmReader.show_jobs ----------------------------------------------------------------------


class FakeRunner(Runner):
    """Answers scontrol with the 24.11 capture (or ``error``) and sinfo with the lab node."""

    def __init__(self, error: SlurmCommandError | None = None) -> None:
        super().__init__()
        self.error = error
        self.asked: list[list[str]] = []

    def run(self, command: str, args: Sequence[str], **_: Any) -> CommandResult:
        self.asked.append([command, *args])
        if command == "sinfo":
            out = b"lab2411n1|2|2|1\n"
        elif self.error is not None:
            raise self.error
        elif len(args) == 4:
            out = _record("plain job with spaces").encode()
        else:
            out = _scontrol_text("24.11")
        return CommandResult((command, *args), 0, out, "", 0.01)


def _reader(error: SlurmCommandError | None = None) -> tuple[SlurmReader, FakeRunner]:
    runner = FakeRunner(error)
    return SlurmReader(runner, cluster="lab2411"), runner


@pytest.mark.parametrize(("wanted", "ids"), [
    (None, [1265, 1266, 1267, 1268, 1269, 1270, 1271, 1272, 1273]),
    ([1268, 1265], [1265, 1268]),
    ({1269, 4242}, [1269, 1270, 1271]),  # an array's id takes its tasks, as squeue -j does
])
def test_show_jobs_makes_one_call_and_keeps_the_wanted(
    wanted: Collection[int] | None, ids: list[int]
) -> None:
    reader, runner = _reader()
    result = reader.show_jobs(wanted)
    assert sorted(j.job_id for j in result.jobs) == ids
    assert runner.asked == [["scontrol", "show", "job", "-d"], ["sinfo", "-N", "-h", "-o",
                                                                "%N|%X|%Y|%Z"]]
    assert all(j.cluster == "lab2411" for j in result.jobs)
    plain = next((j for j in result.jobs if j.job_id == 1268), None)
    assert plain is None or plain.allocations[0].cpu_ids == (0, 2)


def test_show_jobs_of_one_id_asks_for_that_job() -> None:
    reader, runner = _reader()
    (job,) = reader.show_jobs([1268]).jobs
    assert runner.asked[0] == ["scontrol", "show", "job", "-d", "1268"]
    assert job.allocations[0].cpu_ids == (0, 2)


def test_show_jobs_of_nothing_asks_nothing() -> None:
    reader, runner = _reader()
    assert reader.show_jobs([]).jobs == () and runner.asked == []


def test_show_jobs_of_a_job_slurmctld_no_longer_holds() -> None:
    gone = SlurmCommandError(["scontrol"], 1, "slurm_load_jobs error: Invalid job id specified")
    reader, _ = _reader(gone)
    assert reader.show_jobs([77]).jobs == ()
    down = SlurmCommandError(["scontrol"], 1, "slurm_load_jobs error: Unable to contact slurm "
                             "controller (connect failure)")
    reader, _ = _reader(down)
    with pytest.raises(SlurmCommandError):
        reader.show_jobs([77])
    reader, _ = _reader(gone)  # for all jobs an error is an error, never an empty queue
    with pytest.raises(SlurmCommandError):
        reader.show_jobs()


def test_show_jobs_without_allocations_needs_no_sinfo() -> None:
    reader, runner = _reader()
    runner.run = lambda command, args, **_: CommandResult(  # type: ignore[method-assign]
        (command, *args), 0, _record("held job").encode(), "", 0.01)
    (job,) = reader.show_jobs().jobs
    assert job.state is JobState.PENDING and job.exit_code == ExitCode()


def test_parse_of_a_job_equals_squeue_after_replace_of_source() -> None:
    """The whole record, not field by field: only ``source`` (and 24.11's described reason)
    tell the two apart."""
    squeue, shown, _ = _pair("24.11")
    for job_id, sq in squeue.items():
        sc = shown[job_id]
        if sq.reason and sc.reason != sq.reason:
            sc = replace(sc, reason=sq.reason)
        assert replace(sc, source="squeue") == sq


@pytest.mark.parametrize("version", ["22.05", "24.11", "26.05"])
def test_show_config_gives_cluster_min_job_age_and_the_hook(version: str) -> None:
    """22.05 prints ``PrologSlurmctld = path``, 23.02 and later ``PrologSlurmctld[0] = path``
    (several scripts may be given): both read the same."""
    text = (FIXTURES / version / "scontrol-config-full.txt").read_bytes()
    config = parse_show_config(text)
    assert config.cluster_name == f"lab{version.replace('.', '')}"
    assert config.min_job_age == 300
    assert config.prolog_slurmctld.endswith("/etc/slurm-sync-hook")
    assert config.epilog_slurmctld == config.prolog_slurmctld


def test_show_config_without_a_hook_or_a_cluster() -> None:
    unset = parse_show_config("ClusterName = c\nPrologSlurmctld = (null)\nMinJobAge = 0 sec\n")
    assert (unset.prolog_slurmctld, unset.epilog_slurmctld, unset.min_job_age) == ("", "", None)
    with pytest.raises(SlurmFormatError, match="no ClusterName"):
        parse_show_config("MinJobAge = 300 sec\n")
