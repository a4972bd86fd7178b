"""The runner API against stand-in sbatch, squeue and scancel: argv, stdin, one call per batch,
the status cache, and which scancel failures mean "already gone"."""

from __future__ import annotations

import json
import stat
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.errors import SlurmCommandError, SlurmFormatError
from slurm_sync.slurm.control import (
    COARSE_STATES,
    SlurmControl,
    SubmitRequest,
    Submitted,
    coarse_state,
    submit_environment,
)
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.run import Runner, SlurmCommands

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/slurm/24.11/squeue-array.json"
SCRIPT = "#!/bin/bash\n# MARKER-7f3a\nexec buildkite-agent start --disconnect-after-job\n"

# One stand-in for every command: it logs its argv, its stdin (sbatch only: the others get the
# test's stdin) and the SYNC_TEST_* environment, then answers what plan.json says for it.
_STAND_IN = """\
import json, os, sys
here = os.path.dirname(os.path.abspath(__file__))
name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.path.join(here, "plan.json")) as f:
    plan = json.load(f).get(name, {})
stdin = sys.stdin.read() if name == "sbatch" else None
env = {k: v for k, v in os.environ.items() if k.startswith(("SYNC_TEST_", "SLURM_SYNC_TEST"))}
with open(os.path.join(here, "calls.jsonl"), "a") as log:
    log.write(json.dumps({"command": name, "argv": args, "stdin": stdin, "env": env}) + "\\n")
if name == "squeue" and args == ["--version"]:
    with open(os.path.join(here, "version")) as f:
        print(f.read())
    sys.exit(0)
if "stdout_file" in plan:
    with open(plan["stdout_file"]) as f:
        sys.stdout.write(f.read())
sys.stdout.write(plan.get("stdout", ""))
sys.stderr.write(plan.get("stderr", ""))
sys.stderr.flush()
if plan.get("then_sleep"):
    import time
    time.sleep(plan["then_sleep"])
sys.exit(plan.get("code", 0))
"""


