"""Run Slurm's commands: argv lists, never a shell; a timeout per call; errors that say what failed.

    >>> runner = Runner(SlurmCommands(bin_dir="lab/run/24.11/bin"))
    >>> result = runner.run("squeue", ["--json", "-t", "R"])  # doctest: +SKIP
    >>> result.stdout[:1]  # doctest: +SKIP
    b'{'

A failure raises ``SlurmCommandError`` (command, exit code, first stderr line). A failure means
"nothing could be read", never "there are no jobs": callers must not act on it destructively.
Every call is counted in ``Runner.calls``, so a cycle can show how many it made.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from sync.errors import SlurmCommandError

log = logging.getLogger(__name__)

__all__ = ["CallRecord", "CommandResult", "Runner", "SlurmCommands"]


@dataclass(frozen=True)
class SlurmCommands:
    """Where Slurm's binaries are: an explicit path per command, else ``bin_dir``, else PATH.

    ``prefix`` goes before every command (for example ``["chroot", "/srv/slurm"]`` or an ``ssh``
    to the controller); ``timeout`` is the default for each call, in seconds.
    """

    bin_dir: str | None = None
    paths: Mapping[str, str] = field(default_factory=dict)
    prefix: tuple[str, ...] = ()
    timeout: float = 120.0

    def argv(self, command: str, args: Sequence[str]) -> list[str]:
        """`commands.argv("squeue", ["--json"])` is the full argv to execute."""
        if command in self.paths:
            binary = self.paths[command]
        elif self.bin_dir:
            binary = os.path.join(self.bin_dir, command)
        else:
            binary = command
        return [*self.prefix, binary, *args]


@dataclass(frozen=True)
class CommandResult:
    """What one finished command returned."""

    argv: tuple[str, ...]
    returncode: int
    stdout: bytes
    stderr: str
    seconds: float


# Variables that change what Slurm's commands print; 22.05's sacct --json fails outright with
# SLURM_TIME_FORMAT set. They are never passed on, nor SBATCH_* input variables: a submit says
# every option it means in argv (SBATCH_ARRAY_INX or SBATCH_EXPORT in the service's environment
# would silently change what it submits).
_OUTPUT_ENV = frozenset(
    {"SLURM_TIME_FORMAT", "SQUEUE_FORMAT", "SQUEUE_FORMAT2", "SQUEUE_SORT", "SACCT_FORMAT",
     "SINFO_FORMAT", "SLURM_CLUSTERS"}
)


@dataclass(frozen=True)
class CallRecord:
    """One call as ``Runner.calls`` remembers it: what ran, how long, how much it printed."""

    argv: tuple[str, ...]
    returncode: int
    seconds: float
    stdout_bytes: int


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


class Runner:
    """Executes Slurm commands and records each call (argv, seconds, exit code) in ``calls``.

    Only the call's facts are kept, never its output: a 77 MB dump is freed once parsed.
    """

    def __init__(
        self, commands: SlurmCommands | None = None, env: Mapping[str, str] | None = None
    ) -> None:
        self.commands = commands or SlurmCommands()
        self.env = dict(env) if env is not None else None
        self.calls: list[CallRecord] = []

    def run(
        self,
        command: str,
        args: Sequence[str],
        *,
        timeout: float | None = None,
        stdin: bytes | None = None,
        check: bool = True,
    ) -> CommandResult:
        """Run ``command`` with ``args``; raise ``SlurmCommandError`` unless it exits 0."""
        argv = self.commands.argv(command, args)
        limit = timeout if timeout is not None else self.commands.timeout
        env = {k: v for k, v in os.environ.items()
               if k not in _OUTPUT_ENV and not k.startswith("SBATCH_")}
        if self.env is not None:
            env.update(self.env)
        started = time.monotonic()
        try:
            proc = subprocess.run(
                argv,
                input=stdin,
                capture_output=True,
                timeout=limit,
                env=env,
                check=False,
            )
        except FileNotFoundError as exc:
            raise SlurmCommandError(argv, None, "", detail=f"not found ({exc.strerror})") from exc
        except PermissionError as exc:
            raise SlurmCommandError(argv, None, "", detail="not executable") from exc
        except OSError as exc:
            # ENOEXEC (a script without #!, a binary for another machine), ENOTDIR (bin_dir is
            # a file), E2BIG...: the file named is what to fix, in slurm.bin_dir/commands/prefix
            what = exc.filename or argv[0]
            hint = (": not a program this machine runs (a script needs a #! line)"
                    if exc.errno == errno.ENOEXEC else "")
            raise SlurmCommandError(
                argv, None, "", detail=f"cannot be run: {what}: {exc.strerror}{hint}"
            ) from exc
        except ValueError as exc:  # a NUL character in an argument
            raise SlurmCommandError(argv, None, "", detail=f"cannot be run: {exc}") from exc
        except subprocess.TimeoutExpired as exc:
            stderr = (exc.stderr or b"").decode("utf-8", errors="replace")
            raise SlurmCommandError(
                argv, None, _first_line(stderr), detail=f"timed out after {limit:g} s"
            ) from exc
        stderr = proc.stderr.decode("utf-8", errors="replace")
        result = CommandResult(
            argv=tuple(argv),
            returncode=proc.returncode,
            stdout=proc.stdout,
            stderr=stderr,
            seconds=time.monotonic() - started,
        )
        self.calls.append(
            CallRecord(result.argv, result.returncode, result.seconds, len(result.stdout))
        )
        log.debug("slurm call", extra={"fields": {
            "argv": " ".join(argv), "exit-code": proc.returncode,
            "seconds": round(result.seconds, 3), "bytes": len(result.stdout)}})
        if check and proc.returncode != 0:
            raise SlurmCommandError(argv, proc.returncode, _first_line(stderr))
        return result
