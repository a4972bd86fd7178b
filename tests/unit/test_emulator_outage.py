"""The emulators' generic faults for the chaos suite: resets, outages, and the request log."""

from __future__ import annotations

import time

import pytest
import requests

from tests.emulators.base import Emulator, Faults, Reply, Request


class Echo(Emulator):
    def routes(self):  # type: ignore[no-untyped-def]
        return [("POST", r"/echo", self.echo)]

    def echo(self, request: Request) -> Reply:
        return Reply(200, request.json())


def test_reset_share_drops_the_connection_without_an_answer() -> None:
    with Echo(Faults(reset_share=1.0)) as emu:
        with pytest.raises(requests.ConnectionError):
            requests.post(emu.url + "/echo", json={"a": 1}, timeout=5)
        assert [s.status for s in emu.seen] == [-2]


def test_refuse_outage_closes_the_port_and_opens_the_same_one_after() -> None:
    with Echo() as emu:
        url = emu.url
        session = requests.Session()
        assert session.post(url + "/echo", json={"a": 1}, timeout=5).status_code == 200
        emu.outage(0.5, "refuse")
        assert emu.outage_mode == "refuse"
        with pytest.raises(requests.ConnectionError):
            # the kept-alive connection is gone too, and nothing listens
            session.post(url + "/echo", json={"a": 2}, timeout=5)
        time.sleep(0.8)
        assert emu.outage_mode is None and emu.url == url
        assert session.post(url + "/echo", json={"a": 3}, timeout=5).json() == {"a": 3}


def test_error_and_reset_outages_until_restored() -> None:
    with Echo() as emu:
        emu.outage(None, "error")
        assert requests.post(emu.url + "/echo", json={}, timeout=5).status_code == 503
        emu.outage(None, "reset")
        with pytest.raises(requests.ConnectionError):
            requests.post(emu.url + "/echo", json={}, timeout=5)
        emu.restore()
        assert requests.post(emu.url + "/echo", json={"b": 1}, timeout=5).status_code == 200


def test_seen_keeps_the_body_and_when_the_request_arrived() -> None:
    with Echo(Faults(latency=0.2)) as emu:
        before = time.time()
        requests.post(emu.url + "/echo", json={"jobId": 7}, timeout=5)
        (seen,) = emu.seen
        assert seen.body == b'{"jobId": 7}'
        assert before <= seen.received <= seen.at - 0.15


def test_an_outage_can_go_from_refused_to_503_to_up() -> None:
    with Echo() as emu:
        emu.outage(None, "refuse")
        with pytest.raises(requests.ConnectionError):
            requests.post(emu.url + "/echo", json={}, timeout=5)
        emu.outage(None, "error")
        assert requests.post(emu.url + "/echo", json={}, timeout=5).status_code == 503
        emu.restore()
        assert requests.post(emu.url + "/echo", json={"c": 1}, timeout=5).json() == {"c": 1}