class Slurm:
    """The stand-ins in one directory: ``answer`` sets what a command prints next,
    ``calls`` reads what each was run with."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.plan: dict[str, dict[str, Any]] = {
            "sbatch": {"stdout": "1234\n"},
            "squeue": {"stdout_file": str(FIXTURE)},
            "scancel": {},
            "scontrol": {},
        }
        self._write_plan()
        self.version("slurm 24.11.5")
        for name in self.plan:
            path = directory / name
            path.write_text(f"#!{sys.executable}\n{_STAND_IN}")
            path.chmod(path.stat().st_mode | stat.S_IXUSR)

    def answer(self, command: str, *, stdout: str = "", stderr: str = "", code: int = 0,
               then_sleep: float = 0) -> None:
        self.plan[command] = {"stdout": stdout, "stderr": stderr, "code": code,
                              "then_sleep": then_sleep}
        self._write_plan()

    def version(self, text: str) -> None:
        """What ``squeue --version`` prints."""
        (self.dir / "version").write_text(text)

    def _write_plan(self) -> None:
        (self.dir / "plan.json").write_text(json.dumps(self.plan))

    def calls(self, command: str) -> list[dict[str, Any]]:
        log = self.dir / "calls.jsonl"
        if not log.exists():
            return []
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        return [r for r in rows if r["command"] == command]

    def json_queries(self) -> list[list[str]]:
        """The argv of each ``squeue --json`` call (not ``--version``)."""
        return [c["argv"] for c in self.calls("squeue") if "--json" in c["argv"]]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def slurm(tmp_path: Path) -> Slurm:
    return Slurm(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def control(slurm: Slurm, clock: Clock) -> SlurmControl:
    return SlurmControl(Runner(SlurmCommands(bin_dir=str(slurm.dir))), clock=clock)


def _request(**kw: Any) -> SubmitRequest:
    values: dict[str, Any] = {"script": SCRIPT, "job_name": "buildkite-42"}
    values.update(kw)
    return SubmitRequest(**values)


# -- submit ------------------------------------------------------------------------------------


def test_submit_pipes_the_script_on_stdin_and_never_into_argv(
    slurm: Slurm, control: SlurmControl
) -> None:
    slurm.answer("sbatch", stdout="1234;clusterA\n")
    submitted = control.submit(_request(comment="build 42 step 3",
                                        options=("--partition=gpu", "--time=10")))
    assert submitted == Submitted(job_id=1234, cluster="clusterA", array_size=None)
    [call] = slurm.calls("sbatch")
    assert call["argv"] == ["--parsable", "--job-name=buildkite-42",
                            "--comment=build 42 step 3", "--partition=gpu", "--time=10"]
    assert call["stdin"] == SCRIPT
    assert not any("MARKER-7f3a" in a for a in call["argv"])
    assert not any("MARKER-7f3a" in a for record in control.runner.calls for a in record.argv)


def test_submit_reads_a_plain_job_id(slurm: Slurm, control: SlurmControl) -> None:
    slurm.answer("sbatch", stdout="1234\n")
    assert control.submit(_request()) == Submitted(job_id=1234, cluster=None)
    assert slurm.calls("sbatch")[0]["argv"] == ["--parsable", "--job-name=buildkite-42"]


def test_submit_environment_reaches_sbatch_only_never_argv_or_repr(
    slurm: Slurm, control: SlurmControl
) -> None:
    request = _request(env={"SYNC_TEST_TOKEN": "s3cret-token"})
    control.submit(request)
    control.submit(_request())
    first, second = slurm.calls("sbatch")
    assert first["env"] == {"SYNC_TEST_TOKEN": "s3cret-token"}
    assert second["env"] == {}  # the runner itself was not changed
    assert not any("s3cret" in a for a in first["argv"])
    assert not any("s3cret" in a for record in control.runner.calls for a in record.argv)
    assert len(control.runner.calls) == 2  # both calls recorded in the one runner
    assert "s3cret" not in repr(request) and "MARKER" not in repr(request)


def test_sbatch_never_gets_the_services_environment(
    slurm: Slurm, control: SlurmControl, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sbatch hands every SLURM_* variable it has to the job, --export=NONE or not: it runs
    with a minimal environment (PATH, SLURM_CONF...) and the request's own, nothing else."""
    monkeypatch.setenv("SYNC_TEST_SERVICE_TOKEN", "s3cret")
    monkeypatch.setenv("SLURM_SYNC_TEST_TOKEN", "s3cret")
    control.submit(_request(env={"SYNC_TEST_FOR_THE_JOB": "1"}))
    control.submit_array(_request(), 2)
    first, second = (c["env"] for c in slurm.calls("sbatch"))
    assert first == {"SYNC_TEST_FOR_THE_JOB": "1"} and second == {}
    environ = {"PATH": "/usr/bin", "SLURM_CONF": "/etc/slurm/slurm.conf", "HOME": "/root",
               "SLURM_JOB_ID": "7", "SLURM_SYNC_TOKEN": "s3cret", "BK_TOKEN": "s3cret",
               "SBATCH_EXPORT": "ALL", "LANG": "C.UTF-8"}
    assert submit_environment(environ) == {"PATH": "/usr/bin", "HOME": "/root",
                                           "SLURM_CONF": "/etc/slurm/slurm.conf",
                                           "LANG": "C.UTF-8"}


def test_a_failing_sbatch_raises_with_its_error_line(slurm: Slurm, control: SlurmControl) -> None:
    slurm.answer("sbatch", code=1, stderr="sbatch: error: Batch job submission failed: "
                 "Invalid partition name specified\nsecond line\n")
    with pytest.raises(SlurmCommandError) as err:
        control.submit(_request(options=("--partition=nope",)))
    assert err.value.returncode == 1
    assert "Invalid partition name specified" in str(err.value)
    assert "second line" not in str(err.value)


def test_sbatch_output_that_is_no_job_id_raises(slurm: Slurm, control: SlurmControl) -> None:
    slurm.answer("sbatch", stdout="Submitted batch job 1234\n")
    with pytest.raises(SlurmFormatError, match="JOBID"):
        control.submit(_request())


