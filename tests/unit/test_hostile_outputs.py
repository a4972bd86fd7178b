"""Outputs that are not plain files: the events sink takes a character device or a FIFO, and
the metrics file is never seen half written by node_exporter (issue 12)."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from slurm_sync.actions import Action, Status
from slurm_sync.connectors.events import EventsConnector
from slurm_sync.metrics import write_metrics

# --- the events sink -------------------------------------------------------------------------


def _action(**payload: Any) -> Action:
    return Action("events", "start", "c1/5/100", {"event": "started", **payload}, "why")


@pytest.mark.parametrize("output", ["/dev/null", "/dev/zero"])
def test_events_to_a_character_device_are_done(output: str) -> None:
    outcome = EventsConnector({"output": output}).apply(_action(name="x"))
    assert outcome.status is Status.DONE, outcome.detail


def test_events_to_a_fifo_with_a_reader(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        outcome = EventsConnector({"output": str(fifo)}).apply(_action(name="x"))
        assert outcome.status is Status.DONE, outcome.detail
        assert json.loads(os.read(reader, 65536))["key"] == "c1/5/100"
    finally:
        os.close(reader)


@pytest.mark.timeout(20)
def test_events_to_a_fifo_without_a_reader_fail_for_now_without_waiting(tmp_path: Path) -> None:
    fifo = tmp_path / "events"
    os.mkfifo(fifo)
    outcome = EventsConnector({"output": str(fifo)}).apply(_action(name="x"))
    assert outcome.status is Status.TRANSIENT and str(fifo) in outcome.detail


def test_events_still_sync_a_regular_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    synced: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    path = tmp_path / "events.jsonl"
    assert EventsConnector({"output": str(path)}).apply(_action()).status is Status.DONE
    assert synced and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text())["key"] == "c1/5/100"


def test_an_event_holding_a_lone_surrogate_is_written_escaped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    outcome = EventsConnector({"output": str(path)}).apply(_action(name="a\ud800"))
    assert outcome.status is Status.DONE
    assert json.loads(path.read_text(encoding="utf-8"))["name"] == "a\ud800"


# --- the metrics file ------------------------------------------------------------------------


def test_the_metrics_temporary_file_is_not_a_prom_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    real = os.replace

    def replace(src: str, dst: str) -> None:
        seen.extend(os.listdir(tmp_path))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert write_metrics(str(tmp_path / "slurm-sync.prom"), "x 1\n")
    (temporary,) = seen
    assert temporary.startswith(".") and not temporary.endswith(".prom")
    assert os.listdir(tmp_path) == ["slurm-sync.prom"]


def test_a_metrics_file_that_cannot_be_written_is_an_error_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="slurm_sync.metrics"):
        assert not write_metrics(str(tmp_path / "gone" / "slurm-sync.prom"), "x 1\n")
    assert "cannot write the metrics file" in caplog.text and "gone" in caplog.text
