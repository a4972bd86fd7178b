"""Read a batch job's script and environment from slurmctld's StateSaveLocation, read-only.

    >>> files = read_job_files("/var/spool/slurmctld", 1234)  # doctest: +SKIP
    >>> files.script is None, files.reason  # doctest: +SKIP
    (True, 'no job.1234 directory in .../hash.4 (not a batch job, or purged)')

Slurm keeps ``hash.<job_id % 10>/job.<job_id>/script`` and ``environment`` while it holds a batch
job. Array tasks share the files of the array's first job (``array_job_id``). The environment file
is a 32-bit count followed by that many NUL-terminated ``NAME=value`` strings; bytes that are not
UTF-8 are replaced, never fatal. Nothing here raises for a missing or unreadable file: the result
says why there is no script.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

__all__ = ["JobFiles", "decode_environment", "read_job_files"]

DEFAULT_ENV_LIMIT = 1 << 20


@dataclass(frozen=True)
class JobFiles:
    """A job's script and environment as text, or None with the reason."""

    script: str | None
    environment: tuple[str, ...] | None
    directory: str
    reason: str = ""


def _job_dir(root: str, job_id: int) -> str:
    return os.path.join(root, f"hash.{job_id % 10}", f"job.{job_id}")


def decode_environment(data: bytes, limit: int = DEFAULT_ENV_LIMIT) -> tuple[str, ...]:
    """`decode_environment(b)` is the ``NAME=value`` strings of an environment file.

    Stops after ``limit`` bytes of entries; a count that does not match what follows is ignored
    (the entries present are returned).
    """
    body = data
    if len(data) >= 4:
        (count,) = struct.unpack("=I", data[:4])
        rest = data[4:]
        if rest.count(b"\0") >= min(count, 1) and count < (1 << 24):
            body = rest
    entries = []
    used = 0
    for raw in body.split(b"\0"):
        if not raw:
            continue
        used += len(raw)
        if used > limit:
            break
        entries.append(raw.decode("utf-8", errors="replace"))
    return tuple(entries)


def _read(path: str) -> tuple[bytes | None, str]:
    try:
        with open(path, "rb") as handle:
            return handle.read(), ""
    except FileNotFoundError:
        return None, f"{path} does not exist"
    except PermissionError:
        return None, f"{path} is not readable by this user (StateSaveLocation needs root or slurm)"
    except OSError as exc:
        return None, f"{path}: {exc.strerror}"


def read_job_files(
    root: str, job_id: int, array_job_id: int | None = None, env_limit: int = DEFAULT_ENV_LIMIT,
    *, environment: bool = True,
) -> JobFiles:
    """`read_job_files(root, id)` reads job ``id``'s files, or the array's first job's;
    ``environment=False`` leaves the environment file unread (None): half the cost of a job
    whose caller wants only the script."""
    candidates = [job_id]
    if array_job_id and array_job_id != job_id:
        candidates.append(array_job_id)
    reasons = []
    for candidate in candidates:
        directory = _job_dir(root, candidate)
        if not os.path.isdir(directory):
            reasons.append(
                f"no job.{candidate} directory in {os.path.dirname(directory)}"
                " (not a batch job, or purged)"
            )
            continue
        script_bytes, script_reason = _read(os.path.join(directory, "script"))
        env_bytes, env_reason = (_read(os.path.join(directory, "environment")) if environment
                                 else (None, ""))
        script = (
            script_bytes.rstrip(b"\0").decode("utf-8", errors="replace")
            if script_bytes is not None
            else None
        )
        decoded = decode_environment(env_bytes, env_limit) if env_bytes is not None else None
        return JobFiles(
            script=script,
            environment=decoded,
            directory=directory,
            reason="; ".join(r for r in (script_reason, env_reason) if r),
        )
    return JobFiles(
        script=None, environment=None, directory=_job_dir(root, job_id), reason="; ".join(reasons)
    )
