"""A daemon without auth (``auth=False``) and a web page in a browser on the same machine: the page can send
requests to 127.0.0.1 (cross-site ``POST`` with ``text/plain`` needs no preflight) and, by DNS rebinding, as its
own origin. Browser-shaped requests — a foreign ``Host``, a foreign ``Origin``, ``Sec-Fetch-Site: cross-site`` —
are refused with a typed 403; plain clients (no ``Origin``, a loopback ``Host``) are served."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability import rawhttp
from tests.reliability.daemons import DaemonProc, start_daemon


@pytest.fixture
def open_daemon(tmp_path: Path):
    d = start_daemon(tmp_path / "state", token=None)
    d.deploy("add", "add")
    yield d
    d.kill()


def _send(d: DaemonProc, method: str, path: str, headers: dict[str, str], body: bytes = b"",
          host: str | None = None) -> rawhttp.RawAnswer:
    port = rawhttp.address(d.endpoint)[1]
    return rawhttp.exchange(d.endpoint, rawhttp.request(method, path, host=host or f"127.0.0.1:{port}",
                                                        headers=headers, body=body))


def test_an_open_daemon_refuses_browser_shaped_requests(open_daemon: DaemonProc):
    d = open_daemon
    port = rawhttp.address(d.endpoint)[1]
    deploy = json.dumps({"name": "evil", "code": {"import_path": "os", "qualname": "system"}}).encode()
    call = b'{"args": [1, 2]}'
    refused = [  # (method, path, headers, body, host, reason)
        ("POST", "/deploy", {"Origin": "http://evil.example", "Content-Type": "text/plain"}, deploy, None,
         "cross_origin"),
        ("POST", "/add/call", {"Origin": "https://evil.example"}, call, None, "cross_origin"),
        ("POST", "/add/call", {"Origin": "null", "Content-Type": "text/plain"}, call, None, "cross_origin"),
        ("PUT", "/objects/x", {"Origin": "http://evil.example"}, b"\x80\x05N.", None, "cross_origin"),
        ("DELETE", "/envs/default", {"Origin": "http://evil.example"}, b"", None, "cross_origin"),
        ("POST", "/shutdown", {"Origin": "http://evil.example"}, b"", None, "cross_origin"),
        ("POST", "/add/call", {"Sec-Fetch-Site": "cross-site"}, call, None, "cross_origin"),
        ("POST", "/add/call", {"Origin": "http://localhost:3000"}, call, None, "cross_origin"),  # another local site
        ("GET", "/add?a=1&b=2", {"Origin": "http://evil.example"}, b"", None, "cross_origin"),
        # DNS rebinding: the page's own origin, a Host that is not the daemon's
        ("POST", "/deploy", {"Origin": f"http://evil.example:{port}"}, deploy, f"evil.example:{port}",
         "host_not_allowed"),
        ("POST", "/add/call", {}, call, f"evil.example:{port}", "host_not_allowed"),
        ("GET", "/status", {}, b"", "evil.example", "host_not_allowed"),
        ("POST", "/add/call", {}, call, f"127.0.0.1.evil.example:{port}", "host_not_allowed"),
    ]
    for method, path, headers, body, host, reason in refused:
        answer = _send(d, method, path, headers, body, host)
        assert answer.status == 403, (method, path, headers, host, answer)
        err = answer.json()["error"]
        assert err["type"] == "AuthError" and err["details"]["reason"] == reason and err["hint"], err
    status = d.get("/status").json()
    assert "evil" not in [s["name"] for s in status["services"]] and d.proc.poll() is None  # nothing ran

    served = [  # plain clients: no Origin, a loopback Host (or the daemon's own origin)
        ({}, f"127.0.0.1:{port}"), ({}, f"localhost:{port}"), ({}, "localhost"), ({}, f"[::1]:{port}"),
        ({"Origin": f"http://127.0.0.1:{port}"}, f"127.0.0.1:{port}"),
        ({"Origin": f"http://localhost:{port}"}, f"localhost:{port}"),
        ({"Sec-Fetch-Site": "same-origin"}, f"127.0.0.1:{port}"),
    ]
    for headers, host in served:
        answer = _send(d, "POST", "/add/call", {**headers, "Content-Type": "application/json"}, call, host)
        assert answer.status == 200 and answer.json()["result"] == 3, (headers, host, answer)
    assert d.call("add", 2, 2).json()["result"] == 4
    assert "auth_disabled" in d.log.read_text()  # the daemon warned at start


def test_a_daemon_with_a_token_keeps_serving_other_hosts(tmp_path: Path):
    """With a token a page cannot call (it cannot send the header without a preflight the daemon never answers),
    and a daemon behind a proxy or tunnel sees the proxy's Host: no Host check there."""
    d = start_daemon(tmp_path / "state")
    try:
        d.deploy("add", "add")
        answer = _send(d, "POST", "/add/call", {**d.headers, "Content-Type": "application/json"},
                       b'{"args": [1, 2]}', host="gpu.internal.example")
        assert answer.status == 200 and answer.json()["result"] == 3, answer
    finally:
        d.kill()
