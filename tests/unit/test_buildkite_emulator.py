"""The Buildkite emulator keeps Buildkite's contracts over real loopback HTTP, and the test
``buildkite-agent`` acquires, runs, reports and exits the way the real agent does."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.emulators.buildkite import Buildkite

AGENT = Path(__file__).resolve().parent.parent / "emulators" / "buildkite-agent"
SLURM = ["queue=slurm", "slurm_partition=gpu"]


@pytest.fixture
def bk() -> Iterator[Buildkite]:
    with Buildkite(locked_retry_after=0.05, job_status_interval=0.2) as emu:
        yield emu


def rest(bk: Buildkite, path: str, params: Any = None, token: str | None = None,
         method: str = "GET") -> requests.Response:
    headers = {"Authorization": f"Bearer {token or bk.api_token}"}
    url = path if path.startswith("http") else bk.url + path
    return requests.request(method, url, params=params, headers=headers, timeout=10)


def agent_api(bk: Buildkite, method: str, path: str, token: str, json: Any = None,
              headers: dict[str, str] | None = None) -> requests.Response:
    return requests.request(method, bk.url + "/v3" + path, json=json, timeout=10,
                            headers={"Authorization": f"Token {token}", **(headers or {})})


def register(bk: Buildkite, name: str = "a1") -> str:
    reply = agent_api(bk, "POST", "/register", bk.agent_token,
                      json={"name": name, "meta_data": ["queue=slurm"]})
    assert reply.status_code == 200
    assert reply.json()["endpoint"] == bk.url + "/v3"
    return str(reply.json()["access_token"])


def acquire(bk: Buildkite, access: str, job_id: str, lock: bool = True) -> requests.Response:
    headers = {"X-Buildkite-Lock-Acquire-Job": "1"} if lock else {}
    return agent_api(bk, "PUT", f"/jobs/{job_id}/acquire", access, headers=headers)


def stack(bk: Buildkite, method: str, path: str, json: Any = None, params: Any = None,
          token: str | None = None) -> requests.Response:
    return requests.request(method, bk.url + "/v3/stacks" + path, json=json, params=params,
                            headers={"Authorization": f"Token {token or bk.agent_token}"},
                            timeout=10)


def register_stack(bk: Buildkite, key: str, queue: str = "slurm") -> requests.Response:
    return stack(bk, "POST", "/register",
                 json={"key": key, "type": "custom", "queue_key": queue, "metadata": {}})


def agent_env(bk: Buildkite, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILDKITE_")}
    env.update(BUILDKITE_AGENT_TOKEN=bk.agent_token, BUILDKITE_AGENT_ENDPOINT=bk.url + "/v3")
    env.update(extra)
    return env


def run_agent(bk: Buildkite, job_id: str, *args: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AGENT), "start", "--acquire-job", job_id, "--disconnect-after-job",
         "--tags", "queue=slurm,slurm_partition=gpu", *args],
        env=env or agent_env(bk), capture_output=True, text=True, timeout=60)


def wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never became true"
        time.sleep(0.05)


def secrets_of(bk: Buildkite, job_id: str) -> list[str]:
    job = bk.job(job_id)
    tokens = [bk.agent_token, bk.api_token, job.token or ""]
    if job.agent is not None:
        tokens.append(job.agent.access_token)
    return [t for t in tokens if t]


# --- REST v2 -----------------------------------------------------------------------------------


def test_builds_listing_pages_with_link_headers_across_more_than_a_hundred(bk: Buildkite) -> None:
    made = {bk.add_build("climate", jobs=[{"step_key": "t", "command": "true",
                                           "agent_query_rules": SLURM}],
                         created_at=1_700_000_000 + i).id for i in range(130)}
    done = bk.add_build("climate", state="passed", created_at=1_700_000_500)

    first = rest(bk, "/v2/organizations/acme/builds",
                 {"state[]": ["scheduled", "running", "failing"], "per_page": 100})
    assert first.status_code == 200
    assert len(first.json()) == 100
    assert first.links["next"]["url"].startswith(bk.url + "/v2/organizations/acme/builds?")
    assert "page=2" in first.links["next"]["url"] and "page=2" in first.links["last"]["url"]
    assert "prev" not in first.links
    created = [b["created_at"] for b in first.json()]
    assert created == sorted(created, reverse=True)  # newest first

    second = rest(bk, first.links["next"]["url"])
    assert second.status_code == 200
    assert len(second.json()) == 30
    assert "next" not in second.links and "prev" in second.links and "first" in second.links
    seen = [b["id"] for b in first.json() + second.json()]
    assert len(seen) == len(set(seen)) == 130
    assert set(seen) == made and done.id not in seen
    assert sum(len(b["jobs"]) for b in first.json() + second.json()) == 130

    default = rest(bk, "/v2/organizations/acme/builds")
    assert len(default.json()) == 30  # default per_page
    assert "page=5" in default.links["last"]["url"]
    clamped = rest(bk, "/v2/builds", {"per_page": 500})
    assert len(clamped.json()) == 100  # per_page max 100


def test_builds_filters_by_state_window_and_branch(bk: Buildkite) -> None:
    old = bk.add_build("climate", created_at=1_000.0)
    recent = bk.add_build("climate", created_at=2_000.0, branch="dev-1")
    passed = bk.add_build("ocean", state="passed", created_at=2_100.0)
    failed = bk.add_build("ocean", jobs=[{"command": "x", "state": "failed"}], created_at=2_200)

    def ids(params: Any, path: str = "/v2/organizations/acme/builds") -> set[str]:
        reply = rest(bk, path, params)
        assert reply.status_code == 200, reply.text
        return {b["id"] for b in reply.json()}

    assert ids({"created_from": "1970-01-01T00:25:00Z"}) == {recent.id, passed.id, failed.id}
    assert ids({"state[]": ["scheduled"]}) == {old.id, recent.id}
    assert ids({"state": "finished"}) == {passed.id, failed.id}
    assert ids({"state": "failed"}) == {failed.id}
    assert ids({"branch": "*dev*"}) == {recent.id}
    assert ids({}, "/v2/organizations/acme/pipelines/ocean/builds") == {passed.id, failed.id}
    assert rest(bk, "/v2/organizations/acme/builds", {"state": "bogus"}).status_code == 400
    assert rest(bk, "/v2/organizations/acme/builds", {"created_from": "soon"}).status_code == 400
    assert rest(bk, "/v2/organizations/nope/builds").status_code == 404


def test_rest_rate_limit_headers_count_down_then_429_until_the_window_resets() -> None:
    with Buildkite(rest_limit=3, rest_window=1.0) as bk:
        bk.add_build("climate")
        remaining = []
        for _ in range(3):
            reply = rest(bk, "/v2/organizations/acme/builds")
            assert reply.status_code == 200
            assert reply.headers["RateLimit-Limit"] == "3"
            assert reply.headers["RateLimit-Scope"] == "rest"
            assert int(reply.headers["RateLimit-Reset"]) >= 1
            assert reply.headers["RateLimit-User-Limit"] == "50"
            remaining.append(reply.headers["RateLimit-Remaining"])
        assert remaining == ["2", "1", "0"]

        over = rest(bk, "/v2/organizations/acme/builds")
        assert over.status_code == 429
        assert over.headers["RateLimit-Remaining"] == "0"
        body = over.json()
        assert body["scope"] == "rest" and body["limit"] == 3 and body["current"] == 4
        assert body["reset"] == int(over.headers["RateLimit-Reset"]) >= 1
        assert "rate limit" in body["message"]

        time.sleep(float(over.headers["RateLimit-Reset"]))
        assert rest(bk, "/v2/organizations/acme/builds").status_code == 200


def test_rest_per_user_limit_has_its_own_scope() -> None:
    with Buildkite(rest_limit=100, rest_user_limit=2) as bk:
        assert [rest(bk, "/v2/builds").status_code for _ in range(3)] == [200, 200, 429]
        over = rest(bk, "/v2/builds")
        assert over.json()["scope"] == "rest_user"
        assert over.headers["RateLimit-User-Remaining"] == "0"
        assert over.headers["RateLimit-Remaining"] == "98"


def test_rest_refuses_a_wrong_token_without_echoing_it(bk: Buildkite) -> None:
    reply = rest(bk, "/v2/builds", token="bkua_wrong")
    assert reply.status_code == 401
    assert "bkua_wrong" not in reply.text and "message" in reply.json()
    basic = requests.get(bk.url + "/v2/builds", auth=("user", bk.api_token), timeout=10)
    assert basic.status_code == 401


def test_cancel_build_over_rest_cancels_scheduled_and_stops_running_jobs(bk: Buildkite) -> None:
    new = bk.add_build("climate", jobs=[{"command": "a"}, {"command": "b"}])
    bk.take_job(new.job_ids[1])
    reply = rest(bk, "/v2/organizations/acme/pipelines/climate/builds/1/cancel", method="PUT")
    assert reply.status_code == 200
    assert reply.json()["state"] == "canceling"
    assert [j["state"] for j in reply.json()["jobs"]] == ["canceled", "canceling"]
    bk.finish_job(new.job_ids[1], -1, signal="SIGTERM", signal_reason="cancel")
    assert rest(bk, "/v2/organizations/acme/pipelines/climate/builds/1").json()["state"] \
        == "canceled"
    again = rest(bk, "/v2/organizations/acme/pipelines/climate/builds/1/cancel", method="PUT")
    assert again.status_code == 422


# --- agent API v3 ------------------------------------------------------------------------------


def test_acquire_gives_the_job_once_then_422(bk: Buildkite) -> None:
    new = bk.add_build("climate", jobs=[{"step_key": "t", "command": "echo hi",
                                         "agent_query_rules": SLURM, "env": {"X": "1"}}])
    job_id = new.job_ids[0]
    first, second = register(bk, "a1"), register(bk, "a2")

    got = acquire(bk, first, job_id)
    assert got.status_code == 200
    body = got.json()
    assert body["id"] == job_id and body["state"] == "accepted"
    assert body["env"]["BUILDKITE_COMMAND"] == "echo hi" and body["env"]["X"] == "1"
    assert body["token"] and body["token"] not in (first, bk.agent_token)
    assert bk.job_history(job_id) == ["scheduled", "assigned", "accepted"]

    for access in (second, first):
        again = acquire(bk, access, job_id)
        assert again.status_code == 422
        assert "message" in again.json()
    assert bk.job_state(job_id) == "accepted"

    assert acquire(bk, "bkaa_nobody", job_id).status_code == 401
    assert acquire(bk, first, "no-such-job").status_code == 404


def test_acquire_of_a_waiting_job_is_423_with_retry_after_until_it_is_scheduled(
        bk: Buildkite) -> None:
    new = bk.add_build("climate", jobs=[{"command": "true"}], state="waiting")
    job_id = new.job_ids[0]
    access = register(bk)
    locked = acquire(bk, access, job_id)
    assert locked.status_code == 423
    assert float(locked.headers["Retry-After"]) == pytest.approx(0.05)
    assert acquire(bk, access, job_id, lock=False).status_code == 422  # no lock header
    assert bk.job_state(job_id) == "waiting"
    bk.set_job_state(job_id, "scheduled")
    assert acquire(bk, access, job_id).status_code == 200


def test_job_token_drives_start_chunks_and_finish(bk: Buildkite) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "make"}]).job_ids[0]
    access = register(bk)
    token = acquire(bk, access, job_id).json()["token"]
    assert agent_api(bk, "PUT", f"/jobs/{job_id}/start", "bkaj_wrong").status_code == 401
    assert agent_api(bk, "PUT", f"/jobs/{job_id}/start", token, json={}).status_code == 200
    chunk = requests.post(f"{bk.url}/v3/jobs/{job_id}/chunks?sequence=1&offset=0&size=3",
                          data=b"ok\n", headers={"Authorization": f"Token {token}"}, timeout=10)
    assert chunk.status_code == 201
    finish = agent_api(bk, "PUT", f"/jobs/{job_id}/finish", token, json={"exit_status": "2"})
    assert finish.status_code == 200 and finish.json()["state"] == "failed"
    assert bk.job(job_id).exit_status == 2 and bk.job_log(job_id) == "ok\n"
    assert agent_api(bk, "PUT", f"/jobs/{job_id}/finish", token,
                     json={"exit_status": "0"}).status_code == 422
    log = rest(bk, f"/v2/organizations/acme/pipelines/climate/builds/1/jobs/{job_id}/log")
    assert log.json()["content"] == "ok\n"


# --- Stacks API --------------------------------------------------------------------------------


def test_stack_reservations_are_exclusive_and_expire() -> None:
    now = [1_800_000_000.0]
    with Buildkite(clock=lambda: now[0]) as bk:
        jobs = bk.add_build("climate", jobs=[{"command": str(i), "agent_query_rules": SLURM}
                                             for i in range(3)]).job_ids
        other = bk.add_build("climate", jobs=[{"command": "x",
                                               "agent_query_rules": ["queue=cpu"]}]).job_ids
        created = register_stack(bk, "slurm-a")
        assert created.status_code == 201
        assert created.json()["key"] == "slurm-a"
        assert created.json()["cluster_queue_key"] == "slurm"
        assert register_stack(bk, "slurm-a").status_code == 200  # idempotent
        assert register_stack(bk, "slurm-b").status_code == 201

        listed = stack(bk, "GET", "/slurm-a/scheduled-jobs", params={"queue_key": "slurm"})
        assert listed.status_code == 200
        assert [j["id"] for j in listed.json()["jobs"]] == list(jobs)
        assert other[0] not in [j["id"] for j in listed.json()["jobs"]]
        assert listed.json()["jobs"][0]["build"]["number"] == 1
        assert listed.json()["jobs"][0]["pipeline"]["slug"] == "climate"

        a = stack(bk, "PUT", "/slurm-a/scheduled-jobs/batch-reserve",
                  json={"job_uuids": list(jobs[:2]), "reservation_expiry_seconds": 60})
        assert a.status_code == 200
        assert a.json() == {"reserved": list(jobs[:2]), "not_reserved": []}
        b = stack(bk, "PUT", "/slurm-b/scheduled-jobs/batch-reserve",
                  json={"job_uuids": [*jobs, "no-such-job"]})
        assert b.json() == {"reserved": [jobs[2]], "not_reserved": [*jobs[:2], "no-such-job"]}
        for key in ("slurm-a", "slurm-b"):
            left = stack(bk, "GET", f"/{key}/scheduled-jobs", params={"queue_key": "slurm"})
            assert left.json()["jobs"] == []
        assert bk.job_state(jobs[0]) == "scheduled"

        now[0] += 61  # slurm-a's reservations lapse; slurm-b's (900 s) do not
        back = stack(bk, "GET", "/slurm-b/scheduled-jobs", params={"queue_key": "slurm"})
        assert [j["id"] for j in back.json()["jobs"]] == list(jobs[:2])
        b2 = stack(bk, "PUT", "/slurm-b/scheduled-jobs/batch-reserve",
                   json={"job_uuids": list(jobs[:2])})
        assert b2.json()["reserved"] == list(jobs[:2])
        assert ("reserved", "slurm-b") in bk.timeline(jobs[0])

        bad = stack(bk, "PUT", "/slurm-a/scheduled-jobs/batch-reserve",
                    json={"job_uuids": "nope"})
        assert bad.status_code == 400
        too_long = stack(bk, "PUT", "/slurm-a/scheduled-jobs/batch-reserve",
                         json={"job_uuids": [], "reservation_expiry_seconds": 3601})
        assert too_long.status_code == 400


def test_scheduled_jobs_pages_with_a_cursor_oldest_first(bk: Buildkite) -> None:
    ids = [bk.add_build("climate", jobs=[{"command": "x", "agent_query_rules": SLURM}],
                        created_at=1_000 + i).job_ids[0] for i in range(5)]
    register_stack(bk, "s")
    page = stack(bk, "GET", "/s/scheduled-jobs", params={"queue_key": "slurm", "limit": 2})
    assert [j["id"] for j in page.json()["jobs"]] == ids[:2]
    assert page.json()["page_info"]["has_next_page"] is True
    cursor = page.json()["page_info"]["end_cursor"]
    rest_page = stack(bk, "GET", "/s/scheduled-jobs",
                      params={"queue_key": "slurm", "limit": 10, "after": cursor})
    assert [j["id"] for j in rest_page.json()["jobs"]] == ids[2:]
    assert rest_page.json()["page_info"]["has_next_page"] is False


def test_dispatch_paused_is_reported_and_jobs_still_listed(bk: Buildkite) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "x", "agent_query_rules": SLURM}]
                          ).job_ids[0]
    register_stack(bk, "s")

    def listing() -> dict[str, Any]:
        reply = stack(bk, "GET", "/s/scheduled-jobs", params={"queue_key": "slurm"})
        assert reply.status_code == 200
        return dict(reply.json())

    assert listing()["cluster_queue"]["dispatch_paused"] is False
    bk.pause_queue("slurm")
    paused = listing()
    assert paused["cluster_queue"]["dispatch_paused"] is True
    assert [j["id"] for j in paused["jobs"]] == [job_id]
    bk.pause_queue("slurm", paused=False)
    assert listing()["cluster_queue"]["dispatch_paused"] is False
    assert stack(bk, "GET", "/s/scheduled-jobs").status_code == 400
    assert stack(bk, "GET", "/s/scheduled-jobs", params={"queue_key": "nope"}).status_code == 404
    assert stack(bk, "GET", "/ghost/scheduled-jobs",
                 params={"queue_key": "slurm"}).status_code == 404


def test_get_states_reports_cancellation(bk: Buildkite) -> None:
    queued, running = bk.add_build("climate", jobs=[{"command": "a"}, {"command": "b"}]).job_ids
    bk.take_job(running)
    register_stack(bk, "s")

    def states(*ids: str) -> dict[str, str]:
        reply = stack(bk, "POST", "/s/jobs/get-states", json={"job_uuids": list(ids)})
        assert reply.status_code == 200
        return dict(reply.json()["states"])

    assert states(queued, running) == {queued: "scheduled", running: "running"}
    bk.cancel_job(queued)
    bk.cancel_job(running)
    assert states(queued, running, "no-such-job") == {queued: "canceled", running: "canceling"}
    assert stack(bk, "POST", "/s/jobs/get-states", json={}).status_code == 400


def test_stack_finish_fails_a_job_with_a_message_once(bk: Buildkite) -> None:
    doomed, fine = bk.add_build("climate", jobs=[{"command": "a"}, {"command": "b"}]).job_ids
    register_stack(bk, "s")
    assert stack(bk, "POST", f"/s/jobs/{doomed}/finish", json={}).status_code == 422
    reply = stack(bk, "POST", f"/s/jobs/{doomed}/finish",
                  json={"exit_status": -1, "detail": "sbatch: invalid partition"})
    assert reply.status_code == 200
    job = bk.job(doomed)
    assert (job.state, job.exit_status, job.signal_reason) == ("failed", -1, "stack_error")
    assert ("stack_finish", "sbatch: invalid partition") in bk.timeline(doomed)
    rest_job = rest(bk, "/v2/organizations/acme/pipelines/climate/builds/1").json()["jobs"][0]
    assert rest_job["state"] == "failed" and rest_job["signal_reason"] == "stack_error"
    again = stack(bk, "POST", f"/s/jobs/{doomed}/finish", json={"detail": "again"})
    assert again.status_code == 422
    assert stack(bk, "POST", f"/s/jobs/{fine}/finish",
                 json={"exit_status": 0, "detail": "done without an agent"}).status_code == 200
    assert bk.job_state(fine) == "passed"
    assert stack(bk, "POST", "/s/jobs/nope/finish", json={"detail": "x"}).status_code == 404
    assert stack(bk, "POST", f"/s/jobs/{fine}/finish",
                 json={"detail": "x" * 5000}).status_code == 422


def test_notifications_land_on_the_job_timeline_and_invalid_ones_are_reported(
        bk: Buildkite) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "a"}]).job_ids[0]
    register_stack(bk, "s")
    reply = stack(bk, "POST", "/s/notifications", json={"notifications": [
        {"job_uuid": job_id, "detail": "waiting in Slurm queue"},
        {"job_uuid": job_id, "detail": ""},
        {"job_uuid": job_id, "detail": "x" * 257},
        {"job_uuid": "no-such-job", "detail": "lost"},
        {"job_uuid": job_id, "detail": "Slurm job 42 started"},
        {"job_uuid": job_id, "detail": "late", "timestamp": "2999-01-01T00:00:00Z"},
    ]})
    assert reply.status_code == 200
    errors = {e["error"]: e["indexes"] for e in reply.json()["errors"]}
    assert errors == {"detail is required": [1],
                      "detail exceeds its length limit of 256": [2],
                      "job not found": [3],
                      "timestamp cannot be in the future": [5]}
    assert bk.notifications(job_id) == ["waiting in Slurm queue", "Slurm job 42 started"]

    many = stack(bk, "POST", "/s/notifications", json={"notifications": [
        {"job_uuid": job_id, "detail": f"n{i}"} for i in range(99)]})
    assert many.json()["errors"] == [
        {"error": "job stack notification count exceeded", "indexes": [98]}]
    assert len(bk.notifications(job_id)) == 100


def test_stacks_api_rate_limits_per_scope_and_refuses_wrong_tokens() -> None:
    with Buildkite(stack_limits={"list-scheduled-jobs": 2}) as bk:
        register_stack(bk, "s")
        codes, scopes = [], set()
        for _ in range(3):
            reply = stack(bk, "GET", "/s/scheduled-jobs", params={"queue_key": "slurm"})
            codes.append(reply.status_code)
            scopes.add(reply.headers["RateLimit-Scope"])
        assert codes == [200, 200, 429]
        assert scopes == {"list-scheduled-jobs"}
        over = stack(bk, "GET", "/s/scheduled-jobs", params={"queue_key": "slurm"})
        assert over.json()["scope"] == "list-scheduled-jobs" and over.json()["limit"] == 2
        other_scope = stack(bk, "POST", "/s/jobs/get-states", json={"job_uuids": []})
        assert other_scope.status_code == 200
        assert other_scope.headers["RateLimit-Limit"] == "20"
        wrong = stack(bk, "GET", "/s/scheduled-jobs", params={"queue_key": "slurm"},
                      token="bkct_wrong")
        assert wrong.status_code == 401 and "bkct_wrong" not in wrong.text


# --- the test agent ----------------------------------------------------------------------------


def test_agent_runs_the_command_and_reports_passed(bk: Buildkite, tmp_path: Path) -> None:
    job_id = bk.add_build("climate", jobs=[{
        "step_key": "hello", "agent_query_rules": SLURM,
        "command": 'echo "hello from $BUILDKITE_STEP_KEY on $BUILDKITE_AGENT_META_DATA_QUEUE"\n'
                   'echo "token:${BUILDKITE_AGENT_TOKEN:-unset}"'}]).job_ids[0]
    done = run_agent(bk, job_id, "--build-path", str(tmp_path))
    assert done.returncode == 0, done.stderr
    job = bk.job(job_id)
    assert (job.state, job.exit_status, job.signal) == ("passed", 0, None)
    assert bk.job_history(job_id) == ["scheduled", "assigned", "accepted", "running", "passed"]
    assert "hello from hello on slurm\n" in bk.job_log(job_id)
    assert "token:unset" in bk.job_log(job_id)  # the agent token is not handed to the job
    assert (tmp_path / "climate").is_dir()
    assert job.agent is not None and not job.agent.connected  # disconnected after the job
    for secret in secrets_of(bk, job_id):
        assert secret not in done.stdout + done.stderr


def test_agent_reports_a_failing_command_and_exits_with_its_status(bk: Buildkite) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "echo oops >&2; exit 3"}]).job_ids[0]
    done = run_agent(bk, job_id)
    assert done.returncode == 3, done.stderr
    job = bk.job(job_id)
    assert (job.state, job.exit_status) == ("failed", 3)
    assert bk.job_log(job_id) == "oops\n"


def test_agent_reads_token_and_endpoint_from_a_config_file(bk: Buildkite, tmp_path: Path) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "true"}]).job_ids[0]
    config = tmp_path / "buildkite-agent.cfg"
    config.write_text(f'# test\ntoken="{bk.agent_token}"\nendpoint={bk.url}/v3\n')
    env = {k: v for k, v in agent_env(bk).items()
           if k not in ("BUILDKITE_AGENT_TOKEN", "BUILDKITE_AGENT_ENDPOINT")}
    done = run_agent(bk, job_id, "--config", str(config), env=env)
    assert done.returncode == 0, done.stderr
    assert bk.job_state(job_id) == "passed"


def test_agent_with_a_wrong_token_fails_without_printing_it(bk: Buildkite) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "true"}]).job_ids[0]
    done = run_agent(bk, job_id, env=agent_env(bk, BUILDKITE_AGENT_TOKEN="bkct_secret_wrong"))
    assert done.returncode == 1
    assert "register" in done.stderr
    assert "bkct_secret_wrong" not in done.stdout + done.stderr
    assert bk.job_state(job_id) == "scheduled"


def test_agent_exits_27_when_the_job_is_taken(bk: Buildkite) -> None:
    taken, gone = bk.add_build("climate", jobs=[{"command": "touch ran"},
                                                {"command": "touch ran"}]).job_ids
    bk.take_job(taken, "elsewhere")
    bk.cancel_job(gone)
    for job_id, state in ((taken, "running"), (gone, "canceled")):
        done = run_agent(bk, job_id)
        assert done.returncode == 27, done.stderr
        assert bk.job_state(job_id) == state
    assert bk.job(taken).agent is not None and bk.job(taken).agent.name == "elsewhere"
    assert bk.count("PUT", r"/v3/jobs/[^/]+/acquire") == 2  # 422 is not retried
    assert bk.count("PUT", r"/v3/jobs/[^/]+/start") == 0


def test_agent_exits_28_when_the_job_stays_locked(bk: Buildkite) -> None:
    job_id = bk.add_build("climate", jobs=[{"command": "true"}], state="waiting").job_ids[0]
    done = run_agent(bk, job_id)
    assert done.returncode == 28, done.stderr
    assert bk.count("PUT", rf"/v3/jobs/{job_id}/acquire") == 7
    assert bk.job_state(job_id) == "waiting"


def test_agent_waits_out_a_lock_and_then_runs(bk: Buildkite) -> None:
    bk.locked_retry_after = 0.3
    job_id = bk.add_build("climate", jobs=[{"command": "true"}], state="waiting").job_ids[0]
    agent = subprocess.Popen([str(AGENT), "start", "--acquire-job", job_id], env=agent_env(bk),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bk.count("PUT", r"/v3/jobs/[^/]+/acquire") >= 1)
        bk.set_job_state(job_id, "scheduled")
        assert agent.wait(timeout=30) == 0
    finally:
        agent.kill()
        agent.communicate()
    assert bk.job_state(job_id) == "passed"


@pytest.fixture
def reap() -> Iterator[list[int]]:
    """Process groups to kill at teardown, so a failing test leaves no command behind."""
    groups: list[int] = []
    yield groups
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


def _start_sleeper(bk: Buildkite, tmp_path: Path, reap: list[int]
                   ) -> tuple[str, subprocess.Popen[str], int]:
    pid_file = tmp_path / "pid"
    job_id = bk.add_build("climate", jobs=[{
        "command": f"echo $$ > {pid_file}; sleep 30"}]).job_ids[0]
    agent = subprocess.Popen([str(AGENT), "start", "--acquire-job", job_id,
                              "--cancel-grace-period", "5"], env=agent_env(bk),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: bk.job_state(job_id) == "running" and pid_file.exists()
                 and pid_file.read_text().strip() != "")
    except AssertionError:
        agent.kill()
        agent.communicate()
        raise
    pgid = int(pid_file.read_text())
    reap.append(pgid)
    return job_id, agent, pgid


def _gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    return False


def test_agent_on_sigterm_stops_the_command_and_reports_it(
        bk: Buildkite, tmp_path: Path, reap: list[int]) -> None:
    job_id, agent, pgid = _start_sleeper(bk, tmp_path, reap)
    try:
        started = time.monotonic()
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 5  # the command was signalled, not waited for
    finally:
        agent.kill()
        out, err = agent.communicate()
    job = bk.job(job_id)
    assert (job.state, job.signal, job.signal_reason) == ("failed", "SIGTERM", "agent_stop")
    assert job.exit_status == -1
    assert _gone(pgid)
    assert "SIGTERM" in err
    assert bk.agent_token not in out + err


def test_agent_on_sigterm_as_the_command_starts_still_stops_it(
        bk: Buildkite, tmp_path: Path, reap: list[int]) -> None:
    # The command runs before the agent's Popen returns; a SIGTERM then (Slurm's scancel can
    # come at any moment) once found no process to stop and the agent ran the command out.
    # Signalled the instant the command shows, a few times: about half did so before.
    for attempt in range(5):
        pid_file = tmp_path / f"pid{attempt}"
        job_id = bk.add_build("climate", jobs=[{
            "command": f"echo $$ > {pid_file}; sleep 30"}]).job_ids[0]
        agent = subprocess.Popen([str(AGENT), "start", "--acquire-job", job_id],
                                 env=agent_env(bk), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 15
            while not pid_file.exists():
                assert time.monotonic() < deadline, "the command never started"
            agent.send_signal(signal.SIGTERM)
            assert agent.wait(timeout=10) == 128 + signal.SIGTERM
        finally:
            agent.kill()
            agent.communicate()
            # the shell creates the file before echo writes to it: a SIGTERM in between leaves
            # it empty, and the shell is gone; otherwise its group is reaped at teardown
            written = pid_file.read_text().strip()
            if written:
                reap.append(int(written))
        assert bk.job(job_id).signal_reason == "agent_stop"


def test_agent_stops_the_command_when_the_job_is_cancelled(
        bk: Buildkite, tmp_path: Path, reap: list[int]) -> None:
    job_id, agent, pgid = _start_sleeper(bk, tmp_path, reap)
    try:
        bk.cancel_job(job_id)
        assert bk.job_state(job_id) == "canceling"
        assert agent.wait(timeout=15) == 128 + signal.SIGTERM
    finally:
        agent.kill()
        agent.communicate()
    job = bk.job(job_id)
    assert (job.state, job.signal_reason) == ("canceled", "cancel")
    assert bk.job_history(job_id)[-2:] == ["canceling", "canceled"]
    assert _gone(pgid)
