"""What every service emulator shares: a real HTTP server on loopback, JSON in and out, switchable
faults, and a log of the requests it saw.

    >>> class Hello(Emulator):
    ...     def routes(self):
    ...         return [("GET", r"/hello/(?P<name>\\w+)", self.hello)]
    ...     def hello(self, request):
    ...         return Reply(200, {"hello": request.params["name"]})
    >>> with Hello() as emu:                                  # doctest: +SKIP
    ...     requests.get(emu.url + "/hello/ada").json()
    {'hello': 'ada'}

Faults (``emu.faults``) apply before a route runs, so a connector sees them exactly as it would
see a struggling service: ``latency`` seconds per request, a ``error_share`` of requests answered
with ``error_status`` (500 by default), ``timeout_share`` of requests held ``hang`` seconds before
the connection is dropped without an answer, and ``rate_limit`` requests per ``rate_window``
seconds, the rest answered 429 with Retry-After, and ``reset_share`` of connections reset (a TCP
RST, no answer). Faults use their own seeded random generator, so a test run is repeatable.

``emu.outage(seconds, mode)`` takes the service down for a while: ``refuse`` closes the listening
socket and every open connection (clients get "connection refused") and listens again on the same
port afterwards; ``reset`` resets every connection; ``error`` answers every request 503.
``emu.seen`` keeps each request's body and the time it arrived (``received``) beside the time it
was answered (``at``).
"""

from __future__ import annotations

import json
import random
import re
import socket
import struct
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Emulator", "Faults", "Reply", "Request", "Seen"]


@dataclass
class Faults:
    """Switchable faults; all off by default."""

    latency: float = 0.0
    error_share: float = 0.0
    error_status: int = 500
    timeout_share: float = 0.0
    hang: float = 2.0
    rate_limit: int | None = None
    rate_window: float = 1.0
    reset_share: float = 0.0
    seed: int = 1

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)


