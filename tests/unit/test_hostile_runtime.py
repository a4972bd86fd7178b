"""What goes wrong while running: a Slurm command that cannot be run is a SlurmError naming
it, and every way out of ``main`` is one line and a documented exit code (issue 12)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import pytest

import slurm_sync.cli
from slurm_sync.cli import main
from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.run import Runner, SlurmCommands
from slurm_sync.store import StoreError

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "slurm" / "24.11"


def _standin(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    squeue = bin_dir / "squeue"
    squeue.write_text(
        f"#!{sys.executable}\nimport sys\n"
        "if '--version' in sys.argv: print('slurm 24.11.5'); sys.exit(0)\n"
        f"sys.stdout.write(open({str(FIXTURE / 'squeue-running.json')!r}).read())\n")
    squeue.chmod(0o755)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path / "state"),
                                  "slurm": {"bin_dir": str(bin_dir)}}))
    return config


# --- Slurm commands that cannot be run -------------------------------------------------------


def test_a_slurm_command_that_is_not_a_program(tmp_path: Path) -> None:
    squeue = tmp_path / "squeue"
    squeue.write_text("this is not a program\n")
    squeue.chmod(0o755)
    with pytest.raises(SlurmCommandError) as caught:
        Runner(SlurmCommands(bin_dir=str(tmp_path))).run("squeue", ["--json"])
    message = str(caught.value)
    assert str(squeue) in message and "Exec format error" in message and "#!" in message


def test_a_bin_dir_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "bin").write_text("x")
    with pytest.raises(SlurmCommandError, match=r"[Nn]ot a directory"):
        Runner(SlurmCommands(bin_dir=str(tmp_path / "bin"))).run("squeue", ["--json"])


def test_jobs_with_a_squeue_that_is_not_a_program_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _standin(tmp_path)
    squeue = tmp_path / "bin" / "squeue"
    squeue.write_text("\x7fELF garbage")
    assert main(["-c", str(config), "jobs"]) == 3
    err = capsys.readouterr().err
    assert str(squeue) in err and "Traceback" not in err


# --- main: every exception is one line and a code --------------------------------------------


def _raising(exc: BaseException) -> Any:
    def raise_it(*args: object, **kwargs: object) -> None:
        raise exc
    return raise_it


def test_an_unexpected_exception_is_one_line_and_exit_70(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _standin(tmp_path)
    monkeypatch.setattr(slurm_sync.cli, "_cmd_jobs",
                        _raising(ZeroDivisionError("boom\nsecond line")))
    assert main(["-c", str(config), "jobs"]) == 70
    out, err = capsys.readouterr()
    assert "internal error: ZeroDivisionError: boom" in err
    assert "second line" not in err and "Traceback" not in out + err
    assert len(err.strip().splitlines()) == 1


def test_the_traceback_of_an_unexpected_exception_shows_with_vv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _standin(tmp_path)
    monkeypatch.setattr(slurm_sync.cli, "_cmd_jobs", _raising(ZeroDivisionError("boom")))
    assert main(["-vv", "-c", str(config), "jobs"]) == 70
    err = capsys.readouterr().err
    assert "internal error" in err and "Traceback" in err and "raise_it" in err
    logging.getLogger("sync").handlers.clear()


def test_an_exception_before_the_config_is_read_is_caught_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slurm_sync.cli, "discover", _raising(ImportError("no module named x")))
    assert main(["-vv", "jobs"]) == 70
    err = capsys.readouterr().err
    assert "internal error: ImportError" in err and "Traceback" in err
    logging.getLogger("sync").handlers.clear()


def test_interrupted_is_130(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(slurm_sync.cli, "_cmd_jobs", _raising(KeyboardInterrupt()))
    assert main(["-c", str(_standin(tmp_path)), "jobs"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_output_closed_early_is_141_and_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slurm_sync.cli, "_cmd_jobs", _raising(BrokenPipeError(32, "Broken pipe")))
    assert main(["-c", str(_standin(tmp_path)), "jobs"]) == 141
    assert capsys.readouterr().err == ""


def test_a_state_database_that_cannot_be_opened_is_exit_2_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    message = f"cannot open the state database {tmp_path}/state/state.db: disk I/O error"
    monkeypatch.setattr(slurm_sync.cli.Store, "open", _raising(StoreError(message)))
    assert main(["-c", str(_standin(tmp_path)), "status"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_message_that_looks_like_markup_is_printed_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"log_format": "[/x] [bold]"}))
    assert main(["-c", str(config), "jobs"]) == 2
    err = capsys.readouterr().err
    assert "'[/x] [bold]' is not one of" in err


def test_a_slurm_error_that_looks_like_markup_is_printed_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _standin(tmp_path)
    (tmp_path / "bin" / "squeue").write_text(
        f"#!{sys.executable}\nimport sys\nsys.stderr.write('squeue: error: [/x]\\n'); "
        "sys.exit(1)\n")
    assert main(["-c", str(config), "jobs"]) == 3
    assert "squeue: error: [/x]" in capsys.readouterr().err
