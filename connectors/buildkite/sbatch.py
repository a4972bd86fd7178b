"""What a failed ``sbatch --parsable`` means, from what Slurm returns.

    >>> from slurm_sync.errors import SlurmCommandError
    >>> failure = classify(SlurmCommandError(["sbatch"], 1, "sbatch: error: Batch job "
    ...     "submission failed: Socket timed out on send/recv operation"))
    >>> failure.kind.value, failure.error
    ('lost', 'SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT')
    >>> classify(SlurmCommandError(["sbatch"], 1, "sbatch: error: Batch job submission "
    ...     "failed: Invalid partition name specified")).kind.value
    'refused'

sbatch prints the job id on stdout and exits 0 when slurmctld took the job; otherwise it
writes ``Batch job submission failed: <slurm_strerror(errno)>`` and exits with its error code
(1, ``SLURM_EXIT_ERROR``, which sbatch never gets from us). So:

- exit 0 without a job id on stdout (``SlurmFormatError``), killed by a signal (exit < 0) or
  at ``slurm.timeout`` (the runner's ``subprocess.TimeoutExpired``): the answer was lost, and
  slurmctld may hold the job (``LOST``);
- Slurm's error is one of a request whose answer did not come back (``ANSWER_LOST``: the
  socket timed out after the request went out): ``LOST`` too;
- Slurm's error says slurmctld was not reached or asks to come back later (``TRY_LATER``), or
  sbatch never ran (not found, not executable): nothing was submitted (``NOT_SUBMITTED``);
- any other error is slurmctld's (or sbatch's own option check's) refusal of this job
  (``REFUSED``): a bad partition, account, QOS, time limit, a site's job_submit plugin.

The error strings are Slurm's own (``src/common/slurm_errno.c``, the table behind
``slurm_strerror``; ``EAGAIN`` is the C library's), by the names Slurm gives them; sbatch's
notes when it retries by itself (``src/sbatch/sbatch.c``) are in ``SBATCH_RETRYING``. They are
the same in 22.05, 24.11 and 26.05 but for the ones each version added (the table keeps both).
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from enum import Enum

from slurm_sync.errors import SlurmCommandError, SlurmError, SlurmFormatError

__all__ = ["ANSWER_LOST", "SBATCH_RETRYING", "TRY_LATER", "Failure", "SbatchFailure",
           "classify", "slurm_error"]


class Failure(str, Enum):
    """What a failed sbatch left behind."""

    LOST = "lost"  # slurmctld may hold the job: look for it before any new sbatch
    NOT_SUBMITTED = "not_submitted"  # nothing was submitted; try again later
    REFUSED = "refused"  # this job is refused: final


#: Errors of a request that went out and whose answer did not come back: the job may be taken.
ANSWER_LOST = {
    "SLURM_PROTOCOL_SOCKET_IMPL_TIMEOUT": "Socket timed out on send/recv operation",
    "SLURM_PROTOCOL_SOCKET_ZERO_BYTES_SENT": "Zero Bytes were transmitted or received",
    "SLURMCTLD_COMMUNICATIONS_RECEIVE_ERROR":
        "Unable to contact slurm controller (receive failure)",
    "SLURMCTLD_COMMUNICATIONS_SHUTDOWN_ERROR":
        "Unable to contact slurm controller (shutdown failure)",
    "SLURM_COMMUNICATIONS_RECEIVE_ERROR": "Message receive failure",
    "SLURM_COMMUNICATIONS_SHUTDOWN_ERROR": "Communication shutdown failure",
    "SLURM_COMMUNICATIONS_READ_TIMEOUT": "Connection timed out reading",
}
#: Errors that say slurmctld was not reached, or cannot take a job now: nothing was submitted.
TRY_LATER = {
    "SLURMCTLD_COMMUNICATIONS_CONNECTION_ERROR":
        "Unable to contact slurm controller (connect failure)",
    "SLURMCTLD_COMMUNICATIONS_SEND_ERROR": "Unable to contact slurm controller (send failure)",
    "SLURMCTLD_COMMUNICATIONS_BACKOFF": "Rate limit exceeded, please retry momentarily",
    "SLURMCTLD_COMMUNICATIONS_HARD_DROP": "Rate limit exceeded, please retry later",
    "SLURM_COMMUNICATIONS_CONNECTION_ERROR": "Communication connection failure",
    "SLURM_COMMUNICATIONS_SEND_ERROR": "Message send failure",
    "SLURM_COMMUNICATIONS_CONNECT_TIMEOUT": "Connection timed out establishing",
    "SLURM_COMMUNICATIONS_WRITE_TIMEOUT": "Connection timed out writing",
    "SLURM_PROTOCOL_AUTHENTICATION_ERROR": "Protocol authentication error",
    "ESLURM_IN_STANDBY_MODE": "Slurm backup controller in standby mode",
    "ESLURM_IN_STANDBY_USE_BACKUP": "Controller is in standby mode, try a different controller",
    "ESLURM_ERROR_ON_DESC_TO_RECORD_COPY": "Unable to create job record, try again",
    "ESLURM_MAX_JOB_COUNT": "MaxJobCount limit reached",
    "ESLURM_NODES_BUSY": "Requested nodes are busy",
    "ESLURM_SUBMISSIONS_DISABLED": "System submissions disabled",
    "ESLURM_DB_CONNECTION": "Unable to connect to database",
    "EAGAIN": "Resource temporarily unavailable",
}
#: sbatch's notes as it retries a full queue, busy nodes or EAGAIN by itself: the first line
#: of its stderr when those retries end in a failure.
SBATCH_RETRYING = {
    "ESLURM_MAX_JOB_COUNT": "Slurm job queue full, sleeping and retrying",
    "ESLURM_NODES_BUSY": "Job creation temporarily disabled, retrying",
    "EAGAIN": "Slurm temporarily unable to accept job, sleeping and retrying",
}

_FAILED = re.compile(r"Batch job submission failed: (?P<message>.+?)\s*$")
_BY_MESSAGE = {message: name for table in (ANSWER_LOST, TRY_LATER)
               for name, message in table.items()}
_RETRYING = {message: name for name, message in SBATCH_RETRYING.items()}


@dataclass(frozen=True)
class SbatchFailure:
    """How an sbatch failed: ``kind``, Slurm's name of the error when sbatch gave one we
    know (``error``), and what happened in words (``text``)."""

    kind: Failure
    error: str
    text: str

    def describe(self) -> str:
        """`failure.describe()`: the text, with Slurm's error name when known."""
        return f"{self.text} [{self.error}]" if self.error else self.text


