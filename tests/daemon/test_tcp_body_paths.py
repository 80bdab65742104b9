"""How the daemon sends a big result in a ``/dev/shm`` file to a client that is not on this host
(``tether.daemon.bodies.ShmBody``): by ``sendfile`` over a plain socket (the file's pages go to the socket; nothing
passes through the daemon's memory), from a mapping in slices over TLS (the TLS layer must see the bytes), and, for
a result pool's file that the daemon keeps mapped, by writing that mapping to the plain socket. Real
aiohttp servers on real sockets, on the daemon's own event loop (uvloop when installed, and the stdlib loop); the
client checks every byte and the keep-alive connection serves the next request."""

from __future__ import annotations

import os
import socket
import ssl
from pathlib import Path

import pytest
from aiohttp import web

from tests.daemon.aiohttp_sites import self_signed, serve_while
from tether.daemon import bodies
from tether.daemon.eventloop import run
from tether.daemon.result_pool import ResultPool
from tether.protocol.shm import SHM_DIR, new_shm_file, unlink_quietly

pytestmark = pytest.mark.skipif(SHM_DIR is None, reason="needs a writable /dev/shm")

MiB = 1024 * 1024
HEAD = b"frame-header"


async def _serve_twice(payload_path: str, size: int, tls: ssl.SSLContext | None,
                       kept: memoryview | None = None) -> tuple[list[str], list[bytes]]:
    how: list[str] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse()
        stream.content_length = len(HEAD) + size
        await stream.prepare(request)
        await stream.write(HEAD)
        how.append(await bodies.ShmBody(payload_path, size, kept).send(request, stream))
        await stream.write_eof()
        return stream

    app = web.Application()
    app.router.add_get("/r", handler)
    got = await serve_while(app, tls, lambda port: _get_twice(port, tls is not None))
    return how, got


def _get_twice(port: int, tls: bool) -> list[bytes]:
    """Two GETs on one keep-alive connection; each response's body."""
    sock: socket.socket = socket.create_connection(("127.0.0.1", port), timeout=30)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    out = []
    with sock, sock.makefile("rb") as f:
        for _ in range(2):
            sock.sendall(b"GET /r HTTP/1.1\r\nHost: x\r\n\r\n")
            length = None
            while (line := f.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            assert length is not None
            out.append(f.read(length))
    return out


@pytest.fixture()
def result_file():
    data = os.urandom(12 * MiB + 123)
    f, path = new_shm_file()
    with f:
        f.write(data)
    yield path, data
    unlink_quietly(path)


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_plain_tcp_sends_the_file_by_sendfile_and_tls_from_a_mapping(result_file, tmp_path: Path, monkeypatch,
                                                                     loop: str) -> None:
    monkeypatch.setenv("TETHER_LOOP", loop)
    path, data = result_file
    how, got = run(_serve_twice(path, len(data), None))
    assert how == ["sendfile", "sendfile"]
    assert got == [HEAD + data, HEAD + data]
    how, got = run(_serve_twice(path, len(data), self_signed(tmp_path)))
    assert how == ["mapped", "mapped"]
    assert got == [HEAD + data, HEAD + data]


@pytest.mark.parametrize("loop", ["auto", "asyncio"])
def test_a_pool_file_is_written_from_the_daemons_kept_mapping(result_file, tmp_path: Path, monkeypatch,
                                                              loop: str) -> None:
    monkeypatch.setenv("TETHER_LOOP", loop)
    path, data = result_file
    pool = ResultPool()
    pool.lent.add(path)  # as if taken for a call
    kept = pool.view(path, len(data))
    assert kept is not None and bytes(kept[:64]) == data[:64]
    how, got = run(_serve_twice(path, len(data), None, kept))
    assert how == ["written", "written"]
    assert got == [HEAD + data, HEAD + data]
    tls = self_signed(tmp_path)
    how, got = run(_serve_twice(path, len(data), tls, pool.view(path, len(data))))
    assert how == ["mapped", "mapped"]
    assert got == [HEAD + data, HEAD + data]