@dataclass(frozen=True)
class Request:
    """One request as a route sees it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]
    body: bytes
    params: Mapping[str, str] = field(default_factory=dict)

    def json(self) -> Any:
        """The body parsed as JSON; ValueError when it is not JSON."""
        return json.loads(self.body.decode("utf-8"))

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass(frozen=True)
class Reply:
    """What a route answers: a status, a JSON-able body (or None), extra headers."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Seen:
    """One request in ``emu.seen``: what came in and what went out."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    status: int
    at: float
    body: bytes = b""
    received: float = 0.0


Route = tuple[str, str, Callable[[Request], Reply]]


class _Server(ThreadingHTTPServer):
    """Keeps the open connections, so an outage can close them and a reset can send an RST."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self._open: set[socket.socket] = set()
        self._resets: set[socket.socket] = set()
        self._guard = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._guard:
            self._open.add(request)
        super().process_request(request, client_address)

    def reset(self, request: socket.socket) -> None:
        """Close ``request`` with SO_LINGER 0 when the handler is done: the peer gets an RST."""
        request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._guard:
            self._resets.add(request)

    def shutdown_request(self, request: Any) -> None:
        with self._guard:
            self._open.discard(request)
            reset = request in self._resets
            self._resets.discard(request)
        if reset:
            request.close()  # no shutdown(SHUT_WR) first: that would send a FIN
        else:
            super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away (killed, timed out) is no error of the emulator's."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def drop_connections(self) -> None:
        """Reset every open connection (keep-alive ones included)."""
        with self._guard:
            sockets = list(self._open)
        for sock in sockets:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Emulator:
    """A threaded HTTP server on 127.0.0.1 and a free port; subclasses give ``routes()``.

    Use as a context manager, or ``start()``/``stop()``. ``url`` is ``http://127.0.0.1:PORT``.
    A route is ``(method, regex over the path, handler)``; named groups land in
    ``request.params``. Route handlers run under ``self.lock``, so emulator state needs no
    locking of its own.
    """

    def __init__(self, faults: Faults | None = None) -> None:
        self.faults = faults or Faults()
        self.lock = threading.RLock()
        self.seen: list[Seen] = []
        self._hits: list[float] = []
        self._routes = [(m, re.compile(p + r"\Z"), h) for m, p, h in self.routes()]
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._handler: type[BaseHTTPRequestHandler] | None = None
        self._port = 0
        self._down: str | None = None
        self._down_timer: threading.Timer | None = None
        self._outage_lock = threading.Lock()

    # --- to override ---------------------------------------------------------------------------

    def routes(self) -> Sequence[Route]:
        raise NotImplementedError

    def authorize(self, request: Request) -> Reply | None:
        """None when the request may go on, otherwise the refusal to send."""
        return None

    def error_body(self, status: int, message: str) -> Any:
        """The body of an error reply, in the service's own shape."""
        return {"error": message}

    # --- lifecycle -----------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("emulator not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> Emulator:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # headers and body go out in two writes: without TCP_NODELAY, Nagle's algorithm
            # and the client's delayed ACK add 40 ms to every keep-alive request
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                emulator._serve(self)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._handler = Handler
        self._listen()
        return self

    def _listen(self) -> None:
        assert self._handler is not None
        self._server = _Server(("127.0.0.1", self._port), self._handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                        daemon=True)
        self._thread.start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.drop_connections()
            self._server = None

    def stop(self) -> None:
        if self._down_timer is not None:
            self._down_timer.cancel()
            self._down_timer = None
        self._down = None
        self._close()

    # --- outages -------------------------------------------------------------------------------

    def outage(self, seconds: float | None, mode: str = "refuse") -> None:
        """Take the service down now, for ``seconds`` (None: until ``restore()``); returns at
        once. ``refuse``: nothing listens and open connections are closed; ``reset``: every
        connection is reset; ``error``: every request is answered 503."""
        if mode not in ("refuse", "reset", "error"):
            raise ValueError(f"outage mode {mode!r}: refuse, reset or error")
        with self._outage_lock:
            if self._down_timer is not None:
                self._down_timer.cancel()
                self._down_timer = None
            self._down = mode
            if mode == "refuse":
                self._close()
            else:
                if self._server is None:
                    self._listen()
                assert self._server is not None
                self._server.drop_connections()
            if seconds is not None:
                self._down_timer = threading.Timer(seconds, self.restore)
                self._down_timer.daemon = True
                self._down_timer.start()

    def restore(self) -> None:
        """End an outage: listen again on the same port."""
        with self._outage_lock:
            self._down = None
            if self._server is None and self._handler is not None:
                self._listen()

    @property
    def outage_mode(self) -> str | None:
        """The mode of the outage going on, or None."""
        return self._down

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def count(self, method: str, path_regex: str) -> int:
        """How many requests matched ``method`` and ``path_regex`` (whole path)."""
        pattern = re.compile(path_regex + r"\Z")
        with self.lock:
            return sum(1 for s in self.seen if s.method == method and pattern.match(s.path))

    # --- serving -------------------------------------------------------------------------------

    def _fault(self) -> Reply | None:
        """A fault reply for this request, 'hang' to drop it, or None. Called under the lock."""
        faults = self.faults
        if faults.rate_limit is not None:
            now = time.monotonic()
            self._hits = [t for t in self._hits if now - t < faults.rate_window]
            if len(self._hits) >= faults.rate_limit:
                reset = max(1, int(faults.rate_window - (now - self._hits[0])) + 1)
                return Reply(429, self.error_body(429, "rate limit exceeded"),
                             {"Retry-After": str(reset)})
            self._hits.append(now)
        if faults.timeout_share and faults.rng.random() < faults.timeout_share:
            return Reply(-1)
        if faults.reset_share and faults.rng.random() < faults.reset_share:
            return Reply(-2)
        if faults.error_share and faults.rng.random() < faults.error_share:
            return Reply(faults.error_status,
                         self.error_body(faults.error_status, "injected fault"))
        return None

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        received = time.time()
        parsed = urllib.parse.urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        request = Request(
            method=handler.command,
            path=parsed.path,
            query=urllib.parse.parse_qs(parsed.query, keep_blank_values=True),
            headers={k.lower(): v for k, v in handler.headers.items()},
            body=body,
        )
        if self.faults.latency:
            time.sleep(self.faults.latency)
        with self.lock:
            reply = self._fault()
            if self._down == "reset":
                reply = Reply(-2)
            elif self._down is not None:
                reply = Reply(503, self.error_body(503, "service unavailable (outage)"))
        if reply is not None and reply.status == -1:
            time.sleep(self.faults.hang)
            handler.close_connection = True
            with self.lock:
                self.seen.append(Seen(request.method, request.path, request.query, -1,
                                      time.time(), body, received))
            return
        if reply is not None and reply.status == -2:
            # a reset: no answer, and an RST instead of a FIN when the socket closes
            handler.close_connection = True
            server = self._server
            if server is not None:
                server.reset(handler.connection)
            with self.lock:
                self.seen.append(Seen(request.method, request.path, request.query, -2,
                                      time.time(), body, received))
            return
        if reply is None:
            reply = self._dispatch(request)
        with self.lock:
            self.seen.append(Seen(request.method, request.path, request.query, reply.status,
                                  time.time(), body, received))
        self._send(handler, reply)

    def _dispatch(self, request: Request) -> Reply:
        allowed = []
        for method, pattern, route in self._routes:
            match = pattern.match(request.path)
            if not match:
                continue
            if method != request.method:
                allowed.append(method)
                continue
            routed = Request(request.method, request.path, request.query, request.headers,
                             request.body, match.groupdict())
            with self.lock:
                refusal = self.authorize(routed)
                if refusal is not None:
                    return refusal
                try:
                    return route(routed)
                except Exception as exc:  # an emulator bug must show as a 500, not a hang
                    return Reply(500, self.error_body(500, f"emulator error: {exc!r}"))
        if allowed:
            return Reply(405, self.error_body(405, "method not allowed"),
                         {"Allow": ", ".join(allowed)})
        return Reply(404, self.error_body(404, f"no route for {request.path}"))

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, reply: Reply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode("utf-8")
        handler.send_response(reply.status)
        if reply.body is not None:
            handler.send_header("Content-Type", "application/json")
        for name, value in reply.headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)
