"""A bad config, or a file it names, is one line naming the JSON path or file and what to do, and
exit 2 before anything is changed: never a traceback or a hang (issue 12)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.cli import main
from slurm_sync.config import load_config
from slurm_sync.connector import discover
from slurm_sync.errors import ConfigError
from slurm_sync.secrets import SecretRef, resolve_secret

EXAMPLE = Path(__file__).resolve().parents[2] / "config.json.example"


def _fragments() -> dict[str, dict[str, Any]]:
    return {n: dict(c.schema) for n, c in discover().items()}


def _write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "config.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _state(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return {"state_dir": str(tmp_path / "state"), **more}


def _exits_2(config: Path, capsys: pytest.CaptureFixture[str], *words: str,
             command: str = "check") -> str:
    assert main(["-c", str(config), command]) == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    for word in words:
        assert word in err, err
    return err


# --- the file itself ---------------------------------------------------------------------------


def test_a_directory_given_as_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _exits_2(tmp_path, capsys, str(tmp_path), "not a regular file")


@pytest.mark.timeout(20)
def test_a_fifo_given_as_the_config_does_not_hang(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    codes: list[int] = []
    thread = threading.Thread(target=lambda: codes.append(main(["-c", str(fifo), "check"])),
                              daemon=True)
    thread.start()
    thread.join(10)
    if thread.is_alive():  # unblock the reader before failing
        with open(fifo, "w") as writer:
            writer.write("{}")
        thread.join(5)
        pytest.fail("reading a FIFO as the config hangs")
    assert codes == [2]
    assert "not a regular file" in capsys.readouterr().err


def test_a_config_larger_than_any_config(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"$comment": "' + "x" * (17 * 1024 * 1024) + '"}')
    with pytest.raises(ConfigError, match="larger than 16 MiB"):
        load_config(str(path))


def test_json_nested_thousands_deep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '{"$comment": ' + "[" * 5000 + "]" * 5000 + "}")
    _exits_2(path, capsys, str(path), "nested too deep")


def test_json_nested_below_the_decoders_limit_is_refused_too(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"connectors": {"events": {"output": ' + "[" * 900 + "]" * 900
                  + "}}}")
    with pytest.raises(ConfigError, match=r"\$\.connectors\.events\.output.*nested deeper"):
        load_config(str(path), _fragments())


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinity_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], constant: str
) -> None:
    path = _write(tmp_path, '{"stop_guard_share": ' + constant + "}")
    _exits_2(path, capsys, "$.stop_guard_share", "finite number")


def test_a_nan_price_is_refused(tmp_path: Path) -> None:
    bank = {"url": "https://bank.example.org", "token": {"env": "BANK_TOKEN"},
            "prices": {"savio": 1}, "unpriced": "refuse"}
    text = json.dumps({"connectors": {"bank": bank}})
    for bad in ("NaN", "Infinity", "1e400"):
        path = _write(tmp_path, text.replace('"savio": 1', f'"savio": {bad}'))
        with pytest.raises(ConfigError, match=r"\$\.connectors\.bank\.prices\.savio"):
            load_config(str(path), _fragments())


def test_an_integer_of_thousands_of_digits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '{"stop_guard_min": 1' + "0" * 5000 + "}")
    _exits_2(path, capsys, str(path), "more than 4300 digits")
    path = _write(tmp_path, '{"stop_guard_min": 1' + "0" * 100 + "}")
    _exits_2(path, capsys, "$.stop_guard_min", "64 bits")


def test_a_key_given_twice(tmp_path: Path) -> None:
    path = _write(tmp_path, '{"slurm": {"timeout": 5, "timeout": 50}}')
    with pytest.raises(ConfigError, match=r"\$\.slurm: the key 'timeout' is given twice"):
        load_config(str(path))


@pytest.mark.parametrize(("data", "where"), [
    ({"state_dir": "/var/lib/slurm\u0000sync"}, "$.state_dir"),
    ({"slurm": {"bin_dir": "/usr/\u0000bin"}}, "$.slurm.bin_dir"),
    ({"slurm": {"prefix": ["ssh", "ctl\u0000"]}}, "$.slurm.prefix[1]"),
    ({"connectors": {"events": {"output": "/tmp/\u0000x"}}}, "$.connectors.events.output"),
])
def test_a_nul_byte_in_a_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: dict[str, Any], where: str
) -> None:
    _exits_2(_write(tmp_path, data), capsys, where, "NUL")


def test_a_lone_surrogate_in_a_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, '{"state_dir": "/var/lib/\\ud800"}')
    _exits_2(path, capsys, "$.state_dir", "surrogate")


@pytest.mark.parametrize("key", ["first_window_seconds", "sacct_overlap_seconds"])
def test_windows_so_long_the_date_underflows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    path = _write(tmp_path, _state(tmp_path, **{key: 10**12}))
    _exits_2(path, capsys, f"$.{key}", "maximum", command="run")
    assert not (tmp_path / "state").exists()


# --- files the config names ------------------------------------------------------------------


def test_a_state_dir_that_is_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "state").write_text("x")
    path = _write(tmp_path, _state(tmp_path))
    _exits_2(path, capsys, "$.state_dir", str(tmp_path / "state"), "not a folder", command="run")
    assert (tmp_path / "state").read_text() == "x"


def test_a_state_dir_under_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    path = _write(tmp_path, {"state_dir": str(tmp_path / "file" / "deeper" / "state")})
    _exits_2(path, capsys, "$.state_dir", f"under {tmp_path / 'file'}, which is a file",
             command="run")


def test_a_state_db_that_is_not_a_database(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").mkdir()
    db = tmp_path / "state" / "state.db"
    db.write_bytes(b"this is not SQLite\n" * 10)
    path = _write(tmp_path, _state(tmp_path))
    for command in ("run", "status", "check"):
        _exits_2(path, capsys, str(db), "not an SQLite database", command=command)
    assert db.read_bytes() == b"this is not SQLite\n" * 10
    assert sorted(os.listdir(tmp_path / "state")) == ["state.db"]


def test_an_empty_state_db_is_a_new_database(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "state.db").write_bytes(b"")
    load_config(str(_write(tmp_path, _state(tmp_path))))


def test_a_metrics_file_in_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = tmp_path / "missing" / "slurm-sync.prom"
    path = _write(tmp_path, _state(tmp_path, metrics_file=str(metrics)))
    _exits_2(path, capsys, "$.metrics_file", str(tmp_path / "missing"), "does not exist",
             command="run")
    assert not (tmp_path / "state").exists()


def test_a_metrics_file_that_is_a_folder(tmp_path: Path) -> None:
    (tmp_path / "m.prom").mkdir()
    path = _write(tmp_path, _state(tmp_path, metrics_file=str(tmp_path / "m.prom")))
    with pytest.raises(ConfigError, match=r"\$\.metrics_file: .* is a folder"):
        load_config(str(path))


def test_the_example_is_valid_as_a_document_on_any_machine() -> None:
    """The example names /var/lib folders this machine may not have: the document alone."""
    load_config(str(EXAMPLE), _fragments(), files=False)


# --- cc-slurm-sync's config ------------------------------------------------------------------


@pytest.mark.parametrize("key", ["cc-backend", "slurm"])
def test_a_legacy_config_whose_section_is_a_string(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    data: dict[str, Any] = {"clustername": "fritz", "cc-backend": {"host": "https://cc.x"},
                            "slurm": {}}
    data[key] = "/usr/bin"
    _exits_2(_write(tmp_path, data), capsys, f"$.{key}", "object")


# --- secrets ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "why"), [
    ("tok\u2019en", "outside Latin-1"),
    ("tok\U0001f600", "outside Latin-1"),
    ("tok\nmore", "control character"),
    ("tok\x00", "control character"),
    ("  s3cr3t", "starts with white space"),
])
def test_a_token_an_http_header_cannot_carry(
    tmp_path: Path, value: str, why: str
) -> None:
    secret = tmp_path / "token"
    secret.write_text(value + "\n", encoding="utf-8")
    secret.chmod(0o600)
    with pytest.raises(ConfigError) as caught:
        resolve_secret(SecretRef("file", str(secret), key="$.connectors.cc.token"))
    message = str(caught.value)
    assert why in message and str(secret) in message and "$.connectors.cc.token" in message
    assert value.strip() not in message
    with pytest.raises(ConfigError, match=f"environment variable CC_TOKEN .*{why}"):
        resolve_secret(SecretRef("env", "CC_TOKEN"), environ={"CC_TOKEN": value})


def test_latin_1_tokens_and_json_token_files_are_kept(tmp_path: Path) -> None:
    ref = SecretRef("env", "T")
    assert resolve_secret(ref, environ={"T": "caf\u00e9-t0ken"}).reveal() == "caf\u00e9-t0ken"
    document = '{\n  "clustername": "\u03a9mega",\n  "cc-backend": {"apikey": "k"}\n}'
    assert resolve_secret(ref, environ={"T": document}).reveal() == document


def test_check_exits_2_naming_the_unusable_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = tmp_path / "cc-token"
    token.write_text("caf\u00e9\u2019\n", encoding="utf-8")
    token.chmod(0o600)
    data = _state(tmp_path, slurm={"bin_dir": str(tmp_path)}, connectors={"clustercockpit": {
        "url": "http://127.0.0.1:9", "token": {"file": str(token)}, "cluster": "c1"}})
    err = _exits_2(_write(tmp_path, data), capsys, str(token), "outside Latin-1")
    assert "\u2019" not in err
