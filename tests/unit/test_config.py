"""A config error names the JSON path, the bad value and what was expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sync.config import config_from_dict, load_config
from sync.errors import ConfigError


def test_valid_config(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"cluster": "c1", "slurm": {
        "bin_dir": "/opt/slurm/bin", "timeout": 30, "state_save_location": "/var/spool/s"}}))
    config = load_config(str(path))
    assert config.cluster == "c1"
    assert config.slurm.commands.argv("squeue", []) == ["/opt/slurm/bin/squeue"]
    assert config.slurm.commands.timeout == 30
    assert config.slurm.state_save_location == "/var/spool/s"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"slurm": {"timeout": -1}}, r"\$\.slurm\.timeout: -1 is less than or equal"),
        ({"slurm": {"commands": {"squeu": "/x"}}}, r"\$\.slurm\.commands: 'squeu' is not one of"),
        ({"slurmm": {}}, r"Additional properties are not allowed \('slurmm' was unexpected\)"),
        ({"cluster": 5}, r"\$\.cluster: 5 is not of type 'string'"),
    ],
)
def test_errors_name_path_and_value(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict(data, "config.json")


def test_broken_json_names_line(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"cluster": "c1",\n "slurm": }')
    with pytest.raises(ConfigError, match="line 2 column"):
        load_config(str(path))


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="no such config file"):
        load_config("/nonexistent/config.json")


def test_the_shipped_example_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "config.json.example"
    config = load_config(str(example))
    assert config.cluster and config.slurm.state_save_location
