"""Act on Slurm: submit batch scripts, ask how jobs are doing, cancel or signal them.

    >>> from slurm_sync.slurm.run import SlurmCommands
    >>> control = SlurmControl(Runner(SlurmCommands(bin_dir="lab/run/24.11/bin")))
    >>> request = SubmitRequest(script="#!/bin/sh\\nexec buildkite-agent start\\n",
    ...                         job_name="buildkite-42", options=("--partition=main",),
    ...                         env={"BUILDKITE_AGENT_TOKEN": token})  # doctest: +SKIP
    >>> job = control.submit(request)  # doctest: +SKIP
    >>> job.job_id, job.cluster  # doctest: +SKIP
    (1234, None)
    >>> coarse_state(control.status([job.job_id])[job.job_id])  # doctest: +SKIP
    'queued'
    >>> control.signal([job.job_id], "TERM")  # doctest: +SKIP
    >>> coarse_state(None)
    'gone'

The runner API the connectors (and users' own scripts) act through; nothing else runs
``sbatch`` or ``scancel``. It follows Slivka's SlurmRunner where that was right and not where
it was wrong:

- batched: ``status`` and ``cancel`` take many job ids and make one Slurm call for all of them;
- one ``squeue --json`` answer is kept for ``status_ttl`` seconds (5 by default) and reused by
  every status question it covers; ``submit`` and ``cancel`` forget it;
- argv is a list, never a shell; the batch script goes to ``sbatch`` on stdin and the extra
  environment (tokens) to ``sbatch``'s own process, so neither is ever in argv or a log line;
- nothing is swallowed: a failed ``squeue`` raises (it never means "all gone"), a failed
  ``sbatch`` raises with sbatch's error line, ``scancel`` is quiet only about jobs that had
  already ended;
- states as a table (``coarse_state``), with a word for "squeue no longer knows this job".

Not thread-safe: give each thread its own ``SlurmControl``.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from signal import Signals
from types import MappingProxyType
from typing import Literal

from slurm_sync.errors import SlurmCommandError, SlurmFormatError
from slurm_sync.slurm.model import Job, JobState
from slurm_sync.slurm.query import JobFilter
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import CommandResult, Runner

log = logging.getLogger(__name__)

__all__ = [
    "COARSE_STATES",
    "SUBMIT_ENVIRONMENT",
    "CoarseState",
    "SlurmControl",
    "SubmitRequest",
    "Submitted",
    "coarse_state",
    "submit_environment",
]


@dataclass(frozen=True)
class SubmitRequest:
    """One batch job to submit.

    ``script`` is the batch script's text (it must start with ``#!``, as sbatch requires); it is
    piped to ``sbatch`` on stdin. ``options`` are sbatch options the caller has validated, one
    argv element each in the ``--name=value`` form (``--partition=gpu``, not ``--partition``,
    ``gpu``: an element that does not start with ``-`` would be taken for a script file).
    ``env`` is extra environment for sbatch's own process, the way to hand a job a secret
    without argv: sbatch's default ``--export=ALL`` passes it on to the job (an
    ``--export=NONE`` among ``options`` would drop it). The script and ``env`` are left out of
    the repr, so logging a request does not log a token.
    """

    script: str = field(repr=False)
    job_name: str
    options: tuple[str, ...] = ()
    comment: str | None = None
    env: Mapping[str, str] | None = field(default=None, repr=False, hash=False)

    def __post_init__(self) -> None:
        if not self.script.startswith("#!"):
            raise ValueError("a batch script must start with #! and an interpreter")
        if not self.job_name or "\n" in self.job_name:
            raise ValueError(f"job_name must be one non-empty line, not {self.job_name!r}")
        if self.comment is not None and "\n" in self.comment:
            raise ValueError("comment must be one line")
        options: Sequence[str] = self.options
        if isinstance(options, str):
            raise TypeError("options is a sequence of options, not one string")
        object.__setattr__(self, "options", tuple(options))
        for option in self.options:
            if not isinstance(option, str) or len(option) < 2 or not option.startswith("-"):
                raise ValueError(
                    f"sbatch option {option!r} is not an option: give each as one element "
                    "such as --partition=gpu"
                )
        if self.env is not None:
            for key, value in self.env.items():
                if not key or "=" in key or "\0" in key or "\0" in value:
                    raise ValueError(f"environment variable name {key!r} is not usable")
            object.__setattr__(self, "env", MappingProxyType(dict(self.env)))


@dataclass(frozen=True)
class Submitted:
    """What ``sbatch --parsable`` answered: the job id and, in a federation or with
    ``--clusters``, the cluster. ``array_size`` is the task count ``submit_array`` asked for
    (None from ``submit``); the tasks are ``job_id_0`` to ``job_id_{array_size - 1}``."""

    job_id: int
    cluster: str | None = None
    array_size: int | None = None


CoarseState = Literal["queued", "running", "finished", "failed", "cancelled", "gone", "unknown"]

#: Every word ``coarse_state`` can return.
COARSE_STATES: tuple[CoarseState, ...] = (
    "queued", "running", "finished", "failed", "cancelled", "gone", "unknown"
)

# Slurm's base states in the few words a runner acts on. SUSPENDED and COMPLETING still hold
# their nodes and have not ended for good, so they are "running" (as Slivka maps CG). A
# REQUEUED record is a run on its way back to the queue. PREEMPTED is a job another job's
# priority ended: stopped from outside, as a cancel is. UNKNOWN is a state this version of the
# parser does not know: never "finished" or "gone", so nobody acts on it.
_COARSE: Mapping[JobState, CoarseState] = MappingProxyType({
    JobState.PENDING: "queued",
    JobState.REQUEUED: "queued",
    JobState.RUNNING: "running",
    JobState.SUSPENDED: "running",
    JobState.COMPLETING: "running",
    JobState.COMPLETED: "finished",
    JobState.FAILED: "failed",
    JobState.TIMEOUT: "failed",
    JobState.NODE_FAIL: "failed",
    JobState.BOOT_FAIL: "failed",
    JobState.DEADLINE: "failed",
    JobState.OUT_OF_MEMORY: "failed",
    JobState.CANCELLED: "cancelled",
    JobState.PREEMPTED: "cancelled",
    JobState.UNKNOWN: "unknown",
})


def coarse_state(job: Job | None) -> CoarseState:
    """`coarse_state(job)` is one of ``COARSE_STATES``; None (squeue does not know the job any
    more: it ended longer than MinJobAge ago, or never existed) is "gone"."""
    if job is None:
        return "gone"
    word = _COARSE.get(job.state)
    if word is None:
        log.warning("no coarse state for a Slurm state", extra={"fields": {
            "job-id": job.job_id, "state": str(job.state)}})
        return "unknown"
    return word


@dataclass(frozen=True)
class _Answer:
    """The last squeue answer: the ids it was asked for, what it said, when it was asked."""

    asked: frozenset[int]
    jobs: tuple[Job, ...]
    taken: float


# scancel's per-job message for a job it could not act on because the job had already ended
# or slurmctld no longer knows it (src/scancel/scancel.c, _verify_job_ids and _cancel_job_id,
# Slurm 14.11 to 26.05): "scancel: error: Kill job error on job id 123: Invalid job id
# specified" (ESLURM_INVALID_JOB_ID) or "...: Job/step already completing or completed"
# (ESLURM_ALREADY_DONE; "Job/step already completed" before 2.x). Without -v scancel prints
# them only on the --signal path, where an unknown id makes it exit 1.
_GONE_LINE = re.compile(
    r"Kill job error on job id (?P<id>\S+): "
    r"(?:Invalid job id specified|Job/step already complet(?:ing or complet)?ed)"
)
# On the --signal path a job that ends between scancel's look-up and its signal gets
# ESLURM_ALREADY_DONE (2021) or ESLURM_INVALID_JOB_ID (2017) without a message, and scancel
# exits with that code: 229 or 225 once truncated to 8 bits. Every other error is printed.
_SILENT_GONE_EXITS = frozenset({2017 % 256, 2021 % 256})
# Any job's line of scancel's: "scancel: error: Kill job error on job id 12_3: <why>".
_KILL_ERROR = re.compile(r"Kill job error on job id (?P<id>\S+): (?P<why>.*)")
# scancel -v between its tries when slurmctld answered ESLURM_TRANSITION_STATE_NO_UPDATE
# ("Job is in transitional state, retrying" in 21.08 to 26.05; "transistional" before).
_RETRYING = re.compile(r"in transi\w*ional state, retrying")
# scancel --ctld (one REQUEST_KILL_JOBS for every id, each answered) exists from 24.05.
_CTLD_SIGNALS = (24, 5, 0)
# What squeue prints when a single --jobs id is unknown to slurmctld (the single-job RPC).
_SQUEUE_UNKNOWN_ID = "Invalid job id specified"


def _job_ids(job_ids: Iterable[int]) -> tuple[int, ...]:
    """Job ids in the order given, each once; refuses anything but positive ints."""
    out: dict[int, None] = {}
    for job_id in job_ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise TypeError(f"a job id is an int, not {job_id!r}")
        if job_id < 1:
            raise ValueError(f"job id {job_id} is not a Slurm job id")
        out[job_id] = None
    return tuple(out)


_COMMENT_BAD = re.compile(r"[\x00-\x1f\x7f]")
_TASK_ID = re.compile(r"^[1-9][0-9]*_[0-9]+$")


def _cancel_ids(job_ids: Iterable[int | str]) -> tuple[int | str, ...]:
    """Ids for scancel: positive ints, or ``"1234_5"`` for an array task that has no job id of
    its own yet (still pending inside its array record)."""
    out: dict[int | str, None] = {}
    for job_id in job_ids:
        if isinstance(job_id, str):
            if not _TASK_ID.match(job_id):
                raise ValueError(f"{job_id!r} is not a Slurm job id or array task id")
            out[job_id] = None
        else:
            out.update(dict.fromkeys(_job_ids([job_id])))
    return tuple(out)


def _signal_arg(name: str) -> str:
    """`_signal_arg("sigterm")` is ``"TERM"``: a signal name or number scancel takes."""
    word = name.strip().upper()
    if word.startswith("SIG"):
        word = word[3:]
    if word.isdigit() and 0 < int(word) < 65:
        return word
    if word.isalnum() and f"SIG{word}" in Signals.__members__:
        return word
    raise ValueError(f"{name!r} is not a signal name (TERM, USR1, ...) or number")


def _is_array_option(option: str) -> bool:
    """True for ``--array=...``, an abbreviation of it getopt accepts (``--arr=...``), and
    ``-a...``."""
    if option.startswith("--"):
        name = option[2:].split("=", 1)[0]
        return len(name) >= 2 and "array".startswith(name)
    return option.startswith("-a")


def _parse_parsable(result: CommandResult, array_size: int | None) -> Submitted:
    """``JOBID`` or ``JOBID;CLUSTER``, the last line sbatch ``--parsable`` prints."""
    text = result.stdout.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    match = re.fullmatch(r"(\d+)(?:;(\S+))?", lines[-1]) if lines else None
    if match is None:
        raise SlurmFormatError(
            "sbatch --parsable", text[:200], "expected JOBID or JOBID;CLUSTER on stdout"
        )
    return Submitted(job_id=int(match.group(1)), cluster=match.group(2), array_size=array_size)


# All sbatch gets of the service's environment: what it needs to find its binary (PATH), its
# configuration (SLURM_CONF), the controller through a prefix such as ssh (HOME,
# SSH_AUTH_SOCK), and the locale and time zone it reads dates in. Never the rest: sbatch hands
# every SLURM_* variable of its own environment to the job whatever --export says (only
# SLURM_CONF is kept), and the service's environment may hold secrets ({"env": ...} tokens).
SUBMIT_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "SLURM_CONF",
                      "SSH_AUTH_SOCK")


def submit_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment ``sbatch`` runs with: ``SUBMIT_ENVIRONMENT`` of ``environ`` (the
    service's own by default), nothing else."""
    source = os.environ if environ is None else environ
    return {k: source[k] for k in SUBMIT_ENVIRONMENT if k in source}


