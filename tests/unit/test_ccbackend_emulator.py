"""The cc-backend emulator answers as cc-backend 1.4.4 / 1.5.4 do, over real loopback HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.emulators.base import Faults
from tests.emulators.ccbackend import CCBackend

TOKEN = "s3cret"
AUTH = {"X-Auth-Token": TOKEN}
T0 = 1_700_000_000
DAY = 86_400
CLUSTERS = {
    "alex": {"subclusters": {"a40": ["a0101", "a0102"], "a100": "a05[01-04]"}},
    "fritz": {"subclusters": {"main": "*", "spr": ["f2001"]}},
}
VERSIONS = ["1.4.4", "1.5.4"]


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _emulator(version: str, **kwargs: Any) -> CCBackend:
    return CCBackend(version, clusters=CLUSTERS, tokens={TOKEN}, **kwargs)


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, CCBackend]]:
    """One running emulator per version for the module; each test gets it reset."""
    running = {version: _emulator(version) for version in VERSIONS}
    for server in running.values():
        server.start()
    yield running
    for server in running.values():
        server.stop()


def _fresh(servers: dict[str, CCBackend], version: str) -> CCBackend:
    server = servers[version]
    server.reset()
    return server


@pytest.fixture(params=VERSIONS)
def emu(request: pytest.FixtureRequest, servers: dict[str, CCBackend]) -> CCBackend:
    return _fresh(servers, request.param)


@pytest.fixture
def emu14(servers: dict[str, CCBackend]) -> CCBackend:
    return _fresh(servers, "1.4.4")


@pytest.fixture
def emu15(servers: dict[str, CCBackend]) -> CCBackend:
    return _fresh(servers, "1.5.4")


def job_body(**overrides: Any) -> dict[str, Any]:
    """A valid start_job body for either version; an override of None drops that key."""
    body: dict[str, Any] = {
        "jobId": 1001, "cluster": "alex", "user": "ada", "project": "p1", "partition": "gpu",
        "numNodes": 1, "numHwthreads": 4, "walltime": 3600, "startTime": T0,
        "resources": [{"hostname": "a0101", "hwthreads": [0, 1, 2, 3]}],
        "metaData": {"jobName": "train", "slurmInfo": "x"},
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}


def start(emu: CCBackend, body: Any = None, method: str = "POST", **overrides: Any
          ) -> requests.Response:
    payload = job_body(**overrides) if body is None else body
    return requests.request(method, emu.url + "/api/jobs/start_job/", json=payload,
                            headers=AUTH, timeout=5)


def started(emu: CCBackend, **overrides: Any) -> None:
    """Start a job and commit it, so it is in the job table on either version."""
    reply = start(emu, **overrides)
    assert reply.status_code == 201, reply.text
    emu.commit()


def stop(emu: CCBackend, **body: Any) -> requests.Response:
    return requests.post(emu.url + "/api/jobs/stop_job/", json=body, headers=AUTH, timeout=5)


def listing(emu: CCBackend, params: Any = None) -> requests.Response:
    return requests.get(emu.url + "/api/jobs/", params=params, headers=AUTH, timeout=5)


def listed_ids(emu: CCBackend, params: Any = None) -> list[int]:
    reply = listing(emu, params)
    assert reply.status_code == 200, reply.text
    return [job["jobId"] for job in reply.json()["jobs"]]


# --- auth ------------------------------------------------------------------------------------


def test_x_auth_token_header_is_accepted(emu: CCBackend) -> None:
    reply = requests.get(emu.url + "/api/jobs/", headers={"X-Auth-Token": TOKEN}, timeout=5)
    assert reply.status_code == 200


def test_bearer_token_is_accepted(emu: CCBackend) -> None:
    reply = requests.get(emu.url + "/api/jobs/", headers={"Authorization": f"Bearer {TOKEN}"},
                         timeout=5)
    assert reply.status_code == 200


@pytest.mark.parametrize("headers", [
    {}, {"X-Auth-Token": "wrong"}, {"Authorization": "Bearer wrong"},
    {"Authorization": f"bearer {TOKEN}"},
], ids=["none", "unknown-x-auth", "unknown-bearer", "lowercase-bearer"])
def test_missing_or_unknown_token_is_401_in_error_shape(emu: CCBackend,
                                                        headers: dict[str, str]) -> None:
    reply = requests.post(emu.url + "/api/jobs/start_job/", json=job_body(), headers=headers,
                          timeout=5)
    assert reply.status_code == 401
    assert reply.json()["status"] == "Unauthorized" and reply.json()["error"]
    assert emu.all_jobs() == []


def test_authorization_without_bearer_prefix_passes_as_in_go_trimprefix(emu: CCBackend) -> None:
    reply = requests.get(emu.url + "/api/jobs/", headers={"Authorization": TOKEN}, timeout=5)
    assert reply.status_code == 200


def test_x_auth_token_is_read_before_authorization(emu: CCBackend) -> None:
    headers = {"X-Auth-Token": "wrong", "Authorization": f"Bearer {TOKEN}"}
    reply = requests.get(emu.url + "/api/jobs/", headers=headers, timeout=5)
    assert reply.status_code == 401


# --- start_job: decoding ---------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_start_answers_201_success_and_stores_the_job(emu: CCBackend, method: str) -> None:
    reply = start(emu, method=method)
    assert reply.status_code == 201
    assert reply.json() == {"msg": "success"}
    [job] = emu.job(1001)
    assert job["user"] == "ada" and job["subCluster"] == "a40" and isinstance(job["id"], int)


def test_unknown_field_is_400(emu: CCBackend) -> None:
    reply = start(emu, jobName="train")
    assert reply.status_code == 400
    assert reply.json() == {"status": "Bad Request",
                            "error": 'parsing request body failed: json: unknown field "jobName"'}


def test_unknown_field_inside_a_resource_is_400(emu: CCBackend) -> None:
    reply = start(emu, resources=[{"hostname": "a0101", "cpus": [0]}])
    assert reply.status_code == 400 and "cpus" in reply.json()["error"]


def test_keys_match_case_insensitively_like_go(emu: CCBackend) -> None:
    body = job_body(metaData=None, jobId=None)
    body.update({"metadata": {"jobName": "folded"}, "JOBID": 77})
    assert start(emu, body).status_code == 201
    [job] = emu.job(77)
    assert job["metaData"] == {"jobName": "folded"}


def test_exclusive_is_accepted_on_1_4(emu14: CCBackend) -> None:
    assert start(emu14, exclusive=0).status_code == 201
    assert emu14.job(1001)[0]["exclusive"] == 0


def test_exclusive_is_an_unknown_field_on_1_5(emu15: CCBackend) -> None:
    reply = start(emu15, exclusive=1)
    assert reply.status_code == 400 and "exclusive" in reply.json()["error"]


def test_shared_is_accepted_on_1_5(emu15: CCBackend) -> None:
    assert start(emu15, shared="multi_user").status_code == 201
    assert emu15.job(1001)[0]["shared"] == "multi_user"


def test_shared_is_an_unknown_field_on_1_4(emu14: CCBackend) -> None:
    reply = start(emu14, shared="none")
    assert reply.status_code == 400 and "shared" in reply.json()["error"]


@pytest.mark.parametrize("field", ["submitTime", "requestedMemory"])
def test_1_5_only_fields_are_unknown_on_1_4(emu14: CCBackend, field: str) -> None:
    assert start(emu14, job_body(**{field: 10})).status_code == 400


@pytest.mark.parametrize("field", ["submitTime", "requestedMemory"])
def test_1_5_only_fields_are_accepted_on_1_5(emu15: CCBackend, field: str) -> None:
    assert start(emu15, job_body(**{field: 10})).status_code == 201


def test_defaults_are_the_versions_own(emu: CCBackend) -> None:
    start(emu)
    [job] = emu.job(1001)
    expected = {"exclusive": 1} if emu.version.startswith("1.4") else {"shared": "none"}
    assert {key: job[key] for key in expected} == expected and job["monitoringStatus"] == 1


def test_metadata_values_must_be_strings(emu: CCBackend) -> None:
    reply = start(emu, metaData={"slurmInfo": "x", "cores": 4})
    assert reply.status_code == 400 and "metaData" in reply.json()["error"]


@pytest.mark.parametrize("value", ["1001", 1001.5, 1001.0, True],
                         ids=["string", "fraction", "float-literal", "bool"])
def test_integers_must_be_json_integers(emu: CCBackend, value: Any) -> None:
    assert start(emu, jobId=value).status_code == 400


def test_int32_fields_refuse_overflow(emu: CCBackend) -> None:
    assert start(emu, numHwthreads=2**31).status_code == 400


def test_hwthreads_items_must_be_integers(emu: CCBackend) -> None:
    assert start(emu, resources=[{"hostname": "a0101", "hwthreads": ["0"]}]).status_code == 400


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'{"jobId": NaN}'],
                         ids=["empty", "truncated", "array", "nan"])
def test_a_body_that_is_not_a_job_object_is_400(emu: CCBackend, raw: bytes) -> None:
    reply = requests.post(emu.url + "/api/jobs/start_job/", data=raw, headers=AUTH, timeout=5)
    assert reply.status_code == 400


def test_server_forces_the_running_state(emu: CCBackend) -> None:
    assert start(emu, jobState="completed").status_code == 201
    assert emu.job(1001)[0]["jobState"] == "running"


# --- start_job: SanityChecks and constraints -------------------------------------------------


def test_resources_must_match_num_nodes(emu: CCBackend) -> None:
    reply = start(emu, numNodes=2)
    assert reply.status_code == 400
    assert reply.json()["error"] == "job resources and numNodes do not match"


def test_empty_resources_is_400(emu: CCBackend) -> None:
    reply = start(emu, resources=[], subCluster="a40")
    assert reply.status_code == 400
    assert reply.json()["error"] == "'resources' and 'user' should not be empty"


def test_empty_resources_without_subcluster_is_400(emu: CCBackend) -> None:
    reply = start(emu, resources=[])
    assert reply.status_code == 400 and "without any resources" in reply.json()["error"]


@pytest.mark.parametrize("overrides", [
    {"cluster": "nowhere"}, {"user": ""}, {"user": None}, {"numNodes": 0}, {"numAcc": -1},
    {"numHwthreads": -1}, {"subCluster": "nosuch"},
], ids=["unknown-cluster", "empty-user", "no-user", "zero-nodes", "negative-acc",
        "negative-hwthreads", "unknown-subcluster"])
def test_sanity_checks_refuse_with_400(emu: CCBackend, overrides: dict[str, Any]) -> None:
    reply = start(emu, **overrides)
    assert reply.status_code == 400, reply.text
    assert emu.all_jobs() == []


@pytest.mark.parametrize(("host", "subcluster"), [("a0102", "a40"), ("a0503", "a100")],
                         ids=["node-list", "hostlist-expression"])
def test_subcluster_is_assigned_from_the_first_hostname(emu: CCBackend, host: str,
                                                        subcluster: str) -> None:
    resources = [{"hostname": host}, {"hostname": "a0101"}]
    assert start(emu, numNodes=2, resources=resources).status_code == 201
    assert emu.job(1001)[0]["subCluster"] == subcluster


def test_a_star_first_subcluster_takes_unlisted_hosts(emu: CCBackend) -> None:
    assert start(emu, cluster="fritz", resources=[{"hostname": "f0001"}]).status_code == 201
    assert emu.job(1001)[0]["subCluster"] == "main"


def test_a_listed_host_wins_over_the_star_subcluster(emu: CCBackend) -> None:
    assert start(emu, cluster="fritz", resources=[{"hostname": "f2001"}]).status_code == 201
    assert emu.job(1001)[0]["subCluster"] == "spr"


def test_no_subcluster_found_is_400(emu: CCBackend) -> None:
    reply = start(emu, resources=[{"hostname": "zz01"}])
    assert reply.status_code == 400
    assert reply.json()["error"] == "no subcluster found for cluster alex and host zz01"


def test_exclusive_out_of_range_breaks_a_check_constraint_on_1_4(emu14: CCBackend) -> None:
    reply = start(emu14, exclusive=3)
    assert reply.status_code == 500 and "CHECK constraint" in reply.json()["error"]


def test_unknown_shared_value_breaks_a_check_constraint_on_1_5(emu15: CCBackend) -> None:
    reply = start(emu15, shared="exclusive")
    assert reply.status_code == 500 and "CHECK constraint" in reply.json()["error"]


# --- start_job: duplicates -------------------------------------------------------------------


def test_restart_within_a_day_is_422(emu: CCBackend) -> None:
    started(emu)
    reply = start(emu, startTime=T0 + DAY - 1)
    assert reply.status_code == 422
    assert reply.json()["status"] == "Unprocessable Entity"
    assert "already exists" in reply.json()["error"]


def test_an_older_start_time_is_a_duplicate_too(emu: CCBackend) -> None:
    started(emu)
    assert start(emu, startTime=T0 - 10 * DAY).status_code == 422


def test_restart_a_day_later_is_accepted(emu: CCBackend) -> None:
    started(emu)
    assert start(emu, startTime=T0 + DAY).status_code == 201
    assert len(emu.job(1001)) == 2


def test_same_job_id_on_another_cluster_is_not_a_duplicate(emu: CCBackend) -> None:
    started(emu)
    assert start(emu, cluster="fritz", resources=[{"hostname": "f1"}]).status_code == 201


# --- 1.5 job_cache ---------------------------------------------------------------------------


def test_1_5_job_is_listed_only_after_commit(emu15: CCBackend) -> None:
    assert start(emu15).status_code == 201
    assert listed_ids(emu15) == []
    emu15.commit()
    assert listed_ids(emu15) == [1001]


def test_1_4_job_is_listed_at_once(emu14: CCBackend) -> None:
    assert start(emu14).status_code == 201
    assert listed_ids(emu14) == [1001]


def test_1_5_resend_before_commit_is_500(emu15: CCBackend) -> None:
    assert start(emu15).status_code == 201
    reply = start(emu15)
    assert reply.status_code == 500 and "UNIQUE constraint" in reply.json()["error"]


def test_1_5_restart_before_commit_is_not_seen_as_duplicate(emu15: CCBackend) -> None:
    assert start(emu15).status_code == 201
    assert start(emu15, startTime=T0 + 60).status_code == 201


def test_1_5_resend_after_commit_is_422(emu15: CCBackend) -> None:
    assert start(emu15).status_code == 201
    emu15.commit()
    assert start(emu15).status_code == 422


def test_1_5_commit_moves_the_row_to_a_new_job_id(emu15: CCBackend) -> None:
    start(emu15)
    start(emu15, jobId=1002)
    [cached] = emu15.job(1002)
    assert cached in emu15.job_cache
    moved = emu15.commit()
    assert [row["jobId"] for row in moved] == [1001, 1002]
    assert emu15.job_cache == [] and [row["id"] for row in emu15.jobs] == [1, 2]


def test_1_5_commit_interval_commits_lazily_on_a_request() -> None:
    clock = Clock()
    emu = _emulator("1.5.4", commit_interval=120, clock=clock)
    with emu:
        assert start(emu).status_code == 201
        clock.now += 119
        assert listed_ids(emu) == []
        clock.now += 1
        assert listed_ids(emu) == [1001]


# --- stop_job --------------------------------------------------------------------------------


@pytest.mark.parametrize(("version", "status"), [("1.4.4", 422), ("1.5.4", 404)])
def test_stop_of_an_unknown_job(servers: dict[str, CCBackend], version: str,
                                status: int) -> None:
    emu = _fresh(servers, version)
    reply = stop(emu, jobId=9, cluster="alex", startTime=T0, stopTime=T0 + 5,
                 jobState="completed")
    assert reply.status_code == status
    assert reply.json()["error"] == "finding job failed: sql: no rows in result set"


def test_stop_without_job_id_is_400(emu: CCBackend) -> None:
    started(emu)
    reply = stop(emu, cluster="alex", startTime=T0, stopTime=T0 + 5, jobState="completed")
    assert reply.status_code == 400 and "jobId" in reply.json()["error"]


def test_stop_with_an_unknown_field_is_400(emu: CCBackend) -> None:
    started(emu)
    reply = stop(emu, jobId=1001, stopTime=T0 + 5, jobState="completed", exitCode=0)
    assert reply.status_code == 400


@pytest.mark.parametrize("method", ["POST", "PUT"])
def test_stop_answers_the_job_with_its_duration(emu: CCBackend, method: str) -> None:
    started(emu)
    body = {"jobId": 1001, "cluster": "alex", "startTime": T0, "stopTime": T0 + 90,
            "jobState": "failed"}
    reply = requests.request(method, emu.url + "/api/jobs/stop_job/", json=body, headers=AUTH,
                             timeout=5)
    assert reply.status_code == 200
    job = reply.json()
    assert (job["jobId"], job["jobState"], job["duration"]) == (1001, "failed", 90)
    assert emu.job(1001)[0]["jobState"] == "failed"


def test_stop_on_1_4_answers_start_time_as_rfc3339(emu14: CCBackend) -> None:
    started(emu14)
    reply = stop(emu14, jobId=1001, startTime=T0, stopTime=T0 + 5)
    assert reply.json()["startTime"] == "2023-11-14T22:13:20Z"


def test_stop_on_1_5_answers_start_time_as_epoch(emu15: CCBackend) -> None:
    started(emu15)
    assert stop(emu15, jobId=1001, startTime=T0, stopTime=T0 + 5).json()["startTime"] == T0


def test_stop_of_a_stopped_job_is_422(emu: CCBackend) -> None:
    started(emu)
    assert stop(emu, jobId=1001, startTime=T0, stopTime=T0 + 5).status_code == 200
    reply = stop(emu, jobId=1001, startTime=T0, stopTime=T0 + 6)
    assert reply.status_code == 422 and "already been stopped" in reply.json()["error"]


def test_stop_before_start_is_400(emu: CCBackend) -> None:
    started(emu)
    assert stop(emu, jobId=1001, startTime=T0, stopTime=T0 - 1).status_code == 400
    assert emu.job(1001)[0]["jobState"] == "running"


def test_stop_at_the_start_time_gives_duration_zero(emu: CCBackend) -> None:
    started(emu)
    reply = stop(emu, jobId=1001, startTime=T0, stopTime=T0)
    assert reply.status_code == 200 and reply.json()["duration"] == 0


@pytest.mark.parametrize(("version", "state", "status"), [
    ("1.4.4", "bogus", 400), ("1.5.4", "bogus", 400),
    ("1.5.4", "stopped", 400), ("1.4.4", "stopped", 200),
    ("1.4.4", "node_fail", 400), ("1.5.4", "node_fail", 200),
])
def test_stop_state_must_be_in_the_versions_enum(servers: dict[str, CCBackend], version: str,
                                                 state: str, status: int) -> None:
    emu = _fresh(servers, version)
    started(emu)
    reply = stop(emu, jobId=1001, startTime=T0, stopTime=T0 + 5, jobState=state)
    assert reply.status_code == status


def test_stop_with_an_empty_state_completes_the_job(emu: CCBackend) -> None:
    started(emu)
    reply = stop(emu, jobId=1001, startTime=T0, stopTime=T0 + 5, jobState="")
    assert reply.status_code == 200 and reply.json()["jobState"] == "completed"


def test_stop_finds_a_cached_job_on_1_5(emu15: CCBackend) -> None:
    assert start(emu15).status_code == 201
    assert stop(emu15, jobId=1001, startTime=T0, stopTime=T0 + 5).status_code == 200
    [moved] = emu15.commit()
    assert moved["jobState"] == "completed" and moved["duration"] == 5


def test_stop_without_start_time_takes_the_newest_instance(emu: CCBackend) -> None:
    started(emu)
    started(emu, startTime=T0 + 2 * DAY)
    reply = stop(emu, jobId=1001, stopTime=T0 + 3 * DAY)
    assert reply.status_code == 200 and reply.json()["duration"] == DAY
    assert [j["jobState"] for j in sorted(emu.job(1001), key=lambda j: j["startTime"])] == [
        "running", "completed"]


# --- GET /api/jobs/ --------------------------------------------------------------------------


def test_listing_pages_with_items_per_page(emu: CCBackend) -> None:
    for n in range(5):
        started(emu, jobId=n, startTime=T0 + n)
    pages = [listing(emu, {"items-per-page": 2, "page": page}).json() for page in (1, 2, 3)]
    assert [[job["jobId"] for job in page["jobs"]] for page in pages] == [[4, 3], [2, 1], [0]]
    assert [(page["items"], page["page"]) for page in pages] == [(2, 1), (2, 2), (2, 3)]


def test_listing_defaults_to_25_items_on_page_1(emu: CCBackend) -> None:
    for n in range(26):
        started(emu, jobId=n, startTime=T0 + n)
    reply = listing(emu).json()
    assert (len(reply["jobs"]), reply["items"], reply["page"]) == (25, 25, 1)


def test_listing_sorts_by_start_time_descending(emu: CCBackend) -> None:
    for job_id, start_time in [(1, T0 + 50), (2, T0 + 10), (3, T0 + 90)]:
        started(emu, jobId=job_id, startTime=start_time)
    assert listed_ids(emu) == [3, 1, 2]


@pytest.mark.parametrize("params", [{"jobId": 1}, {"limit": 5}, {"State": "running"}],
                         ids=["jobId", "limit", "wrong-case"])
def test_listing_refuses_unknown_parameters(emu: CCBackend, params: dict[str, Any]) -> None:
    reply = listing(emu, params)
    assert reply.status_code == 400 and "invalid query parameter" in reply.json()["error"]


def test_listing_project_parameter_is_unknown_on_1_4(emu14: CCBackend) -> None:
    assert listing(emu14, {"project": "p1"}).status_code == 400


def test_listing_filters_by_project_on_1_5(emu15: CCBackend) -> None:
    started(emu15, jobId=1, project="p1")
    started(emu15, jobId=2, project="p2")
    assert listed_ids(emu15, {"project": "p2"}) == [2]


def test_listing_validates_every_state(emu: CCBackend) -> None:
    assert listing(emu, [("state", "running"), ("state", "bogus")]).status_code == 400


def test_listing_filters_by_states(emu: CCBackend) -> None:
    for n in (1, 2, 3):
        started(emu, jobId=n, startTime=T0 + n)
    stop(emu, jobId=2, stopTime=T0 + 9, jobState="failed")
    stop(emu, jobId=3, stopTime=T0 + 9, jobState="timeout")
    assert listed_ids(emu, [("state", "failed"), ("state", "timeout")]) == [3, 2]
    assert listed_ids(emu, {"state": "running"}) == [1]


def test_listing_filters_by_cluster(emu: CCBackend) -> None:
    started(emu, jobId=1)
    started(emu, jobId=2, cluster="fritz", resources=[{"hostname": "f1"}])
    assert listed_ids(emu, {"cluster": "fritz"}) == [2]


def test_listing_filters_by_start_time_range_inclusive(emu: CCBackend) -> None:
    for n in range(4):
        started(emu, jobId=n, startTime=T0 + 10 * n)
    assert listed_ids(emu, {"start-time": f"{T0 + 10}-{T0 + 20}"}) == [2, 1]


@pytest.mark.parametrize("params", [
    {"start-time": "5"}, {"start-time": "a-b"}, {"page": "0"}, {"page": "x"},
    {"items-per-page": "0"}, {"items-per-page": "-1"},
])
def test_listing_refuses_bad_values(emu: CCBackend, params: dict[str, str]) -> None:
    assert listing(emu, params).status_code == 400


@pytest.mark.parametrize("query", ["?with-metadata", "?with-metadata=false"])
def test_listing_includes_metadata_when_with_metadata_is_present(emu: CCBackend,
                                                                  query: str) -> None:
    started(emu)
    reply = requests.get(emu.url + "/api/jobs/" + query, headers=AUTH, timeout=5)
    assert reply.json()["jobs"][0]["metaData"] == {"jobName": "train", "slurmInfo": "x"}


def test_listing_leaves_metadata_out_by_default(emu: CCBackend) -> None:
    started(emu)
    assert listing(emu).json()["jobs"][0]["metaData"] is None


def test_listed_job_carries_the_fields_a_sync_tool_reads(emu: CCBackend) -> None:
    started(emu)
    [job] = listing(emu).json()["jobs"]
    assert job["id"] == emu.jobs[0]["id"]
    assert (job["jobId"], job["cluster"], job["startTime"], job["jobState"]) == (
        1001, "alex", T0, "running")
    assert job["resources"] == [{"hostname": "a0101", "hwthreads": [0, 1, 2, 3]}]


# --- faults and helpers ----------------------------------------------------------------------


def test_error_share_one_answers_500_in_the_error_shape(emu: CCBackend) -> None:
    emu.faults = Faults(error_share=1.0)
    reply = start(emu)
    assert reply.status_code == 500
    assert reply.json() == {"status": "Internal Server Error", "error": "injected fault"}
    assert emu.all_jobs() == []


def test_latency_is_measurable(emu: CCBackend) -> None:
    emu.faults = Faults(latency=0.2)
    began = time.monotonic()
    listing(emu)
    assert time.monotonic() - began >= 0.2


def test_job_helper_sees_cache_and_committed_rows(emu15: CCBackend) -> None:
    started(emu15)
    start(emu15, startTime=T0 + DAY)
    assert [row in emu15.job_cache for row in emu15.job(1001)] == [True, False]
    assert emu15.job(1001, cluster="fritz") == []
    assert len(emu15.all_jobs()) == 2


def test_requests_are_logged_for_counting(emu: CCBackend) -> None:
    start(emu)
    listing(emu)
    assert emu.count("POST", r"/api/jobs/start_job/") == 1
    assert emu.count("GET", r"/api/jobs/") == 1


def test_reset_empties_the_tables_and_switches_faults_off(emu15: CCBackend) -> None:
    started(emu15)
    start(emu15, jobId=2)
    emu15.faults = Faults(error_share=1.0)
    emu15.reset()
    assert emu15.all_jobs() == [] and emu15.seen == []
    started(emu15)
    assert emu15.jobs[0]["id"] == 1


def test_unknown_version_is_refused() -> None:
    with pytest.raises(ValueError, match=r"1\.3"):
        CCBackend("1.3.1")