@pytest.mark.parametrize("kw", [
    {"script": "echo no interpreter line\n"},
    {"job_name": ""},
    {"job_name": "two\nlines"},
    {"options": ("gpu",)},           # a positional element would be read as the script file
    {"options": ("--partition", "gpu")},
    {"env": {"A=B": "x"}},
])
def test_requests_sbatch_would_misread_are_refused(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        _request(**kw)


def test_submit_array_adds_one_array_option(slurm: Slurm, control: SlurmControl) -> None:
    slurm.answer("sbatch", stdout="77\n")
    submitted = control.submit_array(_request(options=("--partition=main",)), 4)
    assert submitted == Submitted(job_id=77, cluster=None, array_size=4)
    [call] = slurm.calls("sbatch")
    assert call["argv"] == ["--parsable", "--job-name=buildkite-42", "--array=0-3",
                            "--partition=main"]
    assert call["stdin"] == SCRIPT


@pytest.mark.parametrize("options", [("--array=0-9",), ("--arr=1-2",), ("-a0-3",)])
def test_submit_array_refuses_an_array_option_of_its_own(
    slurm: Slurm, control: SlurmControl, options: tuple[str, ...]
) -> None:
    with pytest.raises(ValueError, match="--array"):
        control.submit_array(_request(options=options), 2)
    assert slurm.calls("sbatch") == []


@pytest.mark.parametrize("count", [0, -1, True])
def test_submit_array_refuses_a_bad_count(
    slurm: Slurm, control: SlurmControl, count: int
) -> None:
    with pytest.raises(ValueError):
        control.submit_array(_request(), count)
    assert slurm.calls("sbatch") == []


# -- status ------------------------------------------------------------------------------------


def test_status_of_many_ids_is_one_squeue_call(slurm: Slurm, control: SlurmControl) -> None:
    answer = control.status([3, 9, 99])
    assert list(answer) == [3, 9, 99]
    assert answer[3] is not None and answer[3].state is JobState.RUNNING
    assert answer[9] is not None and (answer[9].array_job_id, answer[9].array_task_id) == (7, 0)
    assert answer[99] is None  # squeue does not know it
    assert slurm.json_queries() == [["--json", "--states=all", "--jobs=3,9,99"]]


def test_status_within_the_ttl_asks_squeue_nothing(
    slurm: Slurm, control: SlurmControl, clock: Clock
) -> None:
    control.status([3, 8])
    clock.now += 4.9
    assert control.status([8])[8] is not None
    assert control.status([3, 8])[3] is not None
    assert len(slurm.json_queries()) == 1
    clock.now += 0.2  # 5.1 s after the answer: stale
    control.status([8])
    assert len(slurm.json_queries()) == 2


def test_an_id_the_cached_answer_does_not_cover_asks_again_for_all(
    slurm: Slurm, control: SlurmControl, clock: Clock
) -> None:
    control.status([3])
    clock.now += 1
    control.status([8])
    control.status([3, 8])
    assert [q[-1] for q in slurm.json_queries()] == ["--jobs=3,3", "--jobs=3,8"]


def test_a_lone_id_is_asked_twice_so_squeue_filters_the_job_list(
    slurm: Slurm, control: SlurmControl
) -> None:
    assert control.status([99]) == {99: None}
    assert slurm.json_queries() == [["--json", "--states=all", "--jobs=99,99"]]


def test_squeue_refusing_a_lone_unknown_id_means_unknown(
    slurm: Slurm, control: SlurmControl
) -> None:
    slurm.answer("squeue", code=1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    assert control.status([99]) == {99: None}


def test_submit_and_cancel_clear_the_cache(slurm: Slurm, control: SlurmControl) -> None:
    control.status([3])
    control.submit(_request())
    control.status([3])
    control.cancel([5])
    control.status([3])
    assert len(slurm.json_queries()) == 3


def test_a_failed_submit_clears_the_cache_too(slurm: Slurm, control: SlurmControl) -> None:
    control.status([3])
    slurm.answer("sbatch", code=1, stderr="sbatch: error: Socket timed out\n")
    with pytest.raises(SlurmCommandError):
        control.submit(_request())
    control.status([3])
    assert len(slurm.json_queries()) == 2


def test_an_array_job_id_maps_to_its_tasks(control: SlurmControl) -> None:
    records = control.status_many([7, 3, 99])
    assert [(j.job_id, j.array_task_id) for j in records[7]] == [(7, None), (9, 0), (10, 1)]
    assert records[7][0].array_tasks_pending == "2-3%2"
    assert [j.job_id for j in records[3]] == [3]
    assert records[99] == ()
    own = control.status([7])[7]
    assert own is not None and own.job_id == 7 and own.state is JobState.PENDING


def test_a_failing_squeue_raises_and_never_means_all_gone(
    slurm: Slurm, control: SlurmControl, clock: Clock
) -> None:
    slurm.answer("squeue", code=1, stderr="slurm_load_jobs error: Unable to contact slurm "
                 "controller (connect failure)\n")
    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        control.status([3, 9])
    with pytest.raises(SlurmCommandError):
        control.status([3, 9])  # nothing was cached from the failure
    assert len(slurm.json_queries()) == 2


def test_a_failing_squeue_with_a_fresh_answer_for_other_ids_still_raises(
    slurm: Slurm, control: SlurmControl
) -> None:
    control.status([3])
    slurm.answer("squeue", code=1, stderr="slurm_load_jobs error: Socket timed out\n")
    with pytest.raises(SlurmCommandError):
        control.status([8])


def test_ttl_zero_never_reuses_an_answer(slurm: Slurm) -> None:
    control = SlurmControl(Runner(SlurmCommands(bin_dir=str(slurm.dir))), status_ttl=0,
                           clock=Clock())
    control.status([3])
    control.status([3])
    assert len(slurm.json_queries()) == 2


# -- cancel and signal -------------------------------------------------------------------------


def test_cancel_of_many_ids_is_one_plain_scancel(slurm: Slurm, control: SlurmControl) -> None:
    control.cancel([5, 6, 7, 6])
    assert [c["argv"] for c in slurm.calls("scancel")] == [["5", "6", "7"]]


def test_signal_reaches_the_batch_shell_with_full(slurm: Slurm, control: SlurmControl) -> None:
    """From 24.05, one scancel --ctld for every id: slurmctld answers each at once."""
    assert control.signal([3, "8_2"], "TERM") == {3: None, "8_2": None}
    control.signal([3], "sigusr1", full=False)
    control.cancel([3], signal="15")
    assert [c["argv"] for c in slurm.calls("scancel")] == [
        ["--ctld", "--signal=TERM", "--full", "3", "8_2"],
        ["--ctld", "--signal=USR1", "3"],
        ["--ctld", "--signal=15", "--full", "3"],
    ]


def test_signal_says_per_id_what_slurm_refused(slurm: Slurm, control: SlurmControl) -> None:
    """scancel --ctld exits 0 and names each job it could not signal on stderr."""
    slurm.answer("scancel", stderr=(
        "scancel: error: Kill job error on job id 3: Job/step already completing or completed\n"
        "scancel: error: Kill job error on job id 8: Access/permission denied\n"))
    assert control.signal([3, 8, 9], "TERM") == {3: None, 8: "Access/permission denied",
                                                   9: None}
    with pytest.raises(SlurmCommandError, match="permission denied"):
        control.cancel([8], signal="TERM")
    # a task named ARRAY_TASK where we gave its own job id: none of ours counts as signalled
    slurm.answer("scancel", stderr="scancel: error: Kill job error on job id 7_1: "
                                   "Job can not be altered now, try again later\n")
    assert set(control.signal([8, 9], "TERM").values()) == {
        "7_1: Job can not be altered now, try again later"}
    slurm.answer("scancel", stderr="scancel: error: Unable to contact slurm controller\n",
                 code=1)
    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        control.signal([8], "TERM")


_PLUGIN_NOISE = "scancel: select/cons_tres: common_init: select/cons_tres loaded\n"


def test_before_24_05_each_id_is_signalled_alone_and_never_waits_out_scancels_retries(
    slurm: Slurm, control: SlurmControl
) -> None:
    """22.05 has no scancel --ctld. slurmctld signals a running task of an array with pending
    tasks and answers "try again later" all the same; scancel would retry for 95 s. Each id
    gets its own scancel -v, stopped at its first "retrying": taken at once."""
    slurm.version("slurm 22.05.8")
    slurm.answer("scancel", stderr=_PLUGIN_NOISE + "scancel: Signal 15 to full job 7_0\n"
                 "scancel: Job is in transitional state, retrying\n", then_sleep=60)
    started = time.monotonic()
    assert control.signal([8, "7_1"], "TERM") == {8: None, "7_1": None}
    assert time.monotonic() - started < 20
    assert [c["argv"] for c in slurm.calls("scancel")] == [
        ["-v", "--signal=TERM", "--full", "8"], ["-v", "--signal=TERM", "--full", "7_1"]]
    # verbose lines are not errors; an id Slurm refused is named, the others taken
    slurm.answer("scancel", stderr=_PLUGIN_NOISE + "scancel: Signal 15 to full job 8\n")
    assert control.signal([8], "TERM") == {8: None}
    slurm.answer("scancel", stderr=_PLUGIN_NOISE + "scancel: error: Kill job error on job id "
                 "8: Access/permission denied\n", code=1)
    assert control.signal([8], "TERM") == {8: "Access/permission denied"}
    slurm.answer("scancel", stderr=_PLUGIN_NOISE + "scancel: error: Kill job error on job id "
                 "8: Invalid job id specified\n", code=1)
    assert control.signal([8], "TERM") == {8: None}
    slurm.answer("scancel", stderr="scancel: error: slurm_load_jobs error: Unable to contact "
                 "slurm controller (connect failure)\n", code=1)
    with pytest.raises(SlurmCommandError, match="Unable to contact"):
        control.signal([8, 9], "TERM")


def test_before_24_05_all_the_signals_of_a_call_share_the_runners_time_bound(
    slurm: Slurm, clock: Clock, tmp_path: Path
) -> None:
    slurm.version("slurm 23.11.10")
    control = SlurmControl(Runner(SlurmCommands(bin_dir=str(slurm.dir), timeout=1.0)),
                           clock=clock)
    slurm.answer("scancel", stderr="scancel: Signal 15 to full job 8\n", then_sleep=0.4)
    started = time.monotonic()
    result = control.signal(list(range(1, 11)), "TERM")
    assert time.monotonic() - started < 4
    assert all(why for why in list(result.values())[3:]), result
    assert len(slurm.calls("scancel")) < 10


def test_sigkill_is_not_a_signal_to_send_cancel_ends_jobs(
    slurm: Slurm, control: SlurmControl
) -> None:
    for name in ("KILL", "SIGKILL", "9"):
        with pytest.raises(ValueError, match="cancel"):
            control.signal([3], name)
    assert slurm.calls("scancel") == []


@pytest.mark.parametrize("name", ["TERM --user=root", "", "NOSUCH", "99", "-9"])
def test_a_bad_signal_name_is_refused_before_any_call(
    slurm: Slurm, control: SlurmControl, name: str
) -> None:
    with pytest.raises(ValueError):
        control.signal([3], name)
    assert slurm.calls("scancel") == []


@pytest.mark.parametrize("stderr, code", [
    ("scancel: error: Kill job error on job id 5: Invalid job id specified\n", 1),
    ("scancel: error: Kill job error on job id 5: Job/step already completing or completed\n"
     "scancel: error: Kill job error on job id 6: Invalid job id specified\n", 1),
    ("", 229),  # ESLURM_ALREADY_DONE on the --signal path, which scancel does not print
    ("", 225),  # ESLURM_INVALID_JOB_ID, likewise
])
def test_jobs_that_already_ended_do_not_raise(
    slurm: Slurm, control: SlurmControl, stderr: str, code: int
) -> None:
    slurm.answer("scancel", stderr=stderr, code=code)
    control.signal([5, 6], "TERM")
    control.cancel([5, 6])
    assert len(slurm.calls("scancel")) == 2


@pytest.mark.parametrize("stderr, code, shown", [
    ("scancel: error: slurm_load_jobs error: Unable to contact slurm controller "
     "(connect failure)\n", 1, "Unable to contact slurm controller"),
    ("scancel: error: Kill job error on job id 5: Invalid job id specified\n"
     "scancel: error: Kill job error on job id 6: Access/permission denied\n", 1,
     "Access/permission denied"),
    ("", 1, "exit code 1"),
])
def test_other_scancel_failures_raise(
    slurm: Slurm, control: SlurmControl, stderr: str, code: int, shown: str
) -> None:
    slurm.answer("scancel", stderr=stderr, code=code)
    with pytest.raises(SlurmCommandError) as err:
        control.cancel([5, 6])
    assert shown in str(err.value)
    assert err.value.returncode == code


def test_empty_id_lists_make_no_call(slurm: Slurm, control: SlurmControl) -> None:
    assert control.status([]) == {}
    assert control.status_many(iter(())) == {}
    control.cancel([])
    control.signal([], "TERM")
    assert control.runner.calls == []
    assert slurm.calls("squeue") == slurm.calls("scancel") == []


@pytest.mark.parametrize("bad, error", [(["3"], TypeError), ([True], TypeError),
                                        ([0], ValueError), ([-4], ValueError)])
def test_job_ids_must_be_positive_ints(
    control: SlurmControl, bad: list[Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        control.status(bad)
    # cancel also takes "1234_5" task ids, so a plain "3" is a bad value there, not a bad type
    with pytest.raises(ValueError if bad == ["3"] else error):
        control.cancel(bad)
    assert control.runner.calls == []


# -- coarse states -----------------------------------------------------------------------------


def test_every_slurm_state_has_a_coarse_state() -> None:
    for state in JobState:
        assert coarse_state(Job(job_id=1, state=state)) in COARSE_STATES


@pytest.mark.parametrize("state, word", [
    (JobState.PENDING, "queued"),
    (JobState.REQUEUED, "queued"),
    (JobState.RUNNING, "running"),
    (JobState.COMPLETING, "running"),
    (JobState.SUSPENDED, "running"),
    (JobState.COMPLETED, "finished"),
    (JobState.FAILED, "failed"),
    (JobState.TIMEOUT, "failed"),
    (JobState.OUT_OF_MEMORY, "failed"),
    (JobState.NODE_FAIL, "failed"),
    (JobState.CANCELLED, "cancelled"),
    (JobState.PREEMPTED, "cancelled"),
    (JobState.UNKNOWN, "unknown"),
])
def test_coarse_state_table(state: JobState, word: str) -> None:
    assert coarse_state(Job(job_id=1, state=state)) == word


def test_a_job_squeue_does_not_know_is_gone(control: SlurmControl) -> None:
    assert coarse_state(None) == "gone"
    assert coarse_state(control.status([99])[99]) == "gone"
    assert coarse_state(control.status([4])[4]) == "finished"


def test_cancel_takes_pending_array_task_ids_and_refuses_anything_else(
    slurm: Slurm, control: SlurmControl
) -> None:
    control.cancel([12, "40_3", "40_3"])
    assert [c["argv"] for c in slurm.calls("scancel")] == [["12", "40_3"]]
    with pytest.raises(ValueError, match="not a Slurm job id"):
        control.cancel(["40_3; rm -rf /"])


def test_hold_is_one_scontrol_and_a_comment_per_job(slurm: Slurm, control: SlurmControl) -> None:
    control.hold([7, 9], comment="slurm-sync bank: account lab cannot pay 12.50 SU")
    control.release([7])
    assert [c["argv"] for c in slurm.calls("scontrol")] == [
        ["hold", "7,9"],
        ["update", "JobId=7", "Comment=slurm-sync bank: account lab cannot pay 12.50 SU"],
        ["update", "JobId=9", "Comment=slurm-sync bank: account lab cannot pay 12.50 SU"],
        ["release", "7"], ["update", "JobId=7", "Comment="]]
    with pytest.raises(ValueError, match="one line"):
        control.hold([7], comment="two\nlines")
