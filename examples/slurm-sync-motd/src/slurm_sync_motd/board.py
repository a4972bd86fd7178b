"""The board: a folder with one small file per running job, and the motd file made from them.

    /run/slurm-sync-motd/lab2411-42-1795321801.job   "alice   42  train  lab2411n1  since ..."
    /etc/motd.d/50-slurm-jobs                         a header and every line above, sorted

Everything here does I/O and nothing here decides anything: the connector's ``plan`` says which
files to write and remove, this module writes and removes them. Each file is written whole to a
temporary name and renamed, so a reader (``cat /etc/motd.d/*`` at login) never sees half a line.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable

__all__ = ["SUFFIX", "file_name", "list_board", "read_lines", "remove", "render", "write"]

SUFFIX = ".job"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def file_name(key: str) -> str:
    """The board file of one job run, from its delivery key (``cluster/job_id/start``).

    >>> file_name("lab2411/42/1795321801")
    'lab2411-42-1795321801.job'
    >>> file_name("a/b c/1/2")
    'a_b_c-1-2.job'
    """
    cluster, job_id, start = key.rsplit("/", 2)
    return "-".join(_UNSAFE.sub("_", part) for part in (cluster, job_id, start)) + SUFFIX


def list_board(directory: str) -> frozenset[str]:
    """The board files now in ``directory`` (none when it does not exist yet); an OSError when
    it cannot be read, so that nothing is planned from a board we could not see."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return frozenset()
    return frozenset(n for n in names if n.endswith(SUFFIX) and not n.startswith("."))


def read_lines(directory: str) -> list[str]:
    """Every board line, sorted (a file that went away meanwhile is left out)."""
    lines = []
    for name in sorted(list_board(directory)):
        try:
            with open(os.path.join(directory, name), encoding="utf-8") as handle:
                lines.append(handle.read().rstrip("\n"))
        except FileNotFoundError:
            continue
    return sorted(lines)


def _replace(path: str, text: str, mode: int = 0o644) -> None:
    folder = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(dir=folder, prefix=".motd.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def write(directory: str, name: str, line: str) -> None:
    """Put one job's line on the board (the folder is made on first use)."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    _replace(os.path.join(directory, name), line.rstrip("\n") + "\n")


def remove(directory: str, name: str) -> bool:
    """Take one job's line off the board; False when it was not there."""
    try:
        os.unlink(os.path.join(directory, name))
    except FileNotFoundError:
        return False
    return True


def render(path: str, header: str, lines: Iterable[str]) -> None:
    """Write the motd file: the header and the board's lines (or that nothing runs)."""
    body = list(lines)
    text = header.rstrip("\n") + "\n" + ("\n".join(body) if body else "  (no jobs running)")
    _replace(path, text + "\n")
