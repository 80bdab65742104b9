"""The blocking and asyncio transports (and aiohttp's, for TLS) over real sockets: what each way a link can fail
is mapped to, stale pooled connections replaced once, pinned TLS, and the health probe."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.client.servers import free_port, read_request, response, serve
from tether.client import Dropped, Unreachable, probe_health
from tether.client.sessions import AiohttpTransport
from tether.client.syncwire import SyncTransport
from tether.client.wire import AsyncTransport
from tether.protocol.frames import client_frame
from tether.protocol.tls import fingerprint

FRAMES = client_frame(ord("L"), b'{"text": "x"}') + client_frame(ord("R"), b"result")


def _sync(endpoint: str, **kw: Any) -> tuple[int, list[tuple[int, bytes]]]:
    resp = SyncTransport(endpoint, **kw).send("GET", "/x", {})
    try:
        frames = []
        while (frame := resp.next_frame()) is not None:
            frames.append(tuple(frame))
        return resp.status, frames
    finally:
        resp.close()


def _async(endpoint: str, transport: Any = None) -> tuple[int, list[tuple[int, bytes]]]:
    async def go() -> tuple[int, list[tuple[int, bytes]]]:
        resp = await (transport or AsyncTransport(endpoint)).asend("GET", "/x", {})
        try:
            frames = []
            while (frame := await resp.anext_frame()) is not None:
                frames.append(tuple(frame))
            return resp.status, frames
        finally:
            resp.close()

    return asyncio.run(go())


def _keep_alive(chunked: bool) -> Any:
    """Answers every request on a connection with FRAMES, until the client goes."""
    def script(conn: socket.socket, n: int) -> None:
        while read_request(conn):
            conn.sendall(response(200, FRAMES, chunked=chunked))
    return script


@pytest.mark.parametrize("chunked", [False, True])
def test_both_transports_read_frames_and_reuse_the_connection(chunked: bool):
    connections: list[int] = []

    def script(conn: socket.socket, n: int) -> None:
        connections.append(n)
        _keep_alive(chunked)(conn, n)

    with serve(script) as endpoint:
        want = (200, [(ord("L"), b'{"text": "x"}'), (ord("R"), b"result")])
        assert _sync(endpoint) == want and _sync(endpoint) == want
        assert len(connections) == 1  # pooled

        async def twice() -> list[Any]:
            t = AsyncTransport(endpoint)
            out = []
            for _ in range(2):
                resp = await t.asend("GET", "/x", {})
                out.append(await resp.aread())
                resp.close()
            return out

        assert asyncio.run(twice()) == [FRAMES, FRAMES] and len(connections) == 2


def test_nothing_listening_is_unreachable():
    endpoint = f"http://127.0.0.1:{free_port()}"
    for attempt in (lambda: _sync(endpoint), lambda: _async(endpoint)):
        with pytest.raises(Unreachable) as info:
            attempt()
        assert info.value.details["unreachable"] is True and isinstance(info.value, tether.ClusterUnavailable)
    with pytest.raises(Unreachable):
        SyncTransport("http://x", unix_socket="/nonexistent/tether.sock").send("GET", "/x", {})


@pytest.mark.parametrize("broken", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
                                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                                    b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"])
def test_a_link_that_breaks_after_the_request_is_dropped(broken: bytes):
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(broken)

    with serve(script) as endpoint:
        for attempt in (lambda: _sync(endpoint), lambda: _async(endpoint)):
            with pytest.raises(Dropped) as info:
                attempt()
            assert type(info.value) is Dropped and info.value.details["unreachable"] is False


def test_a_silent_daemon_times_out_as_dropped():
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        time.sleep(3)

    with serve(script) as endpoint:
        started = time.monotonic()
        with pytest.raises(Dropped, match="no answer"):
            SyncTransport(endpoint, read_timeout=0.3).send("GET", "/x", {})
        with pytest.raises(Dropped, match="no answer"):
            _async(endpoint, AsyncTransport(endpoint, read_timeout=0.3))
        assert time.monotonic() - started < 2.5


def test_a_stale_pooled_connection_is_replaced_once():
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(response(200, FRAMES))  # then closes: the pooled connection is dead

    with serve(script) as endpoint:
        for _ in range(3):
            assert _sync(endpoint)[0] == 200

        async def thrice() -> list[int]:
            t, out = AsyncTransport(endpoint), []
            for _ in range(3):
                resp = await t.asend("GET", "/x", {})
                await resp.aread()
                out.append(resp.status)
                await asyncio.sleep(0.05)  # the server's close arrives
            return out

        assert asyncio.run(thrice()) == [200, 200, 200]


def test_pinned_tls_refuses_another_certificate(tmp_path: Path):
    with serve(_keep_alive(False), tls_dir=tmp_path) as endpoint:
        pin = fingerprint(tmp_path / "cert.pem")
        assert _sync(endpoint, tls_fingerprint=pin)[0] == 200
        assert _async(endpoint, AiohttpTransport(endpoint, tls_fingerprint=pin))[0] == 200
        with pytest.raises(tether.AuthError, match="pinned"):
            _sync(endpoint, tls_fingerprint="ab" * 32)
        with pytest.raises(tether.AuthError, match="pinned"):
            _async(endpoint, AiohttpTransport(endpoint, tls_fingerprint="ab" * 32))
        with pytest.raises(tether.AuthError, match="refused"):  # self-signed, nothing pinned: not trusted
            _sync(endpoint)


def test_the_health_probe(tmp_path: Path):
    seen: list[bytes] = []

    def script(conn: socket.socket, n: int) -> None:
        while request := read_request(conn):
            seen.append(request)
            conn.sendall(response(200, b'{"status": "ok"}'))

    with serve(script) as endpoint:
        assert probe_health(endpoint, token="tok") == {"status": "ok"}
        assert b"Authorization: Bearer tok" in seen[-1]
    with serve(script, tls_dir=tmp_path) as endpoint:
        assert probe_health(endpoint, token="tok") == {"status": "ok"}  # unpinned: not checked, no token sent
        assert b"Authorization" not in seen[-1]
        with pytest.raises(tether.AuthError):
            probe_health(endpoint, tls_fingerprint="ab" * 32)
    assert probe_health(f"http://127.0.0.1:{free_port()}", timeout=0.5) is None

    def not_ok(conn: socket.socket, n: int) -> None:
        read_request(conn)
        conn.sendall(response(503, b"{}"))

    with serve(not_ok) as endpoint:
        assert probe_health(endpoint) is None


BIG = client_frame(ord("L"), b'{"text": "x"}') + client_frame(ord("R"), bytes(range(256)) * (3 * 4096 + 7))


def _slowly(conn: socket.socket, data: bytes, piece: int = 256 * 1024, pause: float = 0.005) -> None:
    for off in range(0, len(data), piece):
        conn.sendall(data[off:off + piece])
        time.sleep(pause)


@pytest.mark.parametrize("tls", [False, True])
def test_the_async_transport_receives_a_big_body_whole_and_keeps_the_connection(tmp_path: Path, tls: bool):
    """A body of 1 MiB or more is received straight into a buffer of its own (the transport's protocol is swapped
    for the body's length): every byte arrives in order, in pieces or at once, framed or whole, and the connection
    carries the next request afterwards (the stream protocol was given back)."""
    connections: list[int] = []

    def script(conn: socket.socket, n: int) -> None:
        connections.append(n)
        while read_request(conn):
            _slowly(conn, response(200, BIG))

    with serve(script, tls_dir=tmp_path if tls else None) as endpoint:
        pin = fingerprint(tmp_path / "cert.pem") if tls else None

        async def go() -> list[Any]:
            t = AsyncTransport(endpoint, tls_fingerprint=pin)
            out: list[Any] = []
            for framed in (True, False, True):
                resp = await t.asend("GET", "/x", {})
                if framed:
                    frames = []
                    while (frame := await resp.anext_frame()) is not None:
                        frames.append((frame[0], bytes(frame[1])))
                    out.append(frames)
                else:
                    out.append(bytes(await resp.aread()))
                resp.close()
            return out

        framed, whole, again = asyncio.run(go())
        want = [(ord("L"), b'{"text": "x"}'), (ord("R"), bytes(range(256)) * (3 * 4096 + 7))]
        assert framed == want and again == want and whole == BIG
        assert len(connections) == 1  # one connection carried all three


@pytest.mark.parametrize("how", ["cut", "silent"])
def test_a_big_body_cut_short_or_stalled_is_dropped(how: str):
    """The daemon goes away (or says nothing) halfway through a big body: a typed Dropped, not a hang."""
    def script(conn: socket.socket, n: int) -> None:
        read_request(conn)
        whole = response(200, BIG)
        conn.sendall(whole[: len(whole) // 2])
        if how == "silent":
            time.sleep(3)

    with serve(script) as endpoint:
        with pytest.raises(Dropped) as info:
            _async(endpoint, AsyncTransport(endpoint, read_timeout=0.5))
        assert type(info.value) is Dropped and info.value.details["unreachable"] is False
        if how == "silent":  # the read deadline fired (the server would only close the connection after 3 s)
            assert "no answer" in str(info.value)
