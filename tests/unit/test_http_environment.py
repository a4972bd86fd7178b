"""The HTTP client reads its environment once: proxies and the CA bundle as requests would, and
never ~/.netrc, whose entry for the service's host would replace the token header."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from slurm_sync.http import ServiceClient


class _Seen(http.server.BaseHTTPRequestHandler):
    """Answers 200 and keeps each request's line and headers."""

    seen: ClassVar[list[tuple[str, dict[str, str]]]] = []

    def do_GET(self) -> None:
        type(self).seen.append((self.path, dict(self.headers.items())))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    _Seen.seen = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Seen)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_netrc_entry_for_the_host_does_not_replace_the_token(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine 127.0.0.1 login someone password other\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    client = ServiceClient(server, headers={"Authorization": "Token the-real-one"})
    assert client.get("/api/x").status == 200
    ((path, headers),) = _Seen.seen
    assert path == "/api/x" and headers["Authorization"] == "Token the-real-one"


def test_proxies_come_from_the_environment_and_no_proxy_is_honoured(
    server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", server)  # the loopback server stands in for the proxy
    client = ServiceClient("http://cc.example.invalid:8080", retries=0)
    assert client.get("/api/jobs/").status == 200
    ((path, _),) = _Seen.seen  # a proxy gets the whole URL in the request line
    assert path == "http://cc.example.invalid:8080/api/jobs/"
    monkeypatch.setenv("NO_PROXY", "cc.example.invalid")
    direct = ServiceClient("http://cc.example.invalid:8080", retries=0)
    reply = direct.get("/api/jobs/")
    assert reply.status == 0 and len(_Seen.seen) == 1  # straight to a name that cannot resolve


def test_the_ca_bundle_variable_is_used_unless_the_config_names_one(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/site/ca.pem")
    assert ServiceClient("https://cc.example.org").session.verify == "/etc/site/ca.pem"
    assert ServiceClient("https://cc.example.org", verify="/etc/cc/ca.pem").session.verify == (
        "/etc/cc/ca.pem")
    assert ServiceClient("https://cc.example.org", verify=False).session.verify is False
    monkeypatch.delenv("REQUESTS_CA_BUNDLE")
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    assert ServiceClient("https://cc.example.org").session.verify is True
