"""Slurm 21.08 to 23.02 lose exit codes in sacct --json (SUCCESS/0 for a job that exited 3):
the reader reads those jobs' codes from sacct's text output, so they read as on 24.11."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.errors import SlurmCommandError
from slurm_sync.slurm.model import ExitCode
from slurm_sync.slurm.query import SacctWindow
from slurm_sync.slurm.reader import SlurmReader
from slurm_sync.slurm.run import CommandResult, Runner

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"
WINDOW = SacctWindow(start=1_700_000_000, end=1_800_000_000)


class FakeRunner(Runner):
    """Answers sacct --json with a fixture and the text call with ``text``."""

    def __init__(self, document: bytes, text: str | None) -> None:
        super().__init__()
        self.document, self.text = document, text
        self.asked: list[list[str]] = []

    def run(self, command: str, args: Sequence[str], **_: Any) -> CommandResult:
        self.asked.append([command, *args])
        if "--json" in args:
            out = self.document
        elif self.text is None:
            raise SlurmCommandError([command, *args], 1, "sacct: error: slurmdbd down")
        else:
            out = self.text.encode()
        return CommandResult(tuple(args), 0, out, "", 0.01)


def _codes(version: str, text: str | None) -> tuple[dict[str, ExitCode], FakeRunner]:
    runner = FakeRunner((FIXTURES / version / "sacct.json").read_bytes(), text)
    jobs = SlurmReader(runner).sacct(WINDOW).jobs
    return {j.name: j.exit_code for j in jobs}, runner


def test_22_05_exit_codes_come_from_the_text_output_as_24_11_reports_them() -> None:
    # what 22.05's sacct -X -n -P -o JobIDRaw,ExitCode printed on the lab for these jobs
    text = "2|0:0\n5|0:0\n15|3:0\n18|0:0\n19|0:0\n"
    codes, runner = _codes("22.05", text)
    reference, _ = _codes("24.11", None)
    for name in ("fail3", "timeout", "cancelled", "killed9", "ok"):
        assert codes[name] == reference[name], name
    assert codes["fail3"] == ExitCode(return_code=3)
    texts = [a for a in runner.asked if "--json" not in a]
    assert texts == [["sacct", "-X", "-n", "-P", "-a", "-o", "JobIDRaw,ExitCode",
                      "-j", "2,5,15,18,19"]]  # one call, the jobs whose code was lost


@pytest.mark.parametrize("version", ["21.08", "23.02"])
def test_other_producers_with_the_bug_ask_too(version: str) -> None:
    codes, runner = _codes(version, "115|3:0\n118|0:0\n")
    assert codes["fail3"] == ExitCode(return_code=3)
    assert codes["timeout"] == ExitCode(return_code=0)
    assert len(runner.asked) == 2


@pytest.mark.parametrize("version", ["23.11", "24.11", "26.05"])
def test_producers_without_the_bug_make_no_extra_call(version: str) -> None:
    codes, runner = _codes(version, None)
    assert codes["fail3"] == ExitCode(return_code=3)
    assert len(runner.asked) == 1


def test_a_failing_text_call_leaves_the_codes_unknown_and_the_answer_standing() -> None:
    codes, runner = _codes("22.05", None)
    assert codes["fail3"] == ExitCode()
    assert codes["killed9"] == ExitCode(signal=9)
    assert len(runner.asked) == 2


def test_odd_text_lines_are_ignored_and_a_signal_is_a_signal() -> None:
    codes, _ = _codes("22.05", "15|0:9\n18|x:y\n19|2:0|junk\n\n99999|1:0\n")
    assert codes["fail3"] == ExitCode(signal=9)
    assert codes["cancelled"] == ExitCode() and codes["timeout"] == ExitCode()
