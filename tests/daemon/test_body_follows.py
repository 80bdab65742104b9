"""A big call body that follows the head (``X-Tether-Body-Follows``, ``tether.daemon.bodies.receive_following``):
the head goes with ``Content-Length: 0``, the daemon answers ``100 Continue`` and receives the pickle straight into
its argument file, past aiohttp's parser. Real daemons and workers on real sockets, plain and TLS; raw sockets send
exactly what a test wants: bad announcements, a wrong token, a body cut short, a stalled one, and a next request
right behind the body (the daemon takes no byte past the announced end). Every refusal is a typed JSON error sent
before a byte of the body is asked for, and the daemon keeps serving."""

from __future__ import annotations

import json
import os
import pickle
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web

from tests.daemon.aiohttp_sites import self_signed, serve_while
from tests.tcp_clusters import KINDS, echo_cluster, tcp_client
from tether.client import daemon as client_daemon
from tether.client.loop import run_sync
from tether.daemon import bodies
from tether.daemon.eventloop import run
from tether.protocol import frames
from tether.protocol.headers import BODY_FOLLOWS, CALL_ID, PICKLE
from tether.protocol.shm import SHM_DIR

pytestmark = pytest.mark.skipif(SHM_DIR is None, reason="needs a writable /dev/shm")

MB = 1024 * 1024


@pytest.fixture(scope="module", params=KINDS)
def cluster(request: pytest.FixtureRequest, module_home: Any) -> Iterator[Any]:
    with echo_cluster(f"follows-{request.param}", request.param) as c:
        yield c


