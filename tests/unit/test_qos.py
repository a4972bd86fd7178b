"""Reading and writing the QOS limits of mode native, on text captured from the lab's
22.05, 24.11 and 26.05 (tests/fixtures/slurm/<version>/, see each ORIGIN.md)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from slurm_sync.connectors.bank.qos import (
    AccountQos,
    QosAdmin,
    parse_assoc_mgr_qos,
    parse_assocs,
    parse_config,
)
from slurm_sync.errors import SlurmFormatError
from slurm_sync.slurm.run import CommandResult, Runner

FIXTURES = Path(__file__).parent.parent / "fixtures" / "slurm"
VERSIONS = ("22.05", "24.11", "26.05")


@pytest.mark.parametrize("version", VERSIONS)
def test_assoc_mgr_gives_limit_used_and_running_minutes(version: str) -> None:
    found = parse_assoc_mgr_qos((FIXTURES / version / "assoc_mgr-qos.txt").read_text())
    assert set(found) == {"bank_capt", "normal"}
    bank = found["bank_capt"]
    # a 2-cpu, 5-minute job ~75 s in: 10 cpu-minutes held, shown rounded down as used + running
    assert bank.limit["cpu"] == 30 and bank.limit["mem"] is None
    assert 8 <= bank.used["cpu"] + bank.running["cpu"] <= 10
    assert bank.running["cpu"] > 0
    assert found["normal"].limit["cpu"] is None and found["normal"].used["cpu"] == 0
    assert "gres/gpu" in bank.limit


@pytest.mark.parametrize("version", VERSIONS)
def test_assocs_tell_default_qos_and_users_that_do_not_have_it(version: str) -> None:
    found = parse_assocs((FIXTURES / version / "sacctmgr-assoc.txt").read_text(),
                         ["capt", "lab", "none"])
    assert found["capt"] == AccountQos("capt", frozenset({"bank_capt", "normal"}), "bank_capt",
                                       ("alice", "bob"), ("bob",))
    assert found["lab"].default_qos == "" and found["lab"].users_without == ()
    assert found["none"].users == ()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_lab_enforces_what_a_qos_limit_needs(version: str) -> None:
    found = parse_config((FIXTURES / version / "scontrol-config.txt").read_text())
    assert found.problems() == []
    assert found.cluster == "lab" + version.replace(".", "")


def test_enforcement_problems_name_the_setting_to_change() -> None:
    none = parse_config("AccountingStorageEnforce = none\nPriorityType = priority/basic\n")
    said = " | ".join(none.problems())
    assert "neither limits nor safe" in said and "no qos" in said
    assert "PriorityType is priority/basic" in said
    unsafe = parse_config("AccountingStorageEnforce = limits,qos\n"
                          "PriorityType = priority/multifactor\n")
    assert [p.split(":")[0] for p in unsafe.problems()] == ["AccountingStorageEnforce has no safe"]


def test_a_malformed_tres_item_is_named() -> None:
    with pytest.raises(SlurmFormatError, match=r"QOS=x GrpTRESMins.*cpu=lots"):
        parse_assoc_mgr_qos("QOS=x(3)\n    GrpTRESMins=cpu=lots,mem=N(0)\n")


class Recorder(Runner):
    """Answers scontrol show config from the fixture and records every argv."""

    def __init__(self) -> None:
        super().__init__()
        self.argvs: list[list[str]] = []

    def run(self, command: str, args: Sequence[str], **_: object) -> CommandResult:
        self.argvs.append([command, *args])
        out = b""
        if args[:2] == ["show", "config"]:
            out = (FIXTURES / "24.11" / "scontrol-config.txt").read_bytes()
        return CommandResult((command, *args), 0, out, "", 0.0)


def test_writes_are_one_sacctmgr_call_each_and_names_are_checked() -> None:
    runner = Recorder()
    admin = QosAdmin(runner)
    admin.create("bank_lab", "cpu", 180)
    admin.set_limit("bank_lab", "gres/gpu", None)
    admin.attach("bank_lab", "lab", ["bob"])
    assert runner.argvs == [
        ["sacctmgr", "-i", "add", "qos", "bank_lab", "Flags=NoDecay", "GrpTRESMins=cpu=180"],
        ["sacctmgr", "-i", "modify", "qos", "where", "name=bank_lab", "set",
         "GrpTRESMins=gres/gpu=-1"],
        ["scontrol", "show", "config"],
        ["sacctmgr", "-i", "modify", "account", "where", "name=lab", "cluster=lab2411", "set",
         "QOS+=bank_lab", "DefaultQOS=bank_lab"],
        ["sacctmgr", "-i", "modify", "user", "where", "name=bob", "account=lab",
         "cluster=lab2411", "set", "QOS+=bank_lab", "DefaultQOS=bank_lab"],
    ]
    with pytest.raises(ValueError, match="sacctmgr"):
        admin.set_limit("bank lab,x", "cpu", 1)
