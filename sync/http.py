"""One HTTP session per service, with short in-cycle retries and one place that decides what a
response means for an action.

    client = ServiceClient("https://cc.example.org", headers={"X-Auth-Token": token.reveal()})
    reply = client.post("/api/jobs/start_job/", json=payload)   # a Reply, never raises
    status = classify(reply)                                     # DONE / TRANSIENT / PERMANENT

Retries: a timeout, a connection refused or reset, a 429, 500, 502, 503 or 504 is tried again
up to ``retries`` times in the same cycle, after ``backoff * 2**n`` seconds with full jitter, or
after the service's ``Retry-After`` when it asks for no more than ``max_wait``. Only what a
second try can change is repeated: never a 401, 403, 404 or 408, a TLS failure or a name that
does not resolve (the outbox keeps those for a later cycle). A longer Retry-After ends the
attempts at once: the action goes to the outbox with that hint, which is durable and does not
hold a cron run for minutes. (urllib3's ``Retry`` was considered: it sleeps whatever
Retry-After says inside the request and hides which attempt gave the final answer, so the
few lines here are clearer than configuring it around both.)

Secrets: auth headers are set on the session, never put in a URL; messages built here name the
method, the path and the status, never headers or the base URL's credentials.
"""

from __future__ import annotations

import email.utils
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import requests
import requests.adapters
import urllib3

from slurm_sync import __version__
from slurm_sync.actions import Action, Outcome, Status

__all__ = ["Reply", "ServiceClient", "classify", "outcome_of", "parse_retry_after"]

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
"""Answers that can change on a second try in the same cycle (the service is busy or down for a
moment). 401, 403, 404, 407 and 408 wait in the outbox (``classify``): a token or an address to
fix, or a request the service gave up on, is not helped by repeating it seconds later."""

_NO_RETRY_ERRORS = ("certificate verify failed", "tls", "name or service not known",
                    "invalid request")


@dataclass(frozen=True)
class Reply:
    """What one request came to after its retries: ``status`` is the HTTP status, or 0 when no
    answer came (``error`` says why); ``body`` is the parsed JSON or None."""

    method: str
    path: str
    status: int
    body: Any = None
    text: str = ""
    error: str = ""
    retry_after: float | None = None
    attempts: int = 1
    headers: Mapping[str, str] | None = None
    #: the service's own way of saying what is wrong in an error body (its connector's
    #: ``error_message``), tried before the common ``error``/``message``/``detail`` keys
    explain: Callable[[Mapping[str, Any]], str] | None = field(default=None, compare=False,
                                                              repr=False)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def describe(self) -> str:
        """`reply.describe()` is one line for logs and outcomes: what was asked and what came."""
        what = f"{self.method} {self.path}"
        if self.status == 0:
            return f"{what}: no answer ({self.error}) after {self.attempts} attempt(s)"
        message = ""
        if isinstance(self.body, Mapping):
            message = (self.explain(self.body) if self.explain else "") or str(
                self.body.get("error") or self.body.get("message") or self.body.get("detail")
                or "")
        if not message:
            message = self.text.strip().splitlines()[0][:200] if self.text.strip() else ""
        tries = f" after {self.attempts} attempts" if self.attempts > 1 else ""
        return f"{what}: HTTP {self.status}{': ' + message if message else ''}{tries}"


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`parse_retry_after("120", now)` is 120.0; an HTTP date gives the seconds until it; junk
    gives None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


def classify(reply: Reply) -> Status:
    """What a reply means for the action that sent it: 2xx DONE; no answer, 408, 429 and 5xx
    TRANSIENT; 401, 403 and 404 TRANSIENT too (a token or an address to fix in config: the
    payload is fine and must go once it is fixed); any other 4xx PERMANENT (the service says the
    request itself is wrong). Connectors refine this for the codes their service gives a meaning
    (422 'exists', 404 on a stop)."""
    if reply.ok:
        return Status.DONE
    if reply.status == 0 or reply.status in RETRY_STATUSES or reply.status in _FIX_CONFIG:
        return Status.TRANSIENT
    return Status.PERMANENT


_FIX_CONFIG = frozenset({401, 403, 404, 407, 408})


def outcome_of(action: Action, reply: Reply) -> Outcome:
    """`outcome_of(action, reply)`: the Outcome ``classify`` gives, with the reply's words (and
    its Retry-After for a transient one)."""
    status = classify(reply)
    if status is Status.DONE:
        return Outcome.done(action, f"HTTP {reply.status}")
    if status is Status.TRANSIENT:
        return Outcome.transient(action, reply.describe(), reply.retry_after)
    return Outcome.permanent(action, reply.describe())


POOL_SIZE = 64
"""Connections kept open per service: the most actions a connector applies at once."""