class Raw:
    """One raw connection to a daemon (TLS when its endpoint is https): send bytes, read response heads and bodies."""

    def __init__(self, endpoint: str, timeout: float = 30) -> None:
        u = urlsplit(endpoint)
        assert u.hostname is not None and u.port is not None
        self.netloc = u.netloc
        sock = socket.create_connection((u.hostname, u.port), timeout=timeout)
        if u.scheme == "https":
            tls = ssl.create_default_context()
            tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE
            sock = tls.wrap_socket(sock, server_hostname=u.hostname)
        self.sock = sock
        self.file = sock.makefile("rb")

    def head(self, path: str, token: str | None, headers: dict[str, str], length: int = 0) -> bytes:
        lines = [f"POST {path} HTTP/1.1", f"Host: {self.netloc}", f"Content-Type: {PICKLE}",
                 f"Content-Length: {length}"]
        if token:
            lines.append(f"Authorization: Bearer {token}")
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def read(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case) and body (none for a 1xx)."""
        status_line = self.file.readline()
        if not status_line:
            return 0, {}, b""
        status = int(status_line.split()[1])
        headers: dict[str, str] = {}
        while (line := self.file.readline()) not in (b"\r\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        if status < 200:
            return status, headers, b""
        return status, headers, self.file.read(int(headers.get("content-length", "0")))

    def close(self) -> None:
        self.file.close()
        self.sock.close()


def _pickled(value: Any) -> bytes:
    return pickle.dumps(((value,), {}), protocol=5)


def _result(body: bytes) -> Any:
    (kind, payload), = [f for f in frames.split_client_frames(body) if f.kind != frames.HEARTBEAT]
    assert kind == frames.RESULT, payload[:200]
    return pickle.loads(payload)


def _files_of(pid: int) -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith(f"tether-{pid}-")}


def _settles(pid: int, before: set[str]) -> bool:
    deadline = time.monotonic() + 30
    while not _files_of(pid) <= before and time.monotonic() < deadline:
        time.sleep(0.05)
    return _files_of(pid) <= before


def test_a_client_sends_big_bodies_after_the_head_once_the_daemon_said_it_takes_them(cluster: Any) -> None:
    client = tcp_client(cluster)
    assert not client._follow
    small = client.call_sync("echo", None, (b"hi",), {}, call_id=os.urandom(8).hex())
    assert small == b"hi" and client._follow  # the call's response said so
    for size in (3 * MB, 12 * MB + 7):
        payload = os.urandom(size)
        assert client.call_sync("echo", None, (payload,), {}, call_id=os.urandom(8).hex()) == payload

        async def twice(p: bytes = payload) -> list[Any]:
            return [await client.call("echo", None, (p,), {}, call_id=os.urandom(8).hex()) for _ in range(2)]

        assert run_sync(twice()) == [payload, payload]


def test_the_daemon_asks_for_the_body_takes_exactly_it_and_serves_the_next_request_behind_it(cluster: Any) -> None:
    h = cluster.handle
    payload = os.urandom(5 * MB)
    body = _pickled(payload)
    raw = Raw(h.endpoint)
    try:
        raw.sock.sendall(raw.head("/echo/call", h.token, {BODY_FOLLOWS: str(len(body))}))
        status, _, _ = raw.read()
        assert status == 100
        small = _pickled(b"next")  # a whole second request right behind the body, in the same send
        raw.sock.sendall(body + raw.head("/echo/call", h.token, {}, len(small)) + small)
        status, headers, answer = raw.read()
        assert status == 200 and headers.get(BODY_FOLLOWS.lower()) == "1"
        assert _result(answer) == payload
        status, _, answer = raw.read()
        assert status == 200 and _result(answer) == b"next"
    finally:
        raw.close()


@pytest.mark.parametrize(("follows", "length", "status", "reason"), [
    ("12", 12, 400, "bad_body_follows"),  # a body of its own as well
    ("lots", 0, 400, "bad_body_follows"),
    (str(10**15), 0, 413, None),  # over the daemon's limit
])
def test_a_bad_announcement_is_refused_before_any_body_is_asked_for(cluster: Any, follows: str, length: int,
                                                                    status: int, reason: str | None) -> None:
    h = cluster.handle
    raw = Raw(h.endpoint)
    try:
        raw.sock.sendall(raw.head("/echo/call", h.token, {BODY_FOLLOWS: follows}, length) + b"x" * length)
        got, headers, answer = raw.read()
        assert got == status and headers["content-type"].startswith("application/json")
        error = json.loads(answer)["error"]
        assert error["type"] in ("SerializationError", "PayloadTooLarge")
        if reason:
            assert error["details"]["reason"] == reason
    finally:
        raw.close()
    assert tcp_client(cluster).call_sync("echo", None, (b"still",), {}, call_id=os.urandom(8).hex()) == b"still"


def test_a_wrong_token_gets_its_401_without_being_asked_for_the_body(cluster: Any) -> None:
    h = cluster.handle
    raw = Raw(h.endpoint)
    try:
        raw.sock.sendall(raw.head("/echo/call", "wrong", {BODY_FOLLOWS: str(4 * MB)}))
        status, _, _ = raw.read()
        assert status == 401  # no 100 first: the body is never sent
        small = _pickled(b"after")  # the connection is at a request boundary: the next request is served
        raw.sock.sendall(raw.head("/echo/call", h.token, {}, len(small)) + small)
        status, _, answer = raw.read()
        assert status == 200 and _result(answer) == b"after"
    finally:
        raw.close()


def test_a_body_that_is_no_pickle_or_ends_early_leaves_no_file_behind(cluster: Any) -> None:
    h = cluster.handle
    client = tcp_client(cluster)
    pid = client.sync.daemon_status()["pid"]
    before = _files_of(pid)
    raw = Raw(h.endpoint)
    try:
        raw.sock.sendall(raw.head("/echo/call", h.token, {BODY_FOLLOWS: str(2 * MB)}))
        assert raw.read()[0] == 100
        raw.sock.sendall(b"y" * (2 * MB))
        status, _, answer = raw.read()
        assert status == 400 and b"not a pickle" in answer
    finally:
        raw.close()
    raw = Raw(h.endpoint)
    try:
        raw.sock.sendall(raw.head("/echo/call", h.token, {BODY_FOLLOWS: str(3 * MB)}))
        assert raw.read()[0] == 100
        raw.sock.sendall(b"\x80" + b"z" * MB)  # a third of it, then the client goes away
    finally:
        raw.close()
    assert _settles(pid, before)
    assert client.call_sync("echo", None, (b"still",), {}, call_id=os.urandom(8).hex()) == b"still"


def test_a_call_whose_body_was_cut_short_runs_when_sent_again_with_its_id(cluster: Any) -> None:
    """A body cut short leaves nothing of its call behind: its caller's retry with the same call id runs it."""
    h = cluster.handle
    client = tcp_client(cluster)
    call_id = os.urandom(8).hex()
    payload = os.urandom(3 * MB)
    body = _pickled(payload)
    raw = Raw(h.endpoint)
    try:
        raw.sock.sendall(raw.head("/echo/call", h.token, {BODY_FOLLOWS: str(len(body)), CALL_ID: call_id}))
        assert raw.read()[0] == 100
        raw.sock.sendall(body[:MB])  # a third of it, then the link drops
    finally:
        raw.close()
    assert client.call_sync("echo", None, (payload,), {}, call_id=call_id) == payload