def _with_env(runner: Runner, env: Mapping[str, str]) -> Runner:
    """A runner like ``runner`` whose processes also get ``env``, recording into the same
    ``calls``. (``Runner.run`` takes no per-call environment.)"""
    merged = dict(runner.env or {})
    merged.update(env)
    child = Runner(runner.commands, env=merged)
    child.calls = runner.calls
    return child


def _records_of(job_id: int, jobs: Sequence[Job]) -> tuple[Job, ...]:
    """The records squeue gave for ``job_id``: its own record first, then the array tasks and
    heterogeneous components that name it, in squeue's order."""
    own = [j for j in jobs if j.job_id == job_id]
    others = [
        j for j in jobs
        if j.job_id != job_id and job_id in (j.array_job_id, j.het_job_id)
    ]
    return tuple(own + others)


class SlurmControl:
    """Submits, watches, cancels and signals Slurm jobs through ``runner``.

    ``reader`` parses squeue (one is made from ``runner`` when not given); ``status_ttl`` is
    how long, in seconds of ``clock``, one squeue answer serves status questions.
    """

    def __init__(
        self,
        runner: Runner,
        reader: SlurmReader | None = None,
        *,
        status_ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if status_ttl < 0:
            raise ValueError("status_ttl cannot be negative")
        self.runner = runner
        self.reader = reader if reader is not None else SlurmReader(runner)
        self.status_ttl = status_ttl
        self._clock = clock
        self._answer: _Answer | None = None

    # -- submit ------------------------------------------------------------------------

    def submit(self, request: SubmitRequest) -> Submitted:
        """``sbatch --parsable --job-name=NAME [--comment=C] OPTIONS`` with the script on stdin,
        run with ``submit_environment()`` and ``request.env``, never the service's whole
        environment: sbatch passes every ``SLURM_*`` variable it has to the job, even with
        ``--export=NONE``.

        A failure raises ``SlurmCommandError`` with sbatch's first error line. A timeout
        does not prove nothing was submitted: before submitting again, look for the job (by
        its name or comment).
        """
        return self._submit(request, [], None)

    def submit_array(self, request: SubmitRequest, count: int) -> Submitted:
        """One ``sbatch --array=0-{count-1}``: ``count`` tasks running the same script, each
        telling itself apart by ``$SLURM_ARRAY_TASK_ID``. ``request.options`` must not hold an
        ``--array`` of its own."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"an array needs a task count of at least 1, not {count!r}")
        given = [o for o in request.options if _is_array_option(o)]
        if given:
            raise ValueError(f"submit_array sets --array itself; the options hold {given[0]!r}")
        return self._submit(request, [f"--array=0-{count - 1}"], count)

    def _submit(
        self, request: SubmitRequest, extra: list[str], array_size: int | None
    ) -> Submitted:
        args = ["--parsable", f"--job-name={request.job_name}"]
        if request.comment is not None:
            args.append(f"--comment={request.comment}")
        args += extra
        args += request.options
        runner = _with_env(self.runner, request.env) if request.env else self.runner
        try:
            result = runner.run("sbatch", args, stdin=request.script.encode("utf-8"),
                                environ=submit_environment())
        finally:
            self.clear_cache()
        return _parse_parsable(result, array_size)

    # -- status ------------------------------------------------------------------------

    def status(self, job_ids: Iterable[int]) -> dict[int, Job | None]:
        """For each id, its record from one ``squeue --json`` call; None when squeue does not
        know the id (it ended longer than MinJobAge ago, or never existed).

        The record is the one whose ``job_id`` is the id asked. For an array job asked by
        its own id that is the record of the tasks not started yet (``7_[2-3]``, PENDING) while
        there are any, later the task that took over the id; its running tasks are in
        ``status_many``. Raises ``SlurmError`` when squeue fails: never "all gone".
        """
        return {
            job_id: (records[0] if records else None)
            for job_id, records in self.status_many(job_ids).items()
        }

    def status_many(self, job_ids: Iterable[int]) -> dict[int, tuple[Job, ...]]:
        """For each id, every record squeue holds for it: the job's own record first, then
        (for an array or heterogeneous job) the tasks or components that name it. An empty
        tuple means squeue does not know the id."""
        ids = _job_ids(job_ids)
        if not ids:
            return {}
        jobs = self._jobs_for(ids)
        return {job_id: _records_of(job_id, jobs) for job_id in ids}

    def clear_cache(self) -> None:
        """Forget the last squeue answer: the next status question asks squeue again."""
        self._answer = None

    def _jobs_for(self, ids: tuple[int, ...]) -> tuple[Job, ...]:
        now = self._clock()
        answer = self._answer
        fresh = answer is not None and now - answer.taken < self.status_ttl
        if answer is not None and fresh and answer.asked.issuperset(ids):
            return answer.jobs
        # Ask for the ids of the answer still fresh too, so it keeps covering them.
        wanted = set(ids) | (answer.asked if answer is not None and fresh else set())
        jobs = self._squeue(tuple(sorted(wanted)))
        self._answer = _Answer(frozenset(wanted), jobs, now)
        return jobs

    def _squeue(self, ids: tuple[int, ...]) -> tuple[Job, ...]:
        # squeue fails on a lone unknown --jobs id; query.py writes a lone id twice so that
        # it does not, and the error is still read as "unknown" should squeue fail anyway.
        try:
            parsed = self.reader.squeue(JobFilter(states=("all",), job_ids=ids))
        except SlurmCommandError as exc:
            if len(ids) == 1 and exc.returncode is not None and _SQUEUE_UNKNOWN_ID in exc.stderr:
                return ()
            raise
        return parsed.jobs

    # -- cancel and signal ---------------------------------------------------------------

    def cancel(
        self, job_ids: Iterable[int | str], signal: str | None = None, *, full: bool = True
    ) -> None:
        """One ``scancel ID...`` for all ``job_ids``; no call for none.

        The jobs are ended: pending ones leave the queue, running ones are killed with all their
        processes (Slurm sends SIGTERM, then SIGKILL after its KillWait). Name a task of an
        array ``"1234_5"``, running or not: Slurm 22.05 answers 0 to a running task's own job
        id and cancels nothing (24.11 and 26.05 cancel it). Jobs that had already
        ended or that slurmctld no longer knows count as done; any other failure (slurmctld
        unreachable, permission denied) raises ``SlurmCommandError``. With ``signal`` it is
        ``signal`` instead, raising on the first id Slurm did not take it for.
        """
        if signal is not None:
            for job_id, why in self.signal(job_ids, signal, full=full).items():
                if why is not None:
                    raise SlurmCommandError(["scancel", f"--signal={signal}", str(job_id)],
                                            None, why)
            return
        ids = _cancel_ids(job_ids)
        if not ids:
            return
        try:
            result = self.runner.run("scancel", [str(job_id) for job_id in ids], check=False)
        finally:
            self.clear_cache()
        if result.returncode != 0:
            _check_scancel(result)

    def signal(
        self, job_ids: Iterable[int | str], signal: str, *, full: bool = True
    ) -> dict[int | str, str | None]:
        """Send ``signal`` (``"TERM"``, ``"USR1"``, a number; never KILL: ``cancel`` ends
        jobs) to running jobs; for each id, None when Slurm took it (or the job had already
        ended) and otherwise why not. Raises ``SlurmCommandError`` when scancel could not
        reach slurmctld at all.

        ``--signal`` alone reaches only the job's steps (``srun``); ``--full`` (the default)
        also signals the batch shell and its children, so a process the batch script started
        directly (a ``buildkite-agent``) gets it. The job ends only if its processes exit.
        Meant for running jobs: slurmctld does not signal a pending job, cancel it instead.

        No call blocks for long. Signalling a running task of an array whose other tasks are
        still pending, slurmctld delivers the signal and answers "Job can not be altered now,
        try again later" all the same (``job_str_signal``, 21.08 to 26.05); scancel then
        retries ten times over 95 s, signalling each time. From Slurm 24.05 ``scancel --ctld``
        asks slurmctld once for all ids and reports each: one call, at once. Before 24.05 each
        id gets its own ``scancel -v``, stopped at its first "retrying" (the signal went out
        with that first answer), all within the runner's timeout in all.
        """
        ids = _cancel_ids(job_ids)
        sig = _signal_arg(signal)
        if sig in ("KILL", "9"):
            # scancel --signal names a pending task by its array's whole pending record
            # (12_[3-7]): KILL there would end every pending task of the array
            raise ValueError("SIGKILL ends jobs: use cancel(), not signal()")
        if not ids:
            return {}
        flags = [f"--signal={sig}", *(["--full"] if full else [])]
        try:
            if self.reader.version() >= _CTLD_SIGNALS:
                return self._signal_ctld(ids, flags)
            return self._signal_each(ids, flags)
        finally:
            self.clear_cache()

    def _signal_ctld(self, ids: tuple[int | str, ...],
                     flags: list[str]) -> dict[int | str, str | None]:
        result = self.runner.run("scancel", ["--ctld", *flags, *map(str, ids)], check=False)
        if result.returncode != 0:
            _check_scancel(result)  # the request itself failed: raises
        out: dict[int | str, str | None] = dict.fromkeys(ids)
        by_text = {str(i): i for i in ids}
        for line in result.stderr.splitlines():
            match = _KILL_ERROR.search(line)
            if match is None or _GONE_LINE.search(line):
                continue  # an ended job, or not a job's line
            why = match.group("why").strip()[:300]
            if match.group("id") in by_text:
                out[by_text[match.group("id")]] = why
            else:
                # Slurm names a task by ARRAY_TASK where we gave its own job id: which of
                # ours it is, is not known, so none counts as signalled
                out = {i: f"{match.group('id')}: {why}" for i in ids}
                break
        return out

    def _signal_each(self, ids: tuple[int | str, ...],
                     flags: list[str]) -> dict[int | str, str | None]:
        deadline = time.monotonic() + self.runner.commands.timeout
        out: dict[int | str, str | None] = {}
        for job_id in ids:
            left = deadline - time.monotonic()
            if left <= 0:
                out[job_id] = "not tried: the time for this call was spent before it"
                continue
            try:
                result = self.runner.run("scancel", ["-v", *flags, str(job_id)], check=False,
                                         timeout=left, stop_on=_RETRYING)
            except SlurmCommandError as exc:
                if exc.returncode is not None or "timed out" not in str(exc):
                    raise
                out[job_id] = str(exc)
                deadline = 0.0  # slurmctld is slow: the ids after it wait for the next cycle
                continue
            if result.stopped:
                log.info("scancel: Slurm took the signal and asked to try again (a task of an "
                         "array with pending tasks); not retried", extra={"fields": {
                             "job-id": job_id}})
                out[job_id] = None
                continue
            errors = [line for line in result.stderr.splitlines() if "error:" in line]
            try:
                if result.returncode != 0:
                    _check_scancel(replace(result, stderr="\n".join(errors)))
                out[job_id] = None
            except SlurmCommandError as exc:
                if not errors or not any(_KILL_ERROR.search(line) for line in errors):
                    raise  # not about this job: slurmctld unreachable, scancel broken
                match = _KILL_ERROR.search(exc.stderr)
                out[job_id] = match.group("why").strip() if match else str(exc)
        return out

    # -- holds ---------------------------------------------------------------------------

    def hold(self, job_ids: Iterable[int], comment: str | None = None) -> None:
        """``scontrol hold ID,...``: an administrator's hold (reason ``JobHeldAdmin``, which
        the job's owner cannot release), then, when given, ``comment`` on each job so its
        owner sees why (``squeue -o %k``). One call for the hold, one per job for the
        comment: holds are rare, and scontrol takes one job per update."""
        self._hold_or_release("hold", job_ids, comment)

    def release(self, job_ids: Iterable[int], comment: str | None = "") -> None:
        """``scontrol release ID,...`` and the comment set back (empty by default)."""
        self._hold_or_release("release", job_ids, comment)

    def _hold_or_release(self, verb: str, job_ids: Iterable[int], comment: str | None) -> None:
        ids = _job_ids(job_ids)
        if not ids:
            return
        if comment is not None and _COMMENT_BAD.search(comment):
            raise ValueError("a job comment is one line of printable text")
        try:
            self.runner.run("scontrol", [verb, ",".join(str(i) for i in ids)])
            if comment is not None:
                for job_id in ids:
                    self.runner.run("scontrol", ["update", f"JobId={job_id}",
                                                 f"Comment={comment[:250]}"])
        finally:
            self.clear_cache()


def _check_scancel(result: CommandResult) -> None:
    """Raise unless scancel's non-zero exit only says some jobs had already ended."""
    lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
    gone = [line for line in lines if _GONE_LINE.search(line)]
    other = [line for line in lines if not _GONE_LINE.search(line)]
    if other:
        raise SlurmCommandError(result.argv, result.returncode, other[0][:300])
    if not gone and result.returncode not in _SILENT_GONE_EXITS:
        raise SlurmCommandError(result.argv, result.returncode, "")
    ended = [m.group("id") for m in (_GONE_LINE.search(line) for line in gone) if m]
    log.info("scancel: jobs had already ended", extra={"fields": {
        "job-ids": ",".join(ended) or "(not named)", "exit-code": result.returncode}})
