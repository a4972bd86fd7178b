"""In-cycle HTTP retries repeat only what a second try can change (issue 12): a wrong token
(401) was sent three times with sleeps in between."""

from __future__ import annotations

import pytest
import requests

from slurm_sync.http import ServiceClient

# --- in-cycle HTTP retries -------------------------------------------------------------------


class _Answers:
    """A ``requests.Session.request`` stand-in answering from a list, counting calls."""

    def __init__(self, *answers: int | BaseException) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self, *args: object, **kwargs: object) -> requests.Response:
        self.calls += 1
        answer = self.answers[min(self.calls, len(self.answers)) - 1]
        if isinstance(answer, BaseException):
            raise answer
        response = requests.Response()
        response.status_code = answer
        response._content = b"{}"
        return response


def _client(answers: _Answers) -> ServiceClient:
    client = ServiceClient("https://svc.example.org", retries=2, sleep=lambda _: None)
    client.session.request = answers  # type: ignore[method-assign]
    return client


@pytest.mark.parametrize("status", [400, 401, 403, 404, 407, 408, 409, 422])
def test_answers_a_retry_cannot_change_are_sent_once(status: int) -> None:
    answers = _Answers(status)
    reply = _client(answers).get("/api/x")
    assert (reply.status, reply.attempts, answers.calls) == (status, 1, 1)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_answers_that_may_change_are_retried(status: int) -> None:
    answers = _Answers(status, status, 200)
    reply = _client(answers).get("/api/x")
    assert (reply.status, answers.calls) == (200, 3)


@pytest.mark.parametrize(("error", "calls"), [
    (requests.ConnectionError("Connection refused"), 3),
    (requests.Timeout("read timed out"), 3),
    (requests.exceptions.SSLError("certificate verify failed: self signed"), 1),
    (requests.exceptions.SSLError("wrong version number"), 1),
    (requests.ConnectionError("Name or service not known"), 1),
    (requests.exceptions.InvalidHeader("Invalid return character in header"), 1),
    (requests.exceptions.InvalidURL("bad"), 1),
])
def test_no_answer_is_retried_only_when_it_can_pass(error: BaseException, calls: int) -> None:
    answers = _Answers(error)
    reply = _client(answers).get("/api/x")
    assert reply.status == 0 and answers.calls == calls


def test_a_host_name_urllib3_cannot_encode_is_an_answer_not_an_exception() -> None:
    """urllib3 2 raises LocationParseError while connecting, which requests does not wrap."""
    client = ServiceClient("http://127." + "9" * 300 + "0.0.1:9", retries=2,
                           sleep=lambda _: None)
    reply = client.get("/api/x")
    assert reply.status == 0 and reply.attempts == 1 and "invalid request" in reply.error