def test_a_client_that_stops_sending_its_body_is_dropped(module_home: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TETHER_BODY_STALL_S", "1")  # read by the daemon this cluster starts
    with echo_cluster("follows-stall", "plain") as c:
        h = c.handle
        client = tcp_client(c)
        pid = client.sync.daemon_status()["pid"]
        before = _files_of(pid)
        raw = Raw(h.endpoint, timeout=20)
        try:
            raw.sock.sendall(raw.head("/echo/call", h.token, {BODY_FOLLOWS: str(4 * MB)}))
            assert raw.read()[0] == 100
            raw.sock.sendall(b"\x80" + b"s" * MB)
            assert raw.sock.recv(65536) == b""  # closed by the daemon: our own 20 s timeout would raise instead
        finally:
            raw.close()
        assert _settles(pid, before)
        assert client.call_sync("echo", None, (b"still",), {}, call_id=os.urandom(8).hex()) == b"still"


def test_without_the_daemons_word_or_when_turned_off_the_body_goes_the_ordinary_way(
        cluster: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[dict[str, str]] = []
    client = tcp_client(cluster)
    transport = client._sync
    assert transport is not None
    real = transport.send

    def spy(method: str, path: str, headers: dict[str, str], body: bytes = b"", **kw: Any) -> Any:
        sent.append(dict(headers))
        return real(method, path, headers, body, **kw)

    monkeypatch.setattr(transport, "send", spy)
    payload = os.urandom(2 * MB)
    assert client.call_sync("echo", None, (payload,), {}, call_id=os.urandom(8).hex()) == payload  # not known yet
    assert client.call_sync("echo", None, (payload,), {}, call_id=os.urandom(8).hex()) == payload
    assert [BODY_FOLLOWS in s for s in sent] == [False, True]
    monkeypatch.setattr(client_daemon, "FOLLOW_BODIES", False)
    off = tcp_client(cluster)
    assert off.call_sync("echo", None, (b"a",), {}, call_id=os.urandom(8).hex()) == b"a"
    assert not off._follow  # it never sends one


# -- the receiving side alone: aiohttp servers on the daemon's event loop (uvloop when installed, and the stdlib) --
async def _serve(tls: ssl.SSLContext | None, sizes: list[int]) -> list[bytes]:
    got: list[bytes] = []

    async def handler(request: web.Request) -> web.Response:
        body = await bodies.read_body(request, 2**30)  # the ordinary-way fallback (no room in /dev/shm)
        got.append(body)
        return web.Response(body=str(len(body)).encode())

    app = web.Application()
    app.router.add_post("/b", handler)
    answers = await serve_while(app, tls, lambda port: _send_all(port, tls is not None, sizes))
    assert answers == [str(n).encode() for n in sizes]
    return got


def _send_all(port: int, tls: bool, sizes: list[int]) -> list[bytes]:
    raw = Raw(f"{'https' if tls else 'http'}://127.0.0.1:{port}")
    out = []
    try:
        for n in sizes:
            raw.sock.sendall(raw.head("/b", None, {BODY_FOLLOWS: str(n)}))
            assert raw.read()[0] == 100
            raw.sock.sendall(bytes(range(256)) * (n // 256) + b"\x01" * (n % 256))
            out.append(raw.read()[2])
    finally:
        raw.close()
    return out


@pytest.mark.parametrize("loop", ["default", "asyncio"])
@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_a_body_that_follows_arrives_whole_on_either_event_loop(loop: str, tls: bool, tmp_path: Any,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if loop == "asyncio":
        monkeypatch.setenv("TETHER_LOOP", "asyncio")
    context = self_signed(tmp_path) if tls else None
    sizes = [3 * MB + 5, 1, 9 * MB]
    got = run(_serve(context, sizes))
    assert [len(b) for b in got] == sizes
    assert all(b == bytes(range(256)) * (n // 256) + b"\x01" * (n % 256) for b, n in zip(got, sizes, strict=True))
