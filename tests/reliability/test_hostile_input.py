"""Hostile input to both servers over real sockets: deeply nested JSON, huge integers, malformed HTTP.

Every answer is a typed tether error as JSON (``{"error": {"type", "message", ...}}``), never a 5xx, never
aiohttp's plain text; the server keeps serving afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.reliability import rawhttp
from tests.reliability.daemons import DaemonProc
from tests.reliability.registries import RegistryProc, start_registry

DEPTHS = (100_000, 5_000, 1_200, 990, 950)
HUGE = "9" * 5_001  # over Python's int-str conversion limit (4,300 digits)


def deep(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RegistryProc]:
    r = start_registry(tmp_path_factory.mktemp("registry"))
    yield r
    r.stop()


@pytest.fixture(scope="module", autouse=True)
def services(daemon: DaemonProc) -> None:
    daemon.deploy("add", "add")
    daemon.deploy("echo", "echo")
    daemon.deploy("Counter", "Counter")


def _typed_4xx(r: requests.Response, what: str) -> dict:
    assert 400 <= r.status_code < 500, (what, r.status_code, r.text[:300])
    assert r.headers["Content-Type"].startswith("application/json"), (what, r.headers["Content-Type"])
    err = r.json()["error"]
    assert err["type"] and err["message"], (what, err)
    return err


def _daemon_bodies(depth: int) -> list[tuple[str, bytes, bool]]:
    """(path, body, must be refused): a call's arguments may nest up to the recursion limit, a spec 100 levels."""
    nested = deep(depth)
    calls = depth > 1_000
    return [
        ("/echo/call", f'{{"args": [{nested}]}}'.encode(), calls),
        ("/echo/call", nested.encode(), True),  # not an object: refused whatever its depth
        ("/deploy", f'{{"name": "x", "code": {{"import_path": "m"}}, "metadata": {{"a": {nested}}}}}'.encode(), True),
        ("/deploy", nested.encode(), True),
        ("/autostop", f'{{"mins": {nested}}}'.encode(), True),
        ("/objects/echo/rename", f'{{"to": {nested}}}'.encode(), True),
    ]


def test_deeply_nested_json_to_the_daemon_is_a_typed_400(daemon: DaemonProc):
    for depth in DEPTHS:
        for path, body, refused in _daemon_bodies(depth):
            r = daemon.post(path, data=body, headers={**daemon.headers, "Content-Type": "application/json"})
            assert r.status_code < 500, (path, depth, r.status_code, r.text[:300])
            if not refused:
                continue
            err = _typed_4xx(r, f"{path} depth {depth}")
            if depth > 1_000 or path != "/echo/call":
                assert r.status_code == 400 and err["type"] == "SerializationError", (path, depth, err)
    assert daemon.call("add", 1, 2).json()["result"] == 3  # still serving
    assert daemon.get("/health").status_code == 200


def test_huge_integers_to_the_daemon_are_a_typed_400(daemon: DaemonProc):
    for path, body in (
        ("/add/call", f'{{"args": [{HUGE}, 1]}}'),
        ("/deploy", f'{{"name": "x", "code": {{"import_path": "m"}}, "env": {{"memory_limit": {HUGE}}}}}'),
        ("/autostop", f'{{"mins": {HUGE}}}'),
    ):
        r = daemon.post(path, data=body.encode(), headers={**daemon.headers, "Content-Type": "application/json"})
        err = _typed_4xx(r, path)
        assert r.status_code == 400 and err["type"] == "SerializationError", (path, err)
    assert daemon.call("add", 1, 2).json()["result"] == 3


def _registry_bodies(value: str) -> list[tuple[str, str]]:
    return [
        ("POST", "/v1/services/fuzzer/svc/versions", f'{{"config": {{"kind": "function", "x": {value}}}}}'),
        ("POST", "/v1/services/fuzzer/svc/versions", value),
        ("POST", "/v1/services/fuzzer/svc/rollback", f'{{"version": {value}}}'),
        ("PUT", "/v1/services/fuzzer/svc/tags/prod", f'{{"version": {value}}}'),
        ("POST", "/v1/services/fuzzer/svc/grants", f'{{"principal": {value}}}'),
        ("POST", "/v1/calls", f'{{"records": {value}}}'),
    ]