class ServiceClient:
    """A ``requests.Session`` bound to one base URL, with timeouts, TLS settings and retries."""

    def __init__(
        self,
        base_url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        verify: bool | str = True,
        retries: int = 2,
        backoff: float = 0.5,
        max_wait: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
        rand: Callable[[], float] = random.random,
        error_message: Callable[[Mapping[str, Any]], str] | None = None,
    ) -> None:
        """``error_message`` reads the service's own error bodies (one line; "" when it finds
        nothing): each connector knows its service's vocabulary, the core knows none."""
        self.base_url = base_url.rstrip("/")
        self.error_message = error_message
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.max_wait = max_wait
        self._sleep = sleep
        self._rand = rand
        self.session = requests.Session()
        # The environment is read here, once: with trust_env, requests looks up the proxies
        # (a walk over all of os.environ) and ~/.netrc on every request, about 0.5 ms of CPU
        # each (bench/http_cost.py: a tenth of a start of 1,000 jobs), and a ~/.netrc entry
        # for the service's host would replace the token header with Basic auth. Proxies and
        # CA bundle still come from the variables requests reads (HTTPS_PROXY, NO_PROXY,
        # REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE).
        self.session.trust_env = False
        self.session.proxies.update(requests.utils.get_environ_proxies(self.base_url))
        if verify is True:
            verify = (os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
                      or True)
        self.session.verify = verify
        # one pooled connection per worker, whatever the concurrency (at most 64, the config's
        # limit): requests' default pool of 10 drops the connections of workers beyond it
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = f"slurm-sync/{__version__}"
        self.session.headers["Accept"] = "application/json"
        self.session.headers.update(headers or {})
        self.requests_sent = 0

    def close(self) -> None:
        self.session.close()

    def get(self, path: str, params: Any = None) -> Reply:
        return self.request("GET", path, params=params)

    def post(self, path: str, json: Any = None) -> Reply:
        return self.request("POST", path, json=json)

    def put(self, path: str, json: Any = None) -> Reply:
        return self.request("PUT", path, json=json)

    def request(self, method: str, path: str, *, json: Any = None, params: Any = None) -> Reply:
        """Send, retrying what may pass on a second try; never raises for HTTP or network
        trouble (a Reply with status 0 says what happened)."""
        attempt = 0
        while True:
            attempt += 1
            reply = self._once(method, path, json, params, attempt)
            if not _worth_retrying(reply) or attempt > self.retries:
                return reply
            wait = self.backoff * (2 ** (attempt - 1)) * self._rand()
            if reply.retry_after is not None:
                if reply.retry_after > self.max_wait:
                    return reply  # the outbox waits that long, not this run
                wait = reply.retry_after
            self._sleep(wait)

    def _once(self, method: str, path: str, json: Any, params: Any, attempt: int) -> Reply:
        self.requests_sent += 1
        try:
            response = self.session.request(
                method, self.base_url + path, json=json, params=params, timeout=self.timeout
            )
        except requests.Timeout:
            return Reply(method, path, 0, error=f"timed out after {self.timeout:g} s",
                         attempts=attempt)
        except requests.exceptions.SSLError as exc:
            reason = _connection_error(exc)
            return Reply(method, path, 0, error=reason if "certificate" in reason else "TLS error",
                         attempts=attempt)
        except requests.ConnectionError as exc:
            return Reply(method, path, 0, error=_connection_error(exc), attempts=attempt)
        except requests.RequestException as exc:
            return Reply(method, path, 0, error=f"invalid request ({type(exc).__name__})",
                         attempts=attempt)
        except urllib3.exceptions.LocationValueError:
            # urllib3 2 finds a host name it cannot encode (a label of more than 63 characters)
            # only when connecting, and requests lets that through unwrapped
            return Reply(method, path, 0, error="invalid request (a host name that cannot be)",
                         attempts=attempt)
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        return Reply(
            method, path, response.status_code, body=body,
            text=response.text if body is None else "",
            retry_after=parse_retry_after(response.headers.get("Retry-After"), time.time()),
            attempts=attempt, headers=dict(response.headers), explain=self.error_message,
        )


def _worth_retrying(reply: Reply) -> bool:
    """`_worth_retrying(reply)`: a second try in this cycle may get another answer."""
    if reply.status:
        return reply.status in RETRY_STATUSES
    return not any(word in reply.error.lower() for word in _NO_RETRY_ERRORS)


def _connection_error(exc: requests.RequestException) -> str:
    """A short reason without the URL (which may carry credentials) or a traceback."""
    text = str(exc)
    for hint in ("Connection refused", "Name or service not known", "certificate verify failed",
                 "Temporary failure in name resolution", "Connection reset", "No route to host",
                 "Remote end closed connection", "RemoteDisconnected"):
        if hint in text:
            return hint.lower()
    return "connection failed"
