"""Scripts and environments from a StateSaveLocation laid out as slurmctld writes it."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from slurm_sync.slurm.statesave import decode_environment, read_job_files


def _env_file(entries: list[bytes]) -> bytes:
    return struct.pack("=I", len(entries)) + b"".join(e + b"\0" for e in entries)


def _write_job(root: Path, job_id: int, script: bytes, env: list[bytes]) -> Path:
    directory = root / f"hash.{job_id % 10}" / f"job.{job_id}"
    directory.mkdir(parents=True)
    (directory / "script").write_bytes(script + b"\0")
    (directory / "environment").write_bytes(_env_file(env))
    return directory


def test_reads_script_and_environment(tmp_path: Path) -> None:
    _write_job(tmp_path, 1234, b"#!/bin/sh\nsleep 1\n", [b"HOME=/home/alice", b"LANG=C.UTF-8"])
    files = read_job_files(str(tmp_path), 1234)
    assert files.script == "#!/bin/sh\nsleep 1\n"
    assert files.environment == ("HOME=/home/alice", "LANG=C.UTF-8")
    assert files.reason == ""


def test_odd_bytes_do_not_fail(tmp_path: Path) -> None:
    _write_job(tmp_path, 7, b"echo \xff\xfe", [b"NAME=caf\xe9", b"OK=1"])
    files = read_job_files(str(tmp_path), 7)
    assert files.script == "echo \ufffd\ufffd"
    assert files.environment == ("NAME=caf\ufffd", "OK=1")


def test_array_task_uses_the_array_jobs_files(tmp_path: Path) -> None:
    _write_job(tmp_path, 500, b"#!/bin/sh\necho $SLURM_ARRAY_TASK_ID\n", [b"A=1"])
    files = read_job_files(str(tmp_path), 503, array_job_id=500)
    assert files.script is not None and "SLURM_ARRAY_TASK_ID" in files.script
    assert files.directory.endswith("hash.0/job.500")


def test_the_environment_is_left_unread_when_not_wanted(tmp_path: Path) -> None:
    directory = _write_job(tmp_path, 61, b"#!/bin/sh\n", [b"A=1"])
    files = read_job_files(str(tmp_path), 61, environment=False)
    assert (files.script, files.environment, files.reason) == ("#!/bin/sh\n", None, "")
    (directory / "environment").chmod(0)
    (directory / "environment").unlink()  # not even looked for
    assert read_job_files(str(tmp_path), 61, environment=False).reason == ""


def test_missing_job_says_why(tmp_path: Path) -> None:
    files = read_job_files(str(tmp_path), 42)
    assert files.script is None and files.environment is None
    assert "no job.42 directory" in files.reason


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file_says_why(tmp_path: Path) -> None:
    directory = _write_job(tmp_path, 9, b"x", [b"A=1"])
    (directory / "script").chmod(0)
    files = read_job_files(str(tmp_path), 9)
    assert files.script is None and "not readable" in files.reason


def test_environment_size_cap() -> None:
    data = _env_file([b"A=" + b"x" * 100, b"B=" + b"y" * 100, b"C=1"])
    assert decode_environment(data, limit=150) == ("A=" + "x" * 100,)