def slurm_error(line: str) -> tuple[str, str] | None:
    """`slurm_error("sbatch: error: Batch job submission failed: Message send failure")` is
    ``("SLURM_COMMUNICATIONS_SEND_ERROR", "Message send failure")``: Slurm's name and words of
    the error sbatch reports, or of its own note that it was retrying; None for another line
    (a refusal's words, or no ``Batch job submission failed`` at all)."""
    found = _FAILED.search(line)
    if found is not None:
        message = found["message"]
        return (_BY_MESSAGE[message], message) if message in _BY_MESSAGE else None
    for message, name in _RETRYING.items():
        if message in line:
            return name, message
    return None


def classify(exc: SlurmError | OSError | ValueError) -> SbatchFailure:
    """What the failure ``exc`` of ``SlurmControl.submit`` or ``submit_array`` means (see the
    module). An OSError (the batch map file not written) or ValueError (a bad request)
    happened before sbatch ran: nothing was submitted."""
    if isinstance(exc, SlurmFormatError):
        return SbatchFailure(Failure.LOST, "", f"sbatch exited 0 without a job id: {exc}")
    if not isinstance(exc, SlurmCommandError):
        return SbatchFailure(Failure.NOT_SUBMITTED, "", f"not run: {exc}")
    if exc.returncode is None:
        if isinstance(exc.__cause__, subprocess.TimeoutExpired):
            return SbatchFailure(Failure.LOST, "", str(exc))
        return SbatchFailure(Failure.NOT_SUBMITTED, "", str(exc))  # not found, not executable
    if exc.returncode < 0:
        return SbatchFailure(Failure.LOST, "", str(exc))  # killed by a signal
    named = slurm_error(exc.stderr)
    if named is None:
        return SbatchFailure(Failure.REFUSED, "", str(exc))
    name, _ = named
    kind = Failure.LOST if name in ANSWER_LOST else Failure.NOT_SUBMITTED
    return SbatchFailure(kind, name, str(exc))
