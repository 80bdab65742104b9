"""The lean asyncio transport (TCP, the local unix socket, or TLS pinned by the certificate's fingerprint): one
write per request, keep-alive connections pooled per event loop, HTTP parsed by :mod:`tether.client.http11`.

aiohttp's client spends ~0.2 ms of CPU per request here (three sends, a session object per request); every async
request to a plain-HTTP daemon goes through this instead. A read deadline costs no timer per call: one timer per
request checks, when it fires, whether anything was read since.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlsplit

from tether.client import http11, offloop
from tether.client.payloads import Pieces
from tether.client.transport import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    Dropped,
    certificate_refused,
    dropped,
    fingerprint_mismatch,
    is_certificate_error,
    timed_out,
    unreachable,
)
from tether.protocol.frames import Frame
from tether.protocol.headers import BODY_FOLLOWS
from tether.protocol.receive import ReceiveInto
from tether.protocol.shm import SHM_THRESHOLD, keep_freed_memory

__all__ = ["AsyncTransport", "Response", "add_closer", "close_all", "close_pools"]

_MAX_IDLE = 64
_Pools = dict[tuple[str, str], list["_Conn"]]
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pools] = weakref.WeakKeyDictionary()


class _Conn:
    """One keep-alive connection, with the read deadline of the request it carries."""

    __slots__ = ("expired", "last_read", "reader", "timeout", "timer", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.timer: asyncio.TimerHandle | None = None
        self.timeout = READ_TIMEOUT
        self.last_read = 0.0
        self.expired = False

    def arm(self, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        """Abort the connection once ``timeout`` seconds pass without a read (see :meth:`read`)."""
        self.timeout = timeout
        self.last_read = loop.time()
        self.timer = loop.call_at(self.last_read + timeout, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        due = self.last_read + self.timeout
        if loop.time() < due:
            self.timer = loop.call_at(due, self._check, loop)
        else:
            self.timer = None
            self.expired = True
            self.writer.transport.abort()  # the pending read fails; the caller sees timed_out()

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def close(self) -> None:
        self.disarm()
        self.writer.close()


class Response:
    """A response of :class:`AsyncTransport`: read it whole (:meth:`aread`) or frame by frame
    (:meth:`anext_frame`). The connection goes back to the pool as soon as the body was read to its end."""

    __slots__ = ("_body", "_conn", "_endpoint", "_pending", "_pool", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], conn: _Conn, endpoint: str, pool: list[_Conn]) -> None:
        self.status = status
        self.headers = headers
        self._conn: _Conn | None = conn
        self._endpoint = endpoint
        self._pool = pool
        self._body = http11.BodyReader(headers)
        self._pending: offloop.OffLoopPayload | None = None  # handed out by anext_frame, not fed yet
        if (self._body.length or 0) >= SHM_THRESHOLD:
            keep_freed_memory()  # a big payload over the socket: reuse freed pages for the next one
        if self._body.done:
            self._finish()

    async def _more(self, framed: bool, off_loop: bool = False) -> None:
        """Read the next piece of the body into :attr:`_body` (every failure closes the connection).
        ``off_loop``: a big pickled frame is handed out as an :class:`~tether.client.offloop.OffLoopPayload`."""
        conn, body = self._conn, self._body
        assert conn is not None
        try:
            if (off_loop and framed and (body.length or 0) >= SHM_THRESHOLD and body.at_boundary
                    and offloop.plain(conn.writer.transport) and await self._stream(conn)):
                return
            n = body.want()
            if body.length is not None and n >= SHM_THRESHOLD:  # a big body of known length, whole
                data: bytes | bytearray = await _read_into(conn, n)
            else:
                data = await (conn.reader.readexactly(n) if body.length is not None else conn.reader.read(n))
            if not data:
                raise ConnectionResetError("the daemon closed the connection mid-response")
            body.feed(data, framed)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            self.close()
            raise timed_out(self._endpoint, conn.timeout) if conn.expired else dropped(self._endpoint, exc) from exc
        except BaseException:
            self.close()
            raise
        conn.last_read = asyncio.get_running_loop().time()
        if body.done:
            self._finish()

    async def aread(self) -> bytes:
        """The rest of the body."""
        while not self._body.done:
            await self._more(False)
        return self._body.take()

    async def anext_frame(self, off_loop: bool = False) -> Frame | None:
        """The body's next frame (heartbeats included), None at its end. ``off_loop``: a big pickled frame of a
        plain connection comes as an :class:`~tether.client.offloop.OffLoopPayload`, still in the socket: the
        caller hands it on with its ``feed`` before it asks for the next frame."""
        if self._pending is not None:  # its bytes are still in the socket, before the next frame's
            self.close()
            raise RuntimeError("an off-loop payload was not fed before the next frame was asked for")
        body = self._body
        while (frame := body.next_frame()) is None and not body.done:
            await self._more(True, off_loop)
        return frame

    async def _stream(self, conn: _Conn) -> bool:
        """At a frame's start: read its head; a big pickled frame waits for :meth:`anext_frame` as an
        :class:`~tether.client.offloop.OffLoopPayload`, a small one is read whole and fed to the body; False when
        the frame is bigger than the body (the ordinary way then says what is wrong)."""
        body = self._body
        head = await conn.reader.readexactly(http11.FRAME_HEAD.size)
        if (frame := body.streamed_head(head, SHM_THRESHOLD)) is None:
            return False
        kind, size, streamed = frame
        if streamed:
            loop = asyncio.get_running_loop()

            def on_io() -> None:  # (in the transfer's thread) the read deadline's bookkeeping
                conn.last_read = loop.time()

            payload = offloop.OffLoopPayload(
                conn.reader, conn.writer.transport, size, conn.timeout,  # type: ignore[arg-type]
                on_io=on_io, on_done=self._streamed_done,
                failed=lambda exc: timed_out(self._endpoint, conn.timeout) if isinstance(exc, TimeoutError)
                else dropped(self._endpoint, exc))
            body.skip_frame(Frame(kind, payload), len(head) + size)  # type: ignore[arg-type]
            self._pending = payload
            return True
        body.feed(head + await conn.reader.readexactly(size), True)
        if body.done:
            self._finish()
        return True

    def _streamed_done(self, whole: bool) -> None:
        """An off-loop payload was handed on: the response goes on, or its connection closes when the payload
        was not read whole (the next byte on it is mid-payload)."""
        self._pending = None
        if not whole:
            self.close()
        elif self._body.done:
            self._finish()

    def _finish(self) -> None:
        """The body is read: the connection back to the pool (or closed when it cannot carry another request)."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        conn.disarm()
        if (self._body.reusable and len(self._pool) < _MAX_IDLE and not conn.reader.at_eof()
                and self.headers.get("connection") != "close"):
            self._pool.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close the connection unless the body was read and it went back to the pool (safe in a ``finally``)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class AsyncTransport:
    """Requests to one daemon over pooled asyncio connections: ``http://`` (TCP, or ``unix_socket``) or
    ``https://`` (pinned by ``tls_fingerprint``, hex SHA-256 of the certificate's DER bytes; without one, the
    certificate must verify unless ``verify=False``)."""

    def __init__(self, endpoint: str, unix_socket: str | None = None, *, tls_fingerprint: str | None = None,
                 verify: bool = True, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.unix_socket = unix_socket
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._pin = tls_fingerprint.replace(":", "").lower() if tls_fingerprint else None
        self._ssl: ssl.SSLContext | None = None
        if self.endpoint.startswith("https://"):
            self._ssl = ssl.create_default_context()
            if self._pin is not None or not verify:  # a pinned self-signed certificate needs no CA
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self._key = (f"{self.endpoint}#{self._pin or ''}", unix_socket or "")

    def _pool(self) -> list[_Conn]:
        loop = asyncio.get_running_loop()
        pools = _pools.get(loop)
        if pools is None:
            pools = _pools[loop] = {}
            _close_at_loop_shutdown(loop, pools)
        pool = pools.get(self._key)
        if pool is None:
            pool = pools[self._key] = []
        return pool

    async def _connect(self, timeout: float) -> _Conn:
        u = urlsplit(self.endpoint)
        host, port = u.hostname or "localhost", u.port or (443 if self._ssl is not None else 80)
        try:
            if self.unix_socket:
                coro = asyncio.open_unix_connection(self.unix_socket, limit=2**22, ssl=self._ssl,
                                                    server_hostname=host if self._ssl is not None else None)
            else:
                coro = asyncio.open_connection(host, port, limit=2**22, ssl=self._ssl,
                                               server_hostname=host if self._ssl is not None else None)
            reader, writer = await asyncio.wait_for(coro, timeout)
        except (OSError, TimeoutError) as exc:
            if is_certificate_error(exc):
                raise certificate_refused(self.endpoint, exc) from None
            raise unreachable(self.endpoint, exc) from exc
        if self._pin is not None:
            tls = writer.get_extra_info("ssl_object")
            got = hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest() if tls is not None else ""
            if got != self._pin:
                writer.close()
                raise fingerprint_mismatch(f"{host}:{port}", got, self._pin)
        return _Conn(reader, writer)

    async def asend(self, method: str, path: str, headers: dict[str, str], body: bytes | Pieces = b"", *,
                    timeout: float | None = None) -> Response:
        """Send one request on a pooled connection (a fresh one if the pooled one turns out dead) and read its
        head; ``timeout``: seconds without a byte from the daemon (default ``read_timeout``). A request with a
        :data:`~tether.protocol.headers.BODY_FOLLOWS` header sends its body only after the daemon's ``100
        Continue`` (:meth:`tether.client.syncwire.SyncTransport.send`)."""
        pool = self._pool()
        loop = asyncio.get_running_loop()
        wait = timeout or self.read_timeout
        follows = BODY_FOLLOWS in headers
        data = http11.encode_head(self.endpoint, method, path, headers, 0 if follows else len(body))
        if len(body) >= SHM_THRESHOLD:
            keep_freed_memory()  # see Response
        for attempt in (0, 1):
            reused = bool(pool) and attempt == 0
            conn = pool.pop() if reused else await self._connect(min(self.connect_timeout, wait))
            conn.arm(loop, wait)
            try:
                if follows:
                    conn.writer.write(data)
                    status, hdrs = await _read_head(conn, loop)
                    if status != 100:  # refused before the body: that is the answer
                        return Response(status, hdrs, conn, self.endpoint, pool)
                    await self._send_body(conn, b"", body)
                elif len(body) >= SHM_THRESHOLD:
                    await self._send_body(conn, data, body)
                else:
                    conn.writer.writelines([data, bytes(body)] if body else [data])
                status, hdrs = await _read_head(conn, loop)
                return Response(status, hdrs, conn, self.endpoint, pool)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                conn.close()
                if reused and not conn.expired and not isinstance(exc, ValueError):
                    continue  # the daemon closed an idle keep-alive connection: once more on a fresh one
                raise timed_out(self.endpoint, wait) if conn.expired else dropped(self.endpoint, exc) from exc
            except BaseException:
                conn.close()
                raise
        raise Dropped("unreachable")  # pragma: no cover - the loop returns or raises

    async def _send_body(self, conn: _Conn, head: bytes, body: bytes | Pieces) -> None:
        """A big body after ``head``: from the transfer's thread on a plain connection (no copy of it, see
        :mod:`tether.client.offloop`), in slices through the transport over TLS."""
        if not offloop.plain(conn.writer.transport):
            await _send_big(conn.writer, head, body)
            return
        if head:
            conn.writer.write(head)
        loop = asyncio.get_running_loop()

        def on_io() -> None:  # (in the transfer's thread) a send that moves is not a silent daemon
            conn.last_read = loop.time()

        await offloop.send_off_loop(conn.writer, body.parts if isinstance(body, Pieces) else (body,),
                                    conn.timeout, on_io)

    async def aclose(self) -> None:
        for conn in (_pools.get(asyncio.get_running_loop()) or {}).pop(self._key, []):
            conn.close()


_SLICE = 1024 * 1024


async def _read_into(conn: _Conn, n: int) -> bytearray:
    """The next ``n`` bytes of ``conn``, received into one buffer of their own: what the stream reader holds
    already, then the rest by :class:`~tether.protocol.receive.ReceiveInto` (one copy of each byte here;
    ``readexactly`` makes three)."""
    reader = conn.reader
    if reader.exception() is not None:
        raise reader.exception()  # type: ignore[misc]
    buf = bytearray(n)
    held: bytearray = reader._buffer  # type: ignore[attr-defined]  # asyncio.StreamReader's own buffer
    k = min(len(held), n)
    buf[:k] = held[:k]
    del held[:k]
    if k == n:
        return buf
    if reader.at_eof():
        raise asyncio.IncompleteReadError(bytes(buf[:k]), n)
    loop = asyncio.get_running_loop()

    def on_read() -> None:
        conn.last_read = loop.time()

    transport: asyncio.Transport = conn.writer.transport  # type: ignore[assignment]
    into = ReceiveInto(transport, memoryview(buf), k, on_read=on_read,
                       closed="the daemon closed the connection mid-response")
    into.start()
    if getattr(reader, "_paused", False):  # the reader had paused the transport (its buffer was full)
        reader._paused = False  # type: ignore[attr-defined]
        transport.resume_reading()
    try:
        await into.done
    except BaseException:
        into.give_back()
        raise
    return buf


async def _read_head(conn: _Conn, loop: asyncio.AbstractEventLoop) -> tuple[int, dict[str, str]]:
    """The status and headers of the next response head on ``conn``."""
    head = await conn.reader.readuntil(b"\r\n\r\n")
    conn.last_read = loop.time()
    return http11.parse_status_and_headers(head)


async def _send_big(writer: asyncio.StreamWriter, head: bytes, body: bytes | Pieces) -> None:
    """``head`` then ``body`` (each of its pieces) in 1 MiB slices, each sent from the body itself once the last
    is out: not joined (``writelines`` joins into a copy) and never buffered whole in the transport (it copies
    what the socket does not take at once)."""
    if head:
        writer.write(head)
    for part in body.parts if isinstance(body, Pieces) else (body,):
        view = memoryview(part)  # not released here: a TLS transport may still hold slices of it
        for off in range(0, len(view), _SLICE):
            await writer.drain()
            writer.write(view[off:off + _SLICE])
    await writer.drain()


async def close_pools() -> None:
    """Close the idle connections of the running loop."""
    for pool in (_pools.pop(asyncio.get_running_loop(), None) or {}).values():
        for conn in pool:
            conn.close()


_closers_of_others: list[Callable[[], Awaitable[None]]] = []


def add_closer(closer: Callable[[], Awaitable[None]]) -> None:
    """Have :func:`close_all` also run ``closer`` (another transport's pools: aiohttp's, once it is imported)."""
    _closers_of_others.append(closer)


async def close_all() -> None:
    """Close the connection pools of the running loop (this transport's, and those of :func:`add_closer`)."""
    await close_pools()
    for closer in list(_closers_of_others):
        await closer()


def _close_at_loop_shutdown(loop: asyncio.AbstractEventLoop, pools: _Pools) -> None:
    """Close ``pools`` when ``loop`` shuts its async generators down (``asyncio.run`` ends, a thread loop goes)."""
    async def closer() -> AsyncIterator[None]:
        try:
            while True:
                yield
        finally:
            for pool in pools.values():
                for conn in pool:
                    conn.close()
            pools.clear()

    async def start(agen: AsyncIterator[None]) -> None:
        await agen.__anext__()  # a started generator: loop.shutdown_asyncgens() runs its finally

    agen = closer()
    _closers[loop] = agen
    loop.create_task(start(agen))


_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncIterator[None]] = weakref.WeakKeyDictionary()
