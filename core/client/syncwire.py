"""The blocking transport for sync callers: plain sockets (TCP, the local unix socket, or TLS pinned by the
certificate's fingerprint), pooled keep-alive connections, no event loop; HTTP parsed by :mod:`tether.client.http11`.

A sync call (``radd(1, 2)``) sends its request and reads its frames with blocking socket I/O on the calling
thread: no loop iteration, task or future per call, and a thread waiting on the daemon holds no GIL. Idle
connections are shared by all threads of the process and dropped in a forked child.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from io import BufferedReader
from typing import Any
from urllib.parse import urlsplit

from tether.client import http11
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
from tether.errors import AuthError
from tether.protocol.frames import Frame
from tether.protocol.headers import BODY_FOLLOWS
from tether.protocol.shm import SHM_THRESHOLD, keep_freed_memory

__all__ = ["BlockingResponse", "StreamedPayload", "SyncTransport", "close_pools"]

_MAX_IDLE = 64
_pools: dict[tuple[str, str], list[_Conn]] = {}
_pools_lock = threading.Lock()


class _Conn:
    __slots__ = ("file", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file: BufferedReader = sock.makefile("rb", buffering=256 * 1024)  # type: ignore[assignment]

    def close(self) -> None:
        try:
            self.file.close()
        finally:
            self.sock.close()


class BlockingResponse:
    """A response of :class:`SyncTransport`: read it whole (:meth:`read`) or frame by frame (:meth:`next_frame`).
    The connection goes back to the pool as soon as the body was read to its end.

    A big pickled frame of a ``Content-Length`` body comes as a :class:`StreamedPayload`: its bytes stay in the
    socket until the unpickler reads them (``tether.client.payloads.loads``), so a big buffer in it is received
    straight into the object it becomes instead of into a body first and copied out of it."""

    __slots__ = ("_body", "_conn", "_streamed", "_transport", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], conn: _Conn, transport: SyncTransport) -> None:
        self.status = status
        self.headers = headers
        self._conn: _Conn | None = conn
        self._transport = transport
        self._streamed: StreamedPayload | None = None
        self._body = http11.BodyReader(headers)
        if (self._body.length or 0) >= SHM_THRESHOLD:
            keep_freed_memory()  # a big payload over the socket: reuse freed pages for the next one
        if self._body.done:
            self._finish()

    def _more(self, framed: bool) -> None:
        """Read the next piece of the body into :attr:`_body` (every failure closes the connection)."""
        conn, body = self._conn, self._body
        assert conn is not None
        try:
            if framed and (body.length or 0) >= SHM_THRESHOLD and body.at_boundary and self._stream(conn):
                return
            n = body.want()
            data = conn.file.read(n) if body.length is not None else conn.file.read1(n)
            if not data or (body.length is not None and len(data) != n):
                raise ConnectionResetError("the daemon closed the connection mid-response")
            body.feed(data, framed)
        except (OSError, ValueError) as exc:
            raise self._failed(exc) from exc
        except BaseException:
            self.close()
            raise
        if body.done:
            self._finish()

    def _stream(self, conn: _Conn) -> bool:
        """At a frame's start: read its head; a big pickled frame waits for :meth:`next_frame` as a
        :class:`StreamedPayload`, a small one (a log) is read whole and fed to the body; False when the frame
        is bigger than the body (the ordinary way then says what is wrong)."""
        body = self._body
        head = conn.file.read(http11.FRAME_HEAD.size)
        if len(head) != http11.FRAME_HEAD.size:
            raise ConnectionResetError("the daemon closed the connection mid-response")
        if (frame := body.streamed_head(head, SHM_THRESHOLD)) is None:
            return False
        kind, size, streamed = frame
        if streamed:
            self._streamed = StreamedPayload(self, conn, size)
            body.skip_frame(Frame(kind, self._streamed), len(head) + size)  # type: ignore[arg-type]
            return True
        payload = conn.file.read(size)
        if len(payload) != size:
            raise ConnectionResetError("the daemon closed the connection mid-response")
        body.feed(head + payload, True)
        if body.done:
            self._finish()
        return True

    def _failed(self, exc: OSError | ValueError) -> Dropped:
        """Close the connection after a failure while reading; the typed error to raise for ``exc``."""
        conn = self._conn
        self.close()
        if isinstance(exc, TimeoutError):
            return timed_out(self._transport.endpoint, (conn.sock.gettimeout() or 0) if conn is not None else 0)
        return dropped(self._transport.endpoint, exc)

    def _streamed_done(self) -> None:
        self._streamed = None
        if self._body.done:
            self._finish()

    def read(self) -> bytes:
        """The rest of the body."""
        while not self._body.done:
            self._more(False)
        return self._body.take()

    def next_frame(self) -> Frame | None:
        """The body's next frame (heartbeats included), None at its end. A :class:`StreamedPayload` handed out
        before is read to its end first (what its reader left of it is skipped)."""
        if self._streamed is not None:
            self._streamed.finish()
        body = self._body
        while (frame := body.next_frame()) is None and not body.done:
            self._more(True)
        return frame

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._body.reusable and self.headers.get("connection") != "close":
            with _pools_lock:
                pool = _pools.setdefault(self._transport.key, [])
                if len(pool) < _MAX_IDLE:
                    pool.append(conn)
                    return
        conn.close()

    def close(self) -> None:
        """Close the connection unless the body was read and it went back to the pool (safe in a ``finally``)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class StreamedPayload:
    """A big pickled frame's payload still in the socket: a file the unpickler reads (``read``, ``readinto``,
    ``readline``), never past the payload's end. :meth:`finish` skips what is left of it; once it is read whole,
    the response goes on (its connection back to the pool when the body ends there). A failure while reading
    closes the connection and raises the transport's typed error (a dropped link, a timeout)."""

    __slots__ = ("_conn", "_resp", "left", "size")

    def __init__(self, resp: BlockingResponse, conn: _Conn, size: int) -> None:
        self._resp = resp
        self._conn = conn
        self.size = size
        self.left = size

    def __len__(self) -> int:
        return self.size

    def _took(self, n: int) -> None:
        self.left -= n
        if not self.left:
            self._resp._streamed_done()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A failed read closes the connection and raises the transport's typed error instead."""
        try:
            yield
        except (OSError, ValueError) as exc:
            raise self._resp._failed(exc) from exc

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        with self._reading():
            data = self._conn.file.read(n)
            if len(data) != n:
                raise ConnectionResetError("the daemon closed the connection mid-result")
        self._took(n)
        return data

    def readinto(self, buf: Any) -> int:
        with memoryview(buf) as whole, whole.cast("B") as flat, self._reading():
            n = min(len(flat), self.left)
            got = 0
            while got < n:
                k = self._conn.file.readinto(flat[got:n])
                if not k:
                    raise ConnectionResetError("the daemon closed the connection mid-result")
                got += k
        self._took(n)
        return n

    def readline(self, limit: int = -1) -> bytes:
        limit = self.left if limit < 0 else min(limit, self.left)
        with self._reading():
            line = self._conn.file.readline(limit)
            if not line:
                raise ConnectionResetError("the daemon closed the connection mid-result")
        self._took(len(line))
        return line

    def finish(self) -> None:
        """Skip the rest of the payload (nothing when it was read whole)."""
        while self.left:
            self.read(min(self.left, 1 << 20))


