"""A lean HTTP/1.1 transport for the call path: one write per request, pooled keep-alive connections.

aiohttp's client spends ~0.2 ms of CPU per request here (three sends, a session object per request); calls to a
plain-HTTP daemon (TCP or unix socket) go through this instead. TLS endpoints and every other route keep aiohttp.
Any error closes the connection; callers see ``ConnectionError`` / ``asyncio.IncompleteReadError`` / ``TimeoutError``.
"""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from urllib.parse import urlsplit

__all__ = ["Response", "close_pools", "encode_head", "parse_status_and_headers", "request"]

_MAX_IDLE = 64
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[str, str], list[_Conn]]] = (
    weakref.WeakKeyDictionary())


@dataclass
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    def close(self) -> None:
        self.writer.close()


@dataclass
class Response:
    """A response whose body is read with :meth:`readexactly` / :meth:`read` (de-chunked as needed)."""

    status: int
    headers: dict[str, str]
    _conn: _Conn
    _key: tuple[str, str]
    _length: int | None = None
    _chunked: bool = False
    _chunk_left: int = 0
    _done: bool = False
    _buf: bytearray = field(default_factory=bytearray)
    _released: bool = False

    async def _fill(self, n: int) -> bool:
        """Make ``n`` body bytes available in the buffer; False at the end of the body."""
        r = self._conn.reader
        while len(self._buf) < n:
            if self._done:
                return False
            if not self._chunked:
                assert self._length is not None
                want = min(self._length, max(n - len(self._buf), 65536))
                if want == 0:
                    self._done = True
                    continue
                data = await r.readexactly(want) if want <= n - len(self._buf) else await r.read(want)
                if not data:
                    raise asyncio.IncompleteReadError(b"", self._length)
                self._length -= len(data)
                self._buf += data
                if self._length == 0:
                    self._done = True
                continue
            if self._chunk_left == 0:
                size = int((await r.readuntil(b"\r\n")).split(b";", 1)[0], 16)
                if size == 0:
                    await r.readuntil(b"\r\n")  # no trailers are sent
                    self._done = True
                    continue
                self._chunk_left = size
            take = min(self._chunk_left, max(n - len(self._buf), 1))
            data = await r.readexactly(take)
            self._chunk_left -= take
            self._buf += data
            if self._chunk_left == 0:
                await r.readexactly(2)
        return True

    async def readexactly(self, n: int) -> bytes | None:
        """``n`` body bytes, or None at a clean end of the body."""
        if not await self._fill(n):
            if self._buf:
                raise asyncio.IncompleteReadError(bytes(self._buf), n)
            return None
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def read(self) -> bytes:
        """The rest of the body."""
        if not self._chunked and not self._buf and not self._done and self._length:  # one read, no buffer
            data = await self._conn.reader.readexactly(self._length)
            self._length = 0
            self._done = True
            return data
        while await self._fill(len(self._buf) + 65536):
            pass
        out = bytes(self._buf)
        self._buf.clear()
        return out

    def release(self) -> None:
        """Return the connection to the pool when the body was read to its end, else close it."""
        if self._released:
            return
        self._released = True
        pool = _pools.get(asyncio.get_running_loop(), {}).setdefault(self._key, [])
        if self._done and not self._buf and len(pool) < _MAX_IDLE and self.headers.get("connection") != "close":
            pool.append(self._conn)
        else:
            self._conn.close()

    def close(self) -> None:
        """Close the connection unless :meth:`release` already handed it back (safe in a ``finally``)."""
        if not self._released:
            self._released = True
            self._conn.close()


_hosts: dict[str, str] = {}


def encode_head(endpoint: str, method: str, path: str, headers: dict[str, str], body_length: int) -> bytes:
    """The request line and headers of one HTTP/1.1 request, ready to send."""
    host = _hosts.get(endpoint)
    if host is None:
        host = _hosts[endpoint] = urlsplit(endpoint).netloc or "localhost"
    head = [f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {body_length}\r\n"]
    head += [f"{k}: {v}\r\n" for k, v in headers.items()]
    head.append("\r\n")
    return "".join(head).encode("latin-1")


def parse_status_and_headers(head: bytes) -> tuple[int, dict[str, str]]:
    """The status code and (lower-cased) headers of a response head (up to and including the blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def _connect(endpoint: str, unix_socket: str | None) -> _Conn:
    if unix_socket:
        reader, writer = await asyncio.open_unix_connection(unix_socket, limit=2**22)
    else:
        u = urlsplit(endpoint)
        reader, writer = await asyncio.open_connection(u.hostname, u.port or 80, limit=2**22)
    return _Conn(reader, writer)


async def request(endpoint: str, unix_socket: str | None, method: str, path: str, headers: dict[str, str],
                  body: bytes, *, connect_timeout: float) -> Response:
    """Send one request on a pooled connection (a fresh one if the pooled one turns out dead) and read its head."""
    key = (endpoint, unix_socket or "")
    pool = _pools.setdefault(asyncio.get_running_loop(), {}).setdefault(key, [])
    data = encode_head(endpoint, method, path, headers, len(body))
    for attempt in (0, 1):
        reused = bool(pool) and attempt == 0
        conn = pool.pop() if reused else await asyncio.wait_for(_connect(endpoint, unix_socket), connect_timeout)
        try:
            conn.writer.writelines([data, body] if body else [data])
            head = await conn.reader.readuntil(b"\r\n\r\n")
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            conn.close()
            if reused:  # the server closed an idle keep-alive connection: once more on a fresh one
                continue
            raise
        except BaseException:
            conn.close()
            raise
        try:
            status, hdrs = parse_status_and_headers(head)
        except BaseException:
            conn.close()
            raise
        resp = Response(status, hdrs, conn, key)
        if "content-length" in hdrs:
            resp._length = int(hdrs["content-length"])
            resp._done = resp._length == 0
        elif hdrs.get("transfer-encoding", "").lower() == "chunked":
            resp._chunked = True
        else:
            conn.close()
            raise ConnectionError("response with neither Content-Length nor chunked encoding")
        return resp
    raise ConnectionError("unreachable")  # pragma: no cover - the loop returns or raises


async def close_pools() -> None:
    """Close the idle connections of the running loop."""
    for pool in (_pools.pop(asyncio.get_running_loop(), None) or {}).values():
        for conn in pool:
            conn.close()
