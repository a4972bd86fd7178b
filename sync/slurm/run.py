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
import re
import selectors
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from slurm_sync.errors import SlurmCommandError

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
    stopped: bool = False  # ended by ``stop_on`` (returncode is then -SIGKILL)


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
        environ: Mapping[str, str] | None = None,
        stop_on: re.Pattern[str] | None = None,
        output_env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run ``command`` with ``args``; raise ``SlurmCommandError`` unless it exits 0.

        ``timeout`` bounds the call (the commands' default otherwise): the command and every
        process it started (a wrapper's children, an ``ssh``) are killed when it is up.
        ``environ``: the whole environment of the command instead of the service's own (the
        runner's ``env`` is still added). ``stop_on``: the command is stopped as soon as a
        line of its stderr matches (the result's ``stopped`` is then true); no ``stdin``.
        ``output_env``: variables that shape the output (``SLURM_TIME_FORMAT``), set for this
        call only; the service's own are never passed on, so the parsers see what they expect.
        """
        argv = self.commands.argv(command, args)
        limit = timeout if timeout is not None else self.commands.timeout
        env = {k: v for k, v in (os.environ if environ is None else environ).items()
               if k not in _OUTPUT_ENV and not k.startswith("SBATCH_")}
        if self.env is not None:
            env.update(self.env)
        if output_env is not None:
            env.update(output_env)
        started = time.monotonic()
        try:
            proc = _execute(argv, env, stdin, limit, stop_on)
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
            stopped=proc.stopped,
        )
        self.calls.append(
            CallRecord(result.argv, result.returncode, result.seconds, len(result.stdout))
        )
        log.debug("slurm call", extra={"fields": {
            "argv": " ".join(argv), "exit-code": proc.returncode,
            "seconds": round(result.seconds, 3), "bytes": len(result.stdout)}})
        if check and proc.returncode != 0 and not proc.stopped:
            raise SlurmCommandError(argv, proc.returncode, _first_line(stderr))
        return result


@dataclass(frozen=True)
class _Finished:
    returncode: int
    stdout: bytes
    stderr: bytes
    stopped: bool = False


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (its own session): a wrapper that did not ``exec``
    and whatever it started go with it, instead of running on (a scancel retrying for 95 s)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()


def _execute(argv: list[str], env: Mapping[str, str], stdin: bytes | None, limit: float,
             stop_on: re.Pattern[str] | None) -> _Finished:
    """Run ``argv`` in a session of its own, within ``limit`` seconds; raises
    ``subprocess.TimeoutExpired`` (with the stderr so far) once the group is killed."""
    if stop_on is not None and stdin is not None:
        raise ValueError("stop_on takes no stdin")
    with subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else
                          subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          env=dict(env), start_new_session=True) as proc:
        if stop_on is None:
            try:
                out, err = proc.communicate(stdin, timeout=limit)
            except subprocess.TimeoutExpired as exc:
                _kill_group(proc)
                proc.wait()
                raise subprocess.TimeoutExpired(argv, limit, exc.output, exc.stderr) from None
            except BaseException:
                _kill_group(proc)
                raise
            return _Finished(proc.returncode, out, err)
        return _watch(proc, argv, limit, stop_on)


def _watch(proc: subprocess.Popen[bytes], argv: list[str], limit: float,
           stop_on: re.Pattern[str]) -> _Finished:
    """Read both pipes until they close, the deadline, or a stderr line matching ``stop_on``."""
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + limit
    chunks: dict[int, list[bytes]] = {proc.stdout.fileno(): [], proc.stderr.fileno(): []}
    err_fd = proc.stderr.fileno()
    stopped = False
    with selectors.DefaultSelector() as selector:
        for pipe in (proc.stdout, proc.stderr):
            selector.register(pipe, selectors.EVENT_READ)
        try:
            while selector.get_map() and not stopped:
                left = deadline - time.monotonic()
                if left <= 0:
                    _kill_group(proc)
                    proc.wait()
                    raise subprocess.TimeoutExpired(argv, limit, b"".join(chunks[
                        proc.stdout.fileno()]), b"".join(chunks[err_fd]))
                for key, _ in selector.select(left):
                    data = os.read(key.fd, 65536)
                    if not data:
                        selector.unregister(key.fileobj)
                        continue
                    chunks[key.fd].append(data)
                    if key.fd == err_fd:
                        text = b"".join(chunks[err_fd]).decode("utf-8", errors="replace")
                        lines = text.split("\n")[:-1]  # complete lines only
                        stopped = any(stop_on.search(line) for line in lines)
        except BaseException:
            _kill_group(proc)
            raise
    if stopped:
        _kill_group(proc)
    proc.wait()
    return _Finished(proc.returncode, b"".join(chunks[proc.stdout.fileno()]),
                     b"".join(chunks[err_fd]), stopped)
