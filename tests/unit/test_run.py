"""The runner runs real processes: argv lists, timeouts, and errors that name the command."""

from __future__ import annotations

import re
import stat
import sys
import time
from pathlib import Path

import pytest

from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.run import Runner, SlurmCommands


def _script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text(f"#!{sys.executable}\nimport sys, time\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_argv_is_passed_verbatim_never_through_a_shell(tmp_path: Path) -> None:
    _script(tmp_path, "squeue", "print('|'.join(sys.argv[1:]))")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path)))
    result = runner.run("squeue", ["--name=a b; rm -rf /", "$(id)"])
    assert result.stdout.decode().strip() == "--name=a b; rm -rf /|$(id)"
    assert len(runner.calls) == 1


def test_non_zero_exit_names_command_code_and_first_stderr_line(tmp_path: Path) -> None:
    _script(tmp_path, "sacct",
            "sys.stderr.write('\\nsacct: error: Problem talking to the database\\nmore\\n');"
            " sys.exit(1)")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path)))
    with pytest.raises(SlurmCommandError) as err:
        runner.run("sacct", ["--json"])
    assert err.value.returncode == 1
    assert err.value.stderr == "sacct: error: Problem talking to the database"
    assert "sacct --json" in str(err.value) and "exit code 1" in str(err.value)


def test_timeout(tmp_path: Path) -> None:
    _script(tmp_path, "squeue", "time.sleep(30)")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path), timeout=0.5))
    with pytest.raises(SlurmCommandError, match=r"timed out after 0\.5 s"):
        runner.run("squeue", [])


def test_missing_binary() -> None:
    runner = Runner(SlurmCommands(paths={"squeue": "/nonexistent/squeue"}))
    with pytest.raises(SlurmCommandError, match="not found"):
        runner.run("squeue", ["--json"])


def test_paths_and_prefix() -> None:
    commands = SlurmCommands(bin_dir="/opt/slurm/bin", paths={"sacct": "/usr/local/bin/sacct"},
                             prefix=("chroot", "/srv/s"))
    assert commands.argv("squeue", ["-h"]) == ["chroot", "/srv/s", "/opt/slurm/bin/squeue", "-h"]
    assert commands.argv("sacct", []) == ["chroot", "/srv/s", "/usr/local/bin/sacct"]


def test_output_changing_environment_is_not_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """22.05's sacct --json fails with SLURM_TIME_FORMAT set; such variables never reach Slurm."""
    monkeypatch.setenv("SLURM_TIME_FORMAT", "relative")
    monkeypatch.setenv("SQUEUE_FORMAT", "%i")
    monkeypatch.setenv("KEEP_ME", "yes")
    _script(tmp_path, "sacct", "import os; print(sorted(k for k in os.environ"
            " if k in ('SLURM_TIME_FORMAT', 'SQUEUE_FORMAT', 'KEEP_ME', 'SLURM_CONF')))")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path)), env={"SLURM_CONF": "/etc/x.conf"})
    assert runner.run("sacct", []).stdout.decode().strip() == "['KEEP_ME', 'SLURM_CONF']"


def test_a_timeout_kills_what_the_command_started_too(tmp_path: Path) -> None:
    """A wrapper that does not exec (an ssh, a site's shell script): its child is killed with
    it when the time is up, instead of running on and acting late."""
    marker = tmp_path / "late"
    child = _script(tmp_path, "child", f"time.sleep(1.5); open({str(marker)!r}, 'w').close()")
    _script(tmp_path, "scancel",
            f"import subprocess\nsubprocess.Popen([{str(child)!r}])\ntime.sleep(30)")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path), timeout=0.5))
    started = time.monotonic()
    with pytest.raises(SlurmCommandError, match=r"timed out after 0\.5 s"):
        runner.run("scancel", ["1"])
    assert time.monotonic() - started < 10
    time.sleep(2.5)
    assert not marker.exists(), "the wrapper's child ran on after the timeout"


def test_stop_on_ends_the_command_at_the_first_matching_stderr_line(tmp_path: Path) -> None:
    _script(tmp_path, "scancel",
            "print('out', flush=True)\n"
            "sys.stderr.write('scancel: Signal 15 to full job 7_0\\n'); sys.stderr.flush()\n"
            "sys.stderr.write('scancel: Job is in transitional state, retrying\\n')\n"
            "sys.stderr.flush(); time.sleep(30)")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path), timeout=20))
    started = time.monotonic()
    result = runner.run("scancel", ["-v"], stop_on=re.compile("retrying"))
    assert time.monotonic() - started < 10
    assert result.stopped and result.returncode != 0
    assert "retrying" in result.stderr and result.stdout == b"out\n"
    assert len(runner.calls) == 1
    # a command that ends by itself is not stopped, and a failure still raises
    _script(tmp_path, "squeue", "sys.stderr.write('no\\n'); sys.exit(1)")
    with pytest.raises(SlurmCommandError):
        runner.run("squeue", [], stop_on=re.compile("retrying"))
    # and the time bound holds when the line never comes
    _script(tmp_path, "sacct", "time.sleep(30)")
    with pytest.raises(SlurmCommandError, match=r"timed out after 0\.5 s"):
        runner.run("sacct", [], stop_on=re.compile("retrying"), timeout=0.5)


def test_environ_replaces_the_services_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLURM_SERVICE_SECRET", "s3cret")
    _script(tmp_path, "sbatch", "import os; print(sorted(os.environ))")
    runner = Runner(SlurmCommands(bin_dir=str(tmp_path)), env={"EXTRA": "1"})
    names = runner.run("sbatch", [], environ={"PATH": "/usr/bin"}).stdout.decode()
    assert "SLURM_SERVICE_SECRET" not in names and "EXTRA" in names and "PATH" in names
    assert "SLURM_SERVICE_SECRET" in runner.run("sbatch", []).stdout.decode()
