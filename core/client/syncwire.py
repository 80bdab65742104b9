"""The blocking HTTP/1.1 transport for sync callers: plain sockets, pooled keep-alive connections, no event loop.

A sync call (``radd(1, 2)``) on a plain-HTTP daemon sends its request and reads its frames with blocking socket
I/O on the calling thread: no loop iteration, task or future per call, and a thread waiting on the daemon holds
no GIL. Idle connections are shared by all threads of the process. Any error closes the connection; callers see
``ConnectionError`` / ``OSError`` / ``TimeoutError`` (``socket.timeout``).
"""

from __future__ import annotations

import atexit
import os
import socket
import threading
from collections.abc import Iterator
from io import BufferedReader

from tether.client.wire import encode_head, parse_status_and_headers
from tether.protocol.frames import CLIENT_HDR_SIZE, parse_client_header, split_client_frames

__all__ = ["BlockingResponse", "close_pools", "request"]

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
    """A response head plus its body, read as frames (``!BI`` kind + length, then the payload)."""

    def __init__(self, status: int, headers: dict[str, str], conn: _Conn, key: tuple[str, str]) -> None:
        self.status = status
        self.headers = headers
        self._conn = conn
        self._key = key
        self._done = False
        length = headers.get("content-length")
        self.length = int(length) if length is not None else None
        if self.length is None and headers.get("transfer-encoding", "").lower() != "chunked":
            conn.close()
            raise ConnectionError("response with neither Content-Length nor chunked encoding")

    def read(self) -> bytes:
        """The whole body (de-chunked)."""
        if self.length is not None:
            data = self._conn.file.read(self.length) if self.length else b""
            if len(data) != self.length:
                raise ConnectionError("the daemon closed the connection mid-response")
            self._done = True
            return data
        return b"".join(self._chunks())

    def _chunks(self) -> Iterator[bytes | memoryview]:
        f = self._conn.file
        while True:
            line = f.readline(1024)
            if not line.endswith(b"\r\n"):
                raise ConnectionError("the daemon closed the connection mid-response")
            size = int(line.split(b";", 1)[0], 16)
            if size == 0:
                f.readline(1024)  # the empty trailer line
                self._done = True
                return
            data = f.read(size + 2)
            if len(data) != size + 2:
                raise ConnectionError("the daemon closed the connection mid-response")
            yield memoryview(data)[:-2]

    def frames(self) -> Iterator[tuple[int, bytes]]:
        """The body's frames as they arrive."""
        if self.length is not None:
            yield from split_client_frames(self.read())
            return
        size = CLIENT_HDR_SIZE
        buf = bytearray()
        for chunk in self._chunks():
            buf += chunk
            while len(buf) >= size:
                kind, n = parse_client_header(buf[:size])
                if len(buf) < size + n:
                    break
                payload = bytes(buf[size : size + n])
                del buf[: size + n]
                yield kind, payload
        if buf:
            raise ConnectionError("the response ended inside a frame")

    def release(self) -> None:
        """Return the connection to the pool when the body was read to its end, else close it."""
        if self._done and self.headers.get("connection") != "close":
            with _pools_lock:
                pool = _pools.setdefault(self._key, [])
                if len(pool) < _MAX_IDLE:
                    pool.append(self._conn)
                    return
        self._conn.close()

    def close(self) -> None:
        self._conn.close()


def _connect(endpoint: str, unix_socket: str | None, timeout: float) -> _Conn:
    if unix_socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(unix_socket)
        except BaseException:
            sock.close()
            raise
    else:
        host, _, port = endpoint.split("://", 1)[1].split("/", 1)[0].rpartition(":")
        sock = socket.create_connection((host.strip("[]"), int(port or 80)), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return _Conn(sock)


def request(endpoint: str, unix_socket: str | None, method: str, path: str, headers: dict[str, str], body: bytes,
            *, connect_timeout: float, read_timeout: float) -> BlockingResponse:
    """Send one request on a pooled connection (a fresh one if the pooled one turns out dead) and read its head."""
    key = (endpoint, unix_socket or "")
    data = encode_head(endpoint, method, path, headers, len(body))
    for attempt in (0, 1):
        conn = None
        if attempt == 0:
            with _pools_lock:
                pool = _pools.get(key)
                conn = pool.pop() if pool else None
        reused = conn is not None
        if conn is None:
            conn = _connect(endpoint, unix_socket, connect_timeout)
        try:
            conn.sock.settimeout(read_timeout)
            if body and len(body) > 65536:
                conn.sock.sendall(data)
                conn.sock.sendall(body)
            else:
                conn.sock.sendall(data + body)
            status_line = conn.file.readline(65536)
            if not status_line:
                raise ConnectionResetError("the daemon closed the connection")
        except (ConnectionError, OSError):
            conn.close()
            if reused:  # the daemon (or the network) closed an idle keep-alive connection: once more, fresh
                continue
            raise
        try:
            lines = [status_line]
            while lines[-1] != b"\r\n":
                line = conn.file.readline(65536)
                if not line:
                    raise ConnectionResetError("the daemon closed the connection mid-head")
                lines.append(line)
            status, hdrs = parse_status_and_headers(b"".join(lines))
        except BaseException:
            conn.close()
            raise
        return BlockingResponse(status, hdrs, conn, key)
    raise ConnectionError("unreachable")  # pragma: no cover - the loop returns or raises


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
