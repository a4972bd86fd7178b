"""The one exception tree of slurm-sync.

    SyncError
    ├── ConfigError                      a config file or option is wrong (exit 2)
    ├── SlurmError                       Slurm could not be read or acted on
    │   ├── SlurmCommandError            a Slurm command failed, timed out or is missing
    │   └── SlurmFormatError             Slurm's output is not what any known version prints
    └── ConnectorError                   (connectors, later issues)

Every error names the offending input: the command and its exit code, the JSON field and value,
the config path.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "SlurmCommandError",
    "SlurmError",
    "SlurmFormatError",
    "SyncError",
]


class SyncError(Exception):
    """Base of every error slurm-sync raises on purpose."""


class ConfigError(SyncError):
    """A configuration file or command-line option is wrong; nothing was changed."""


class SlurmError(SyncError):
    """Slurm could not be read or acted on. Never means "no jobs"."""


class SlurmCommandError(SlurmError):
    """A Slurm command failed: non-zero exit, timeout, or binary not found.

    ``argv`` is the command as run, ``returncode`` is None when it never exited (timeout, not
    found), ``stderr`` is the first non-empty line of its standard error.
    """

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stderr: str, *, detail: str = ""
    ) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr
        self.detail = detail
        what = detail or (
            f"exit code {returncode}" if returncode is not None else "did not finish"
        )
        message = f"`{' '.join(self.argv)}` failed: {what}"
        if stderr:
            message += f": {stderr}"
        super().__init__(message)


class SlurmFormatError(SlurmError):
    """Slurm printed something no known version prints.

    ``field`` is the JSON path of the value (e.g. ``jobs[3].job_state``), ``value`` a short repr of
    it, ``producer`` the data_parser/openapi plugin that made the document when known.
    """

    def __init__(self, field: str, value: object, reason: str, producer: str = "") -> None:
        self.field = field
        self.value = value
        self.reason = reason
        self.producer = producer
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        where = f" (from {producer})" if producer else ""
        super().__init__(f"{field}={shown}: {reason}{where}")
