"""The allocation-service emulator answers as myBRC/ColdFront does, over real HTTP on loopback."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

import pytest
import requests

from tests.emulators.bank import Bank, su
from tests.emulators.base import Faults

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Token {TOKEN}"}


@pytest.fixture(scope="module")
def server() -> Iterator[Bank]:
    """One server for the module: stopping one takes half a second."""
    with Bank(token=TOKEN) as emu:
        yield emu


@pytest.fixture
def bank(server: Bank) -> Bank:
    """fc_lab holds 1000 SU: ada (40001) may use 300 of them, bob (40002) 800."""
    server.reset()
    server.set_allocation("fc_lab", 1000)
    server.add_user("ada", 40001)
    server.add_user("bob", 40002)
    server.set_user_allocation("fc_lab", "ada", 300)
    server.set_user_allocation("fc_lab", 40002, "800")
    return server


def _can_submit(bank: Bank, cost: str, uid: str | int, account: str,
                headers: dict[str, str] | None = None) -> requests.Response:
    return requests.get(f"{bank.url}/can_submit_job/{cost}/{uid}/{account}/",
                        headers=AUTH if headers is None else headers, timeout=5)


def _post(bank: Bank, body: Any, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(f"{bank.url}/jobs/", json=body,
                         headers=AUTH if headers is None else headers, timeout=5)


def _put(bank: Bank, jobid: str, body: Any) -> requests.Response:
    return requests.put(f"{bank.url}/jobs/{jobid}/", json=body, headers=AUTH, timeout=5)


def _job(jobid: str = "1001", amount: str | None = "100.00", uid: str = "40001",
         ended: bool = False, **extra: Any) -> dict[str, Any]:
    """A job record as the spank plugin (or, with ``ended``, the jobcomp plugin) sends it."""
    record: dict[str, Any] = {
        "jobslurmid": jobid, "userid": uid, "accountid": "fc_lab", "jobstatus": "RUNNING",
        "partition": "savio3", "qos": "savio_normal",
        "submitdate": "2025-01-06T10:00:00Z", "startdate": "2025-01-06T10:05:00Z",
        "nodes": [{"name": "n0001.savio3"}], "num_cpus": 32, "num_alloc_nodes": 1,
    }
    if amount is not None:
        record["amount"] = amount
    if ended:
        record.update(jobstatus="COMPLETED", enddate="2025-01-06T11:05:00Z", raw_time=1.0,
                      cpu_time=32.0, num_req_nodes=1)
    record.update(extra)
    return record


# --- can_submit_job ----------------------------------------------------------------------------

def test_can_submit_answers_in_the_shape_the_submit_plugin_reads(bank: Bank) -> None:
    reply = _can_submit(bank, "250.00", 40001, "fc_lab")
    assert reply.status_code == 200
    assert reply.json() == {"success": True,
                            "message": "A job with job_cost 250.00 can be submitted."}


def test_can_submit_refuses_what_the_account_allocation_cannot_cover(bank: Bank) -> None:
    bank.set_usage("fc_lab", 900)
    assert _can_submit(bank, "100.00", 40002, "fc_lab").json()["success"] is True  # exactly
    reply = _can_submit(bank, "100.01", 40002, "fc_lab")
    assert reply.status_code == 200
    assert reply.json() == {"success": False, "message": (
        "Adding job_cost 100.01 to account balance 900.00 would exceed account allocation "
        "1000.00.")}


def test_can_submit_refuses_what_the_users_share_cannot_cover(bank: Bank) -> None:
    bank.set_user_usage("fc_lab", "ada", 200)
    assert _can_submit(bank, "100.00", 40001, "fc_lab").json()["success"] is True
    reply = _can_submit(bank, "100.01", 40001, "fc_lab").json()
    assert reply["success"] is False
    assert reply["message"] == ("Adding job_cost 100.01 to user balance 200.00 would exceed "
                                "user allocation 300.00.")
    # bob's share in the same account is untouched by ada's usage
    assert _can_submit(bank, "700.00", 40002, "fc_lab").json()["success"] is True


def test_can_submit_sees_the_usage_that_posted_jobs_added(bank: Bank) -> None:
    assert _post(bank, _job(amount="250.00")).status_code == 201
    assert _can_submit(bank, "50.00", 40001, "fc_lab").json()["success"] is True
    assert _can_submit(bank, "50.01", 40001, "fc_lab").json()["success"] is False


def test_a_non_member_or_an_account_without_allocation_is_refused_with_200(bank: Bank) -> None:
    bank.add_user("eve", 40003)
    reply = _can_submit(bank, "1.00", 40003, "fc_lab")
    assert (reply.status_code, reply.json()) == (200, {
        "success": False, "message": "User eve is not a member of account fc_lab."})
    bank.set_allocation("fc_idle", None)
    bank.set_user_allocation("fc_idle", "eve", 10)
    reply = _can_submit(bank, "1.00", 40003, "fc_idle")
    assert (reply.status_code, reply.json()) == (200, {
        "success": False, "message": "Account fc_idle has no active compute allocation."})


@pytest.mark.parametrize(("cost", "uid", "account", "named"), [
    ("abc", "40001", "fc_lab", "job_cost abc"),
    ("-1.00", "40001", "fc_lab", "job_cost -1.00 is not nonnegative"),
    ("1.000", "40001", "fc_lab", "job_cost 1.000 has greater than 2 decimal places"),
    ("1000000000.00", "40001", "fc_lab", "job_cost 1000000000.00 has greater than 11 digits"),
    ("%20", "40001", "fc_lab", "job_cost  is not a nonempty string"),
    ("1.00", "%20", "fc_lab", "user_id  is not a nonempty string"),
    ("1.00", "ada", "fc_lab", "No user exists with user_id ada"),
    ("1.00", "49999", "fc_lab", "No user exists with user_id 49999"),
    ("1.00", "40001", "fc_nowhere", "No account exists with account_id fc_nowhere"),
])
def test_can_submit_answers_malformed_or_unknown_arguments_400(
        bank: Bank, cost: str, uid: str, account: str, named: str) -> None:
    reply = _can_submit(bank, cost, uid, account)
    assert reply.status_code == 400
    assert reply.json()["success"] is False
    assert named in reply.json()["message"]


def test_an_infinite_allocation_or_allow_all_jobs_lets_anything_through(bank: Bank) -> None:
    bank.set_allocation("co_condo", float("inf"))
    bank.set_user_allocation("co_condo", "ada", 0)
    assert _can_submit(bank, "99999999.00", 40001, "co_condo").json()["success"] is True
    assert _can_submit(bank, "99999999.00", 40001, "fc_lab").json()["success"] is False
    bank.allow_all_jobs = True
    assert _can_submit(bank, "99999999.00", 40001, "fc_lab").json()["success"] is True
    assert _can_submit(bank, "junk", "nobody", "nowhere").status_code == 200


def test_can_submit_only_answers_get(bank: Bank) -> None:
    reply = requests.post(f"{bank.url}/can_submit_job/1.00/40001/fc_lab/", headers=AUTH,
                          timeout=5)
    assert reply.status_code == 405


# --- POST /jobs/ -------------------------------------------------------------------------------

def test_post_stores_the_record_and_adds_its_amount_to_both_usages(bank: Bank) -> None:
    reply = _post(bank, _job(amount="250.50"))
    assert reply.status_code == 201
    body = reply.json()
    assert body["jobslurmid"] == "1001" and body["amount"] == "250.50"
    assert body["userid"] == "40001" and body["accountid"] == "fc_lab"
    assert body["nodes"] == [{"name": "n0001.savio3"}]
    assert body["startdate"] == "2025-01-06T10:05:00Z" and body["enddate"] is None
    assert bank.job("1001") == body
    assert bank.usage("fc_lab") == Decimal("250.50")
    assert bank.user_usage("fc_lab", "ada") == Decimal("250.50")
    assert bank.user_usage("fc_lab", 40002) == Decimal("0.00")


def test_post_overdraws_by_design(bank: Bank) -> None:
    assert _post(bank, _job(amount="400.00")).status_code == 201
    assert bank.user_usage("fc_lab", "ada") == Decimal("400.00")  # share was 300
    assert _can_submit(bank, "0.01", 40001, "fc_lab").json()["success"] is False


def test_a_duplicate_post_is_refused_and_charges_nothing(bank: Bank) -> None:
    assert _post(bank, _job(amount="100.00")).status_code == 201
    reply = _post(bank, _job(amount="100.00"))
    assert reply.status_code == 400
    assert reply.json() == {"jobslurmid": ["job with this jobslurmid already exists."]}
    assert bank.usage("fc_lab") == Decimal("100.00")


@pytest.mark.parametrize("change", [
    {"amount": None},                               # left out: the record gets 0.00
    {"startdate": None},                            # not started: dates not valid
    {"startdate": "2024-12-31T23:00:00Z", "submitdate": "2024-12-31T22:00:00Z"},
])
def test_post_without_amount_or_valid_dates_stores_but_charges_nothing(
        bank: Bank, change: dict[str, Any]) -> None:
    bank.set_allocation("fc_lab", 1000, start=datetime(2025, 1, 1, tzinfo=timezone.utc))
    record = _job(amount="100.00")
    for key, value in change.items():
        if value is None:
            del record[key]
        else:
            record[key] = value
    assert _post(bank, record).status_code == 201
    assert bank.job("1001") is not None
    assert bank.usage("fc_lab") == Decimal("0.00")
    assert bank.user_usage("fc_lab", "ada") == Decimal("0.00")
    # the same record inside the allocation period and with an amount is charged
    assert _post(bank, _job(jobid="1002", amount="100.00")).status_code == 201
    assert bank.usage("fc_lab") == Decimal("100.00")


def test_dates_with_an_offset_are_stored_in_utc(bank: Bank) -> None:
    _post(bank, _job(startdate="2025-01-06T02:05:00-08:00", submitdate="2025-01-06 02:00"))
    record = bank.job(1001)
    assert record is not None
    assert record["startdate"] == "2025-01-06T10:05:00Z"
    assert record["submitdate"] == "2025-01-06T02:00:00Z"  # no zone: UTC


# --- PUT /jobs/{id}/ ---------------------------------------------------------------------------

def test_put_moves_usage_by_the_difference_and_twice_changes_nothing(bank: Bank) -> None:
    _post(bank, _job(amount="250.00"))
    bank.set_usage("fc_lab", "600.00")  # other jobs were charged to the account before
    final = _job(amount="100.00", ended=True, nodes=[{"name": "n0002.savio3"}])
    reply = _put(bank, "1001", final)
    assert reply.status_code == 200
    assert bank.usage("fc_lab") == Decimal("450.00")
    assert bank.user_usage("fc_lab", "ada") == Decimal("100.00")
    assert _put(bank, "1001", final).status_code == 200
    assert bank.usage("fc_lab") == Decimal("450.00")
    assert bank.user_usage("fc_lab", "ada") == Decimal("100.00")
    record = bank.job("1001")
    assert record is not None and record == reply.json()
    assert record["amount"] == "100.00" and record["jobstatus"] == "COMPLETED"
    assert record["enddate"] == "2025-01-06T11:05:00Z" and record["cpu_time"] == 32.0
    assert record["nodes"] == [{"name": "n0001.savio3"}, {"name": "n0002.savio3"}]
    _put(bank, "1001", _job(amount="120.00", ended=True))
    assert bank.user_usage("fc_lab", "ada") == Decimal("120.00")


def test_put_floors_usage_at_zero(bank: Bank) -> None:
    _post(bank, _job(amount="250.00"))
    bank.set_user_usage("fc_lab", "ada", 50)
    _put(bank, "1001", _job(amount="0.00", ended=True))
    assert bank.user_usage("fc_lab", "ada") == Decimal("0.00")
    assert bank.usage("fc_lab") == Decimal("0.00")


def test_put_without_an_end_date_stores_the_amount_but_charges_nothing(bank: Bank) -> None:
    _post(bank, _job(amount="250.00"))
    assert _put(bank, "1001", _job(amount="100.00")).status_code == 200
    assert bank.usage("fc_lab") == Decimal("250.00")
    record = bank.job("1001")
    assert record is not None and record["amount"] == "100.00"


def test_put_for_a_job_never_posted_creates_it_with_its_full_amount(bank: Bank) -> None:
    reply = _put(bank, "2002", _job(jobid="2002", amount="80.00", ended=True))
    assert reply.status_code == 200
    assert bank.usage("fc_lab") == Decimal("80.00")
    assert bank.user_usage("fc_lab", "ada") == Decimal("80.00")
    _put(bank, "2002", _job(jobid="2002", amount="80.00", ended=True))
    assert bank.usage("fc_lab") == Decimal("80.00")


def test_put_for_an_unknown_job_is_404_when_upserts_are_off(bank: Bank) -> None:
    bank.put_upserts = False
    reply = _put(bank, "2002", _job(jobid="2002", amount="80.00", ended=True))
    assert (reply.status_code, reply.json()) == (404, {"detail": "Not found."})
    assert bank.job("2002") is None and bank.usage("fc_lab") == Decimal("0.00")


@pytest.mark.parametrize(("change", "field"), [
    ({"userid": "40002"}, "userid"),
    ({"jobslurmid": "1002"}, "jobslurmid"),
])
def test_put_may_not_move_a_job_to_another_user_or_id(
        bank: Bank, change: dict[str, Any], field: str) -> None:
    _post(bank, _job(amount="250.00"))
    reply = _put(bank, "1001", _job(amount="10.00", ended=True, **change))
    assert reply.status_code == 400
    assert list(reply.json()) == [field]
    assert bank.usage("fc_lab") == Decimal("250.00")


def test_get_returns_a_stored_job(bank: Bank) -> None:
    _post(bank, _job())
    reply = requests.get(f"{bank.url}/jobs/1001/", headers=AUTH, timeout=5)
    assert reply.status_code == 200 and reply.json()["amount"] == "100.00"
    assert requests.get(f"{bank.url}/jobs/9/", headers=AUTH, timeout=5).status_code == 404


def test_paths_keep_their_trailing_slash(bank: Bank) -> None:
    assert requests.post(f"{bank.url}/jobs", json=_job(), headers=AUTH,
                         timeout=5).status_code == 404
    assert bank.job("1001") is None


# --- validation --------------------------------------------------------------------------------

@pytest.mark.parametrize(("change", "field", "message"), [
    ({"amount": "12,50"}, "amount", "A valid number is required."),
    ({"amount": "1.005"}, "amount", "Ensure that there are no more than 2 decimal places."),
    ({"amount": 0.1 + 0.2}, "amount", "Ensure that there are no more than 11 digits in total."),
    ({"amount": "-1.00"}, "amount", "Ensure this value is greater than or equal to 0.00."),
    ({"amount": None}, "amount", "This field may not be null."),
    ({"startdate": "yesterday"}, "startdate", "Datetime has wrong format."),
    ({"enddate": "2025-13-01T00:00:00Z"}, "enddate", "Datetime has wrong format."),
    ({"submitdate": 1736157600}, "submitdate", "Datetime has wrong format."),
    ({"jobslurmid": None}, "jobslurmid", "This field may not be null."),
    ({"jobslurmid": "x" * 151}, "jobslurmid", "no more than 150 characters"),
    ({"userid": "49999"}, "userid", "UserProfile for cluster_uid 49999 does not exist."),
    ({"accountid": "fc_nowhere"}, "accountid", "Object with name=fc_nowhere does not exist."),
    ({"num_cpus": "four"}, "num_cpus", "A valid integer is required."),
    ({"num_cpus": 2.5}, "num_cpus", "A valid integer is required."),
    ({"cpu_time": "lots"}, "cpu_time", "A valid number is required."),
    ({"partition": "p" * 51}, "partition", "no more than 50 characters"),
])
def test_a_malformed_field_is_400_under_its_name(
        bank: Bank, change: dict[str, Any], field: str, message: str) -> None:
    record = _job()
    record.update(change)
    reply = _post(bank, record)
    assert reply.status_code == 400
    assert list(reply.json()) == [field]
    assert message in reply.json()[field][0]
    assert bank.job("1001") is None and bank.usage("fc_lab") == Decimal("0.00")


@pytest.mark.parametrize("field", ["jobslurmid", "userid", "accountid"])
def test_a_missing_required_field_is_400_under_its_name(bank: Bank, field: str) -> None:
    record = _job()
    del record[field]
    reply = _post(bank, record)
    assert (reply.status_code, reply.json()) == (400, {field: ["This field is required."]})


def test_every_bad_field_is_named_at_once(bank: Bank) -> None:
    reply = _post(bank, _job(amount="lots", startdate="soon", nodes=[{"name": "ok"}, {}]))
    assert reply.status_code == 400
    assert reply.json() == {
        "startdate": [reply.json()["startdate"][0]],
        "amount": ["A valid number is required."],
        "nodes": [{}, {"name": ["This field is required."]}],
    }


def test_checks_across_fields_are_non_field_errors(bank: Bank) -> None:
    reply = _post(bank, _job(submitdate="2025-01-06T11:00:00Z"))
    assert reply.status_code == 400
    assert reply.json()["non_field_errors"][0].startswith("Job start date 2025-01-06 10:05:00")
    bank.add_user("eve", 40003)
    reply = _post(bank, _job(uid="40003"))
    assert reply.json() == {"non_field_errors": ["User eve is not a member of account fc_lab."]}


@pytest.mark.parametrize(("data", "key"), [
    (b"{not json", "detail"),
    (b"[1, 2]", "non_field_errors"),
])
def test_a_body_that_is_no_json_object_is_400(bank: Bank, data: bytes, key: str) -> None:
    reply = requests.post(f"{bank.url}/jobs/", data=data, timeout=5,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert reply.status_code == 400 and key in reply.json()


def test_unknown_keys_are_ignored_as_the_real_server_ignores_them(bank: Bank) -> None:
    reply = _put(bank, "1001", _job(amount="10.00", end_date="2025-01-06T11:05:00Z"))
    assert reply.status_code == 200
    assert "end_date" not in reply.json() and reply.json()["enddate"] is None
    assert bank.usage("fc_lab") == Decimal("0.00")  # no enddate: not charged


# --- auth, faults, latency ---------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "detail"), [
    ({}, "Authentication credentials were not provided."),
    ({"Authorization": f"Bearer {TOKEN}"}, "Authentication credentials were not provided."),
    ({"Authorization": "Token wrong"}, "Invalid token."),
    ({"Authorization": TOKEN}, "Authentication credentials were not provided."),
])
def test_a_request_without_the_token_is_401(
        bank: Bank, headers: dict[str, str], detail: str) -> None:
    for reply in (_can_submit(bank, "1.00", 40001, "fc_lab", headers=headers),
                  _post(bank, _job(), headers=headers)):
        assert reply.status_code == 401
        assert reply.json() == {"detail": detail}
        assert reply.headers["WWW-Authenticate"] == "Token"
    assert bank.job("1001") is None and bank.usage("fc_lab") == Decimal("0.00")


def test_the_token_scheme_is_case_insensitive(bank: Bank) -> None:
    headers = {"Authorization": f"token {TOKEN}"}
    assert _can_submit(bank, "1.00", 40001, "fc_lab", headers=headers).status_code == 200


def test_down_answers_every_request_503_until_it_is_up_again(bank: Bank) -> None:
    bank.down = True
    replies = [_can_submit(bank, "1.00", 40001, "fc_lab"), _post(bank, _job()),
               _put(bank, "1001", _job()), requests.get(f"{bank.url}/nowhere", timeout=5)]
    assert [r.status_code for r in replies] == [503, 503, 503, 503]
    assert bank.job("1001") is None and bank.usage("fc_lab") == Decimal("0.00")
    bank.down = False
    assert _can_submit(bank, "1.00", 40001, "fc_lab").status_code == 200


@pytest.mark.parametrize("status", [500, 502])
def test_injected_faults_answer_5xx(status: int) -> None:
    with Bank(token=TOKEN, faults=Faults(error_share=1.0, error_status=status)) as emu:
        emu.set_allocation("fc_lab", 10)
        emu.set_user_allocation("fc_lab", 40001, 10)
        reply = _post(emu, _job(amount="1.00"))
        assert reply.status_code == status
        assert emu.usage("fc_lab") == Decimal("0.00")
        assert emu.count("POST", r"/jobs/") == 1


def test_latency_is_added_to_every_answer(bank: Bank) -> None:
    started = time.monotonic()
    _can_submit(bank, "1.00", 40001, "fc_lab")
    fast = time.monotonic() - started
    bank.faults.latency = 0.4
    started = time.monotonic()
    reply = _can_submit(bank, "1.00", 40001, "fc_lab")
    slow = time.monotonic() - started
    assert reply.status_code == 200
    assert slow >= 0.4 and slow > fast


# --- helpers -----------------------------------------------------------------------------------

def test_helper_amounts_round_half_up_to_cents(bank: Bank) -> None:
    assert su("0.125") == Decimal("0.13") and su(2.675) == Decimal("2.68")
    assert su(7) == Decimal("7.00") and su("Infinity").is_infinite()
    bank.set_user_allocation("fc_lab", "ada", "0.005")
    assert _can_submit(bank, "0.01", 40001, "fc_lab").json()["success"] is True
    assert _can_submit(bank, "0.02", 40001, "fc_lab").json()["success"] is False


def test_reset_forgets_everything_and_switches_faults_off(bank: Bank) -> None:
    _post(bank, _job())
    bank.down = True
    bank.faults.latency = 5.0
    bank.reset()
    assert bank.job("1001") is None and bank.seen == []
    assert not bank.down and bank.faults.latency == 0.0
    reply = _can_submit(bank, "1.00", 40001, "fc_lab")
    assert (reply.status_code, reply.json()["message"]) == (
        400, "No user exists with user_id 40001.")


def test_helpers_make_users_and_name_them_by_uid_or_name(bank: Bank) -> None:
    bank.set_user_allocation("fc_lab", "carol", 5)  # new name: next free uid from 50001
    bank.set_user_allocation("fc_lab", 40010, 5)  # new uid: named user40010
    assert _can_submit(bank, "5.00", 50001, "fc_lab").json()["success"] is True
    bank.set_allocation("fc_other", 5)
    reply = _can_submit(bank, "5.00", 40010, "fc_other").json()
    assert reply["message"] == "User user40010 is not a member of account fc_other."
    with pytest.raises(ValueError, match="already has uid"):
        bank.add_user("ada", 40099)
    with pytest.raises(KeyError):
        bank.usage("fc_nowhere")
