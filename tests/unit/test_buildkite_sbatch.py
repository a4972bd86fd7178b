"""What a failed sbatch means, told from what Slurm returns: the exit status, whether the runner
killed it, and the ``Batch job submission failed: <slurm_strerror>`` line, by Slurm's own error
strings (``src/common/slurm_errno.c``; the lines below are as 22.05, 24.11 and 26.05 print them)
and never by words of our own."""

from __future__ import annotations

import subprocess

import pytest

from slurm_sync.connectors.buildkite.sbatch import (
    ANSWER_LOST,
    SBATCH_RETRYING,
    TRY_LATER,
    Failure,
    classify,
    slurm_error,
)
from slurm_sync.errors import SlurmCommandError, SlurmFormatError

ARGV = ["sbatch", "--parsable", "--job-name=buildkite"]


def _failed(message: str, code: int = 1) -> SlurmCommandError:
    return SlurmCommandError(ARGV, code, f"sbatch: error: Batch job submission failed: {message}")


@pytest.mark.parametrize(("message", "kind", "name"), [
    ("Socket timed out on send/recv operation", Failure.LOST,
     "SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT"),
    ("Zero Bytes were transmitted or received", Failure.LOST,
     "SLURM_PROTOCOL_SOCKET_ZERO_BYTES_SENT"),
    ("Unable to contact slurm controller (receive failure)", Failure.LOST,
     "SLURMCTLD_COMMUNICATIONS_RECEIVE_ERROR"),
    ("Unable to contact slurm controller (connect failure)", Failure.NOT_SUBMITTED,
     "SLURMCTLD_COMMUNICATIONS_CONNECTION_ERROR"),
    ("Unable to contact slurm controller (send failure)", Failure.NOT_SUBMITTED,
     "SLURMCTLD_COMMUNICATIONS_SEND_ERROR"),
    ("Rate limit exceeded, please retry momentarily", Failure.NOT_SUBMITTED,
     "SLURMCTLD_COMMUNICATIONS_BACKOFF"),
    ("Slurm backup controller in standby mode", Failure.NOT_SUBMITTED,
     "ESLURM_IN_STANDBY_MODE"),
    ("Unable to create job record, try again", Failure.NOT_SUBMITTED,
     "ESLURM_ERROR_ON_DESC_TO_RECORD_COPY"),
    ("MaxJobCount limit reached", Failure.NOT_SUBMITTED, "ESLURM_MAX_JOB_COUNT"),
    ("Protocol authentication error", Failure.NOT_SUBMITTED,
     "SLURM_PROTOCOL_AUTHENTICATION_ERROR"),
    ("System submissions disabled", Failure.NOT_SUBMITTED, "ESLURM_SUBMISSIONS_DISABLED"),
    ("Invalid partition name specified", Failure.REFUSED, ""),
    ("Invalid account or account/partition combination specified", Failure.REFUSED, ""),
    ("Requested time limit is invalid (missing or exceeds some limit)", Failure.REFUSED, ""),
    ("Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)",
     Failure.REFUSED, ""),
])
def test_sbatchs_line_is_read_by_slurms_own_error_strings(
    message: str, kind: Failure, name: str
) -> None:
    failure = classify(_failed(message))
    assert (failure.kind, failure.error) == (kind, name)
    assert message in failure.text and (name in failure.describe() if name else True)


def test_a_site_plugins_words_before_the_failure_are_a_refusal() -> None:
    """A job_submit plugin's message to the user (``slurm.log_user``) comes before sbatch's
    own line, and is the first line of stderr. Whatever words it uses ("not found",
    "connection", "try again": once read here as an unreachable controller, so the job waited
    in the outbox for ever), the plugin refused this job."""
    for words in ("Partition gpu not found: use one of main, ci",
                  "No connection between account ci and partition gpu",
                  "GPU jobs need --gres=gpu:N, try again with one"):
        failure = classify(SlurmCommandError(ARGV, 1, f"sbatch: error: {words}"))
        assert (failure.kind, failure.error) == (Failure.REFUSED, ""), words


def test_sbatchs_own_retry_notes_mean_try_later() -> None:
    """sbatch retries a full queue, busy nodes and EAGAIN by itself; when that ends in a
    failure, its first stderr line is its note, printed as an error."""
    failure = classify(SlurmCommandError(
        ARGV, 1, "sbatch: error: Slurm temporarily unable to accept job, sleeping and retrying"))
    assert (failure.kind, failure.error) == (Failure.NOT_SUBMITTED, "EAGAIN")
    assert slurm_error("sbatch: error: Slurm job queue full, sleeping and retrying") == (
        "ESLURM_MAX_JOB_COUNT", "Slurm job queue full, sleeping and retrying")


def test_what_happened_to_the_process_decides_before_any_words() -> None:
    """Killed at slurm.timeout (the runner's TimeoutExpired) or by a signal, or exit 0 without
    a job id: the answer is lost. Never run at all (not found): nothing was submitted."""
    timed_out = SlurmCommandError(ARGV, None, "", detail="timed out after 8 s")
    timed_out.__cause__ = subprocess.TimeoutExpired(ARGV, 8)
    assert classify(timed_out).kind is Failure.LOST
    assert classify(SlurmCommandError(ARGV, -9, "")).kind is Failure.LOST
    assert classify(SlurmFormatError("sbatch --parsable", "", "no id")).kind is Failure.LOST
    missing = SlurmCommandError(ARGV, None, "", detail="timed out (it says so, but never ran)")
    missing.__cause__ = FileNotFoundError(2, "No such file or directory")
    assert classify(missing).kind is Failure.NOT_SUBMITTED
    assert classify(OSError(28, "No space left on device")).kind is Failure.NOT_SUBMITTED
    # sbatch's own option check (no "Batch job submission failed"): this job's options
    assert classify(SlurmCommandError(
        ARGV, 1, "sbatch: error: Invalid --time specification")).kind is Failure.REFUSED


def test_the_tables_are_slurms_and_do_not_overlap() -> None:
    assert not set(ANSWER_LOST) & set(TRY_LATER)
    assert not set(ANSWER_LOST.values()) & set(TRY_LATER.values())
    assert set(SBATCH_RETRYING) <= set(TRY_LATER)
    assert all(name.isupper() for name in (*ANSWER_LOST, *TRY_LATER))
