"""The CLI's shape: `run` is the default command with its own options, `sync` is the same,
global options go before or after any command word, nested ones included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slurm_sync.cli import main, with_command


def test_the_run_options_without_a_command_word_run_a_cycle() -> None:
    assert with_command(["--direction", "start", "-q"], {"run", "status"}) == [
        "run", "--direction", "start", "-q"]
    assert with_command(["-vv", "-c", "f.json"], {"run"}) == ["-vv", "-c", "f.json", "run"]
    assert with_command(["--config=f.json", "status", "--json"], {"run", "status"}) == [
        "--config=f.json", "status", "--json"]


def test_global_options_after_a_nested_command_word(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"state_dir": str(tmp_path)}))
    code = main(["bank", "reconcile", "--since", "2026-01-01", "-c", str(config), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "no enabled 'bank' connector" in err, err
    assert "unrecognized arguments" not in err


def test_sync_is_run_and_help_lists_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sync", "--help"])
    text = capsys.readouterr().out
    assert "--direction {start,stop,both}" in text and "75   not run" in text
    assert "-j JOBID, --jobid JOBID" in text
