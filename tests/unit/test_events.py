"""The events connector plans from real captured Slurm documents, and writes JSON lines."""

from __future__ import annotations

import json
from pathlib import Path

from slurm_sync.actions import Status
from slurm_sync.connector import Direction, Scope, Snapshot, View, delivery_key, discover
from slurm_sync.connectors.events import EventsConnector
from slurm_sync.slurm.parse import parse_sacct, parse_squeue

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "slurm"
NOW = 1_795_400_000.0


def _view(
    version: str = "24.11", squeue: str = "squeue-socket1.json", sacct_ok: bool = True
) -> View:
    active = parse_squeue((FIXTURES / version / squeue).read_bytes()).jobs
    ended = parse_sacct((FIXTURES / version / "sacct.json").read_bytes()).jobs if sacct_ok else ()
    running = tuple(j for j in active if j.state.active)
    return View(now=NOW, active=running, ended=ended, squeue_ok=True, sacct_ok=sacct_ok)


def _connector(output: str = "-") -> EventsConnector:
    return EventsConnector({"output": output})


def test_first_cycle_starts_every_run_once_and_stops_every_ended_one() -> None:
    view = _view()
    actions = _connector().plan(view, Snapshot(), Direction.BOTH, Scope())
    starts = [a for a in actions if a.kind == "start"]
    stops = [a for a in actions if a.kind == "stop"]
    started_keys = {delivery_key(j) for j in (*view.active, *view.ended) if j.start_time}
    assert {a.key for a in starts} == started_keys
    assert len(starts) == len(started_keys)  # a job in squeue and sacct is started once
    ended_keys = {delivery_key(j) for j in view.ended if j.state.finished}
    assert {a.key for a in stops} == ended_keys and ended_keys
    assert actions.index(starts[-1]) < actions.index(stops[0])


def test_a_running_jobs_start_carries_its_cores_from_squeue() -> None:
    view = _view()
    socket1 = next(j for j in view.active if j.name == "socket1")
    start = next(a for a in _connector().plan(view, Snapshot(), Direction.START, Scope())
                 if a.key == delivery_key(socket1))
    assert start.payload["cpu_ids"] == {"lab2411n1": [2, 3]}
    assert start.payload["event"] == "started" and start.payload["user"] == "bob"


def test_delivered_and_queued_are_not_planned_again() -> None:
    view = _view()
    first = _connector().plan(view, Snapshot(), Direction.BOTH, Scope())
    starts = frozenset(a.key for a in first if a.kind == "start")
    stops = frozenset(a.key for a in first if a.kind == "stop")
    some = frozenset(sorted(stops)[:2])
    snapshot = Snapshot(delivered={"start": starts, "stop": stops - some},
                        queued={"stop": some})
    assert _connector().plan(view, snapshot, Direction.BOTH, Scope()) == []


def test_direction_and_jobid_scope() -> None:
    view = _view()
    assert all(a.kind == "start" for a in
               _connector().plan(view, Snapshot(), Direction.START, Scope()))
    assert all(a.kind == "stop" for a in
               _connector().plan(view, Snapshot(), Direction.STOP, Scope()))
    only = _connector().plan(view, Snapshot(), Direction.BOTH, Scope(job_ids=(15,)))
    assert {a.payload["name"] for a in only} == {"fail3"}
    assert {a.kind for a in only} == {"start", "stop"}


def test_no_stop_without_a_good_sacct() -> None:
    """If sacct failed, nothing is reported finished: a failed query is not an ended job."""
    view = _view(sacct_ok=False)
    actions = _connector().plan(view, Snapshot(), Direction.BOTH, Scope())
    assert actions and all(a.kind == "start" for a in actions)


def test_a_requeued_run_is_finished_and_the_new_run_starts() -> None:
    ended = parse_sacct((FIXTURES / "22.05" / "sacct.json").read_bytes()).jobs
    runs = [j for j in ended if j.name == "requeued"]
    assert len(runs) == 2
    view = View(now=NOW, ended=tuple(ended), squeue_ok=True, sacct_ok=True)
    actions = _connector().plan(view, Snapshot(), Direction.BOTH, Scope(job_ids=(20,)))
    kinds = sorted((a.kind, a.payload.get("state", "")) for a in actions)
    assert kinds == [("start", ""), ("start", ""), ("stop", "REQUEUED")]


def test_apply_appends_json_lines(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    connector = _connector(str(out))
    actions = connector.plan(_view(), Snapshot(), Direction.BOTH, Scope(job_ids=(15,)))
    outcomes = [connector.apply(a) for a in actions]
    assert [o.status for o in outcomes] == [Status.DONE, Status.DONE]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["event"] for line in lines] == ["started", "finished"]
    assert lines[1]["state"] == "FAILED" and lines[1]["return_code"] == 3
    assert lines[0]["key"] == lines[1]["key"] == actions[0].key


def test_unwritable_output_is_a_transient_outcome(tmp_path: Path) -> None:
    connector = _connector(str(tmp_path / "missing-dir" / "events.jsonl"))
    action = connector.plan(_view(), Snapshot(), Direction.START, Scope())[0]
    outcome = connector.apply(action)
    assert outcome.status is Status.TRANSIENT and "missing-dir" in outcome.detail


def test_events_is_found_through_its_entry_point() -> None:
    assert discover()["events"] is EventsConnector