def test_deeply_nested_json_and_huge_integers_to_the_registry_are_a_typed_400(registry: RegistryProc):
    headers = {**registry.headers, "Content-Type": "application/json"}
    for value, what in [*((deep(d), f"depth {d}") for d in DEPTHS), (HUGE, "5001 digits")]:
        for method, path, body in _registry_bodies(value):
            r = requests.request(method, registry.url + path, data=body.encode(), headers=headers, timeout=60)
            err = _typed_4xx(r, f"{method} {path} {what}")
            if path.endswith(("versions", "rollback", "prod")) or "digits" in what:
                assert r.status_code == 400 and err["type"] == "SerializationError", (path, what, err)
    ok = requests.post(registry.url + "/v1/services/fuzzer/svc/versions", json={"config": {"kind": "function"}},
                       headers=registry.headers, timeout=30)
    assert ok.status_code == 201, ok.text  # still serving
    assert requests.get(registry.url + "/health", timeout=10).status_code == 200


BIG = "a" * 10_000
#: name -> raw request bytes that aiohttp's parser refuses (or that fail while the body is read)
PROBES: dict[str, bytes] = {
    "garbage request line": b"GARBAGE\r\n\r\n",
    "bad method token": b"G\x00T /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "bad HTTP version": b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
    "empty method": b" /health HTTP/1.1\r\nHost: x\r\n\r\n",
    "TLS hello on the plain port": b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + b"\x00" * 64 + b"\r\n\r\n",
    "header without a colon": b"GET /health HTTP/1.1\r\nHost: x\r\nBadHeader\r\n\r\n",
    "space before the colon": b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n",
    "bad header name": b"GET /health HTTP/1.1\r\nHost: x\r\nX(y): 1\r\n\r\n",
    "NUL in a header value": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "obsolete line folding": b"GET /health HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "oversized header value": f"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: {BIG}\r\n\r\n".encode(),
    "oversized header name": f"GET /health HTTP/1.1\r\nHost: x\r\n{BIG}: 1\r\n\r\n".encode(),
    "oversized request line": f"GET /{BIG} HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
    "too many headers": ("GET /health HTTP/1.1\r\nHost: x\r\n"
                         + "".join(f"X-H{i}: {i}\r\n" for i in range(300)) + "\r\n").encode(),
    "non-numeric Content-Length": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    "negative Content-Length": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    "two different Content-Lengths": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                     b"Content-Length: 3\r\n\r\n{}",
    "Content-Length with chunked": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                   b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "unknown transfer coding": b"POST /deploy HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: rot13\r\n\r\n{}",
    "bad chunk size": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nZZ\r\n{}\r\n0\r\n\r\n",
    "chunk size overflow": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFFFFFF\r\n{}\r\n0\r\n\r\n",
    "chunk without its CRLF": b"POST /deploy HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}XX0\r\n\r\n",
}


def _probe(endpoint: str, name: str, data: bytes, token: str | None) -> None:
    if token and data.startswith((b"GET /", b"POST /")):  # past authentication: the parser's own error
        head, sep, rest = data.partition(b"\r\n")
        data = head + sep + f"Authorization: Bearer {token}\r\n".encode() + rest
    answer = rawhttp.exchange(endpoint, data)
    assert answer.status != 0, (name, answer.body[:200])  # an answer, not a silent close
    assert 400 <= answer.status < 500, (name, answer.status, answer.body[:300])
    assert answer.headers.get("content-type", "").startswith("application/json"), (name, answer.headers,
                                                                                   answer.body[:200])
    err = answer.json()["error"]
    assert err["type"] and err["message"], (name, err)


@pytest.mark.parametrize("server", ["daemon", "registry"])
def test_malformed_http_gets_tether_json_errors(server: str, daemon: DaemonProc, registry: RegistryProc):
    endpoint, token = (daemon.endpoint, daemon.token) if server == "daemon" else (registry.url, registry.token)
    failures = {}
    for name, data in PROBES.items():
        try:
            _probe(endpoint, name, data, token)
        except AssertionError as exc:
            failures[name] = str(exc)[:300]
    assert not failures, json.dumps(failures, indent=1)
    assert requests.get(endpoint + "/health", timeout=10).status_code == 200  # still serving


def test_the_probe_list_covers_the_issue(tmp_path: Path):
    assert len(PROBES) >= 22


def test_bad_bodies_on_the_grant_routes_are_typed_and_change_nothing(daemon: DaemonProc):
    """The owner's grant routes (``POST /grants``, ``/grants/revoke``) with bytes that are not UTF-8, not JSON, not an
    object, or nested too deep: a typed 4xx JSON error, no grant written, the daemon keeps serving."""
    before = daemon.get("/grants").json()
    for path in ("/grants", "/grants/revoke"):
        for body in (b"\xa31\x80\x05K\xb5/", b"{not json", b"[1, 2]", b'"principal"', deep(5_000).encode()):
            _typed_4xx(daemon.post(path, data=body, headers={"Content-Type": "application/json"}), f"{path} {body[:12]!r}")
    assert daemon.get("/grants").json() == before
    assert daemon.post("/add/call", json={"args": [1, 2]}).json()["result"] == 3