class SyncTransport:
    """Requests to one daemon over pooled blocking sockets: ``http://`` (TCP, or ``unix_socket``) or ``https://``
    (pinned by ``tls_fingerprint``; without one, the certificate must verify unless ``verify=False``)."""

    def __init__(self, endpoint: str, unix_socket: str | None = None, *, tls_fingerprint: str | None = None,
                 verify: bool = True, connect_timeout: float = CONNECT_TIMEOUT,
                 read_timeout: float = READ_TIMEOUT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.unix_socket = unix_socket
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        u = urlsplit(self.endpoint)
        self._tls = u.scheme == "https"
        self._host = (u.hostname or "localhost", u.port or (443 if self._tls else 80))
        self._pin = tls_fingerprint.replace(":", "").lower() if tls_fingerprint else None
        self._ssl: ssl.SSLContext | None = None
        if self._tls:
            self._ssl = ssl.create_default_context()
            if self._pin is not None or not verify:  # a pinned self-signed certificate needs no CA
                self._ssl.check_hostname = False
                self._ssl.verify_mode = ssl.CERT_NONE
        self.key = (f"{self.endpoint}#{self._pin or ''}", unix_socket or "")

    def _connect(self, timeout: float) -> _Conn:
        try:
            if self.unix_socket:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(self.unix_socket)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._host, timeout=timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._ssl is not None:
                sock = self._wrap(sock)
        except AuthError:
            raise
        except OSError as exc:
            if is_certificate_error(exc):
                raise certificate_refused(self.endpoint, exc) from None
            raise unreachable(self.endpoint, exc) from exc
        return _Conn(sock)

    def _wrap(self, sock: socket.socket) -> socket.socket:
        assert self._ssl is not None
        try:
            tls = self._ssl.wrap_socket(sock, server_hostname=self._host[0])
        except BaseException:
            sock.close()
            raise
        if self._pin is not None:
            der = tls.getpeercert(binary_form=True) or b""
            got = hashlib.sha256(der).hexdigest()
            if got != self._pin:
                tls.close()
                raise fingerprint_mismatch(f"{self._host[0]}:{self._host[1]}", got, self._pin)
        return tls

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes | Pieces = b"", *,
             timeout: float | None = None) -> BlockingResponse:
        """Send one request on a pooled connection (a fresh one if the pooled one turns out dead) and read its
        head; ``timeout``: seconds without a byte from the daemon (default ``read_timeout``). With a
        :data:`~tether.protocol.headers.BODY_FOLLOWS` header the head goes alone (``Content-Length: 0``) and
        the body only after the daemon's ``100 Continue``; any other answer is the response (the body unsent)."""
        follows = BODY_FOLLOWS in headers
        data = http11.encode_head(self.endpoint, method, path, headers, 0 if follows else len(body))
        wait = timeout or self.read_timeout
        if len(body) >= SHM_THRESHOLD:
            keep_freed_memory()  # see BlockingResponse / Response
        for attempt in (0, 1):
            conn = None
            if attempt == 0:
                with _pools_lock:
                    pool = _pools.get(self.key)
                    conn = pool.pop() if pool else None
            reused = conn is not None
            if conn is None:
                conn = self._connect(min(self.connect_timeout, wait))
            try:
                conn.sock.settimeout(wait)
                if follows or (body and len(body) > 65536):
                    conn.sock.sendall(data)
                    if follows:  # the body only after the daemon's 100 Continue
                        status, hdrs = _read_head(conn)
                        if status != 100:
                            return BlockingResponse(status, hdrs, conn, self)
                    _send_body(conn.sock, body)
                else:
                    conn.sock.sendall(data + bytes(body))
                status, hdrs = _read_head(conn)
                return BlockingResponse(status, hdrs, conn, self)
            except TimeoutError as exc:
                conn.close()
                raise timed_out(self.endpoint, wait) from exc
            except (OSError, ValueError) as exc:
                conn.close()
                if reused and not isinstance(exc, ValueError):
                    continue  # the daemon (or the network) closed an idle keep-alive connection: once more, fresh
                raise dropped(self.endpoint, exc) from exc
            except BaseException:
                conn.close()
                raise
        raise Dropped("unreachable")  # pragma: no cover - the loop returns or raises

    def close(self) -> None:
        with _pools_lock:
            pool = _pools.pop(self.key, [])
        for conn in pool:
            conn.close()


def _send_body(sock: socket.socket, body: bytes | Pieces) -> None:
    if isinstance(body, Pieces):
        for part in body.parts:
            sock.sendall(part)
    else:
        sock.sendall(body)


def _read_head(conn: _Conn) -> tuple[int, dict[str, str]]:
    """The status and headers of the next response head on ``conn``."""
    status_line = conn.file.readline(65536)
    if not status_line:
        raise ConnectionResetError("the daemon closed the connection")
    lines = [status_line]
    while lines[-1] != b"\r\n":
        line = conn.file.readline(65536)
        if not line:
            raise ConnectionResetError("the daemon closed the connection mid-head")
        lines.append(line)
    return http11.parse_status_and_headers(b"".join(lines))


def close_pools() -> None:
    """Close every idle connection (at exit, or in tests)."""
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        for conn in pool:
            conn.close()


def _after_fork_in_child() -> None:
    """A forked child (an Airflow task runner, say) must not share its parent's connections."""
    global _pools_lock
    _pools_lock = threading.Lock()
    for pool in _pools.values():
        for conn in pool:
            conn.close()
    _pools.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(close_pools)
