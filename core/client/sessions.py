"""An aiohttp transport (async requests, TLS pinned by the certificate's fingerprint) and the aiohttp connection
pools of each event loop, closed with their loop. :class:`tether.client.DaemonClient` does not use it (the lean
:mod:`tether.client.wire` speaks TLS too, and importing aiohttp costs a fresh process ~0.17 s); it stays for code
that wants aiohttp's client."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any, NoReturn

import aiohttp

from tether.client import wire
from tether.client.transport import (
    CONNECT_TIMEOUT,
    READ_TIMEOUT,
    certificate_refused,
    dropped,
    fingerprint_mismatch,
    timed_out,
    unreachable,
)
from tether.errors import TetherError
from tether.protocol.frames import Frame, FrameDecoder

__all__ = ["CONNECT_TIMEOUT", "READ_TIMEOUT", "AiohttpTransport", "close_all", "loop_pools", "session"]

_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary())


def loop_pools() -> dict[str | None, aiohttp.ClientSession]:
    """The aiohttp sessions of the running loop. On a loop's first use, a hook is set that closes them when the
    loop shuts down (``asyncio.run`` ends, ``close_all``)."""
    loop = asyncio.get_running_loop()
    pools = _sessions.get(loop)
    if pools is None:
        pools = _sessions[loop] = {}
        closer = _close_at_loop_shutdown(pools)
        loop.create_task(_start(closer))  # started, so loop.shutdown_asyncgens() will close the pools
        _closers[loop] = closer
    return pools


def session(unix_socket: str | None = None) -> aiohttp.ClientSession:
    """The connection pool of the running loop for TCP (or for one unix socket); closed with the loop."""
    pools = loop_pools()
    session = pools.get(unix_socket)
    if session is None or session.closed:
        connector: aiohttp.BaseConnector
        if unix_socket:
            connector = aiohttp.UnixConnector(unix_socket, limit=256, keepalive_timeout=60)
        else:
            connector = aiohttp.TCPConnector(limit=256, limit_per_host=256, keepalive_timeout=60)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)
        session = pools[unix_socket] = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, read_bufsize=4 * 1024 * 1024)
    return session


_closers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = weakref.WeakKeyDictionary()


async def _start(agen: AsyncIterator[None]) -> None:
    await agen.__anext__()


async def _close_at_loop_shutdown(pools: dict[str | None, aiohttp.ClientSession]) -> AsyncIterator[None]:
    try:
        while True:
            yield
    finally:
        for session in list(pools.values()):
            await session.close()


async def close_sessions() -> None:
    """Close the aiohttp sessions of the running loop."""
    pools = _sessions.pop(asyncio.get_running_loop(), None) or {}
    for session in pools.values():
        await session.close()


wire.add_closer(close_sessions)
close_all = wire.close_all
"""Close the connection pools of the running loop (aiohttp's and the lean transport's)."""


class AiohttpResponse:
    """A response of :class:`AiohttpTransport` (the same reading interface as :class:`tether.client.wire.Response`)."""

    __slots__ = ("_decoder", "_endpoint", "_frames", "_i", "_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, endpoint: str) -> None:
        self._resp = resp
        self._endpoint = endpoint
        self.status = resp.status
        self.headers = {k.lower(): v for k, v in resp.headers.items()}
        self._decoder = FrameDecoder()
        self._frames: list[Frame] = []
        self._i = 0

    async def aread(self) -> bytes:
        try:
            return await self._resp.read()
        except BaseException as exc:
            self.close()
            _reraise(exc, self._endpoint)

    async def anext_frame(self, off_loop: bool = False) -> Frame | None:  # (frames come whole here)
        while self._i == len(self._frames):
            try:
                data = await self._resp.content.readany()
            except BaseException as exc:
                self.close()
                _reraise(exc, self._endpoint)
            if not data:
                self._resp.release()
                if self._decoder.pending:
                    raise dropped(self._endpoint, ConnectionError("the response ended inside a frame"))
                return None
            self._frames, self._i = self._decoder.feed(data), 0
        frame = self._frames[self._i]
        self._i += 1
        return frame

    def close(self) -> None:
        self._resp.close()


class AiohttpTransport:
    """Async requests to one daemon through aiohttp: for TLS daemons, pinned by ``tls_fingerprint`` (hex SHA-256
    of the certificate's DER bytes)."""

    def __init__(self, endpoint: str, unix_socket: str | None = None, *, tls_fingerprint: str | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.unix_socket = unix_socket
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._ssl: Any = None
        if tls_fingerprint:
            self._ssl = aiohttp.Fingerprint(bytes.fromhex(tls_fingerprint.replace(":", "")))

    async def asend(self, method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
                    timeout: float | None = None) -> AiohttpResponse:
        wait = timeout or self.read_timeout
        client_timeout = aiohttp.ClientTimeout(total=None, sock_connect=min(self.connect_timeout, wait),
                                               sock_read=wait)
        for attempt in (1, 2):
            try:
                resp = await session(self.unix_socket).request(
                    method, self.endpoint + path, data=body or None, headers=headers, ssl=self._ssl,
                    timeout=client_timeout)
                return AiohttpResponse(resp, self.endpoint)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled keep-alive connection the network (or the daemon) dropped while idle: the first use
                # fails at once. Once more on a fresh connection.
                if attempt == 1 and not isinstance(exc, aiohttp.ClientConnectorError):
                    continue
                _reraise(exc, self.endpoint, wait)
            except BaseException as exc:
                _reraise(exc, self.endpoint, wait)
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def aclose(self) -> None:
        """The sessions are the loop's, shared by every client on it: closed with the loop (``close_all``)."""


def _reraise(exc: BaseException, endpoint: str, wait: float = READ_TIMEOUT) -> NoReturn:
    """Raise aiohttp's error as tether's (anything else, a cancellation say, unchanged)."""
    mapped: TetherError | None = None
    if isinstance(exc, aiohttp.ServerFingerprintMismatch):
        raise fingerprint_mismatch(f"{exc.host}:{exc.port}", exc.got.hex(), exc.expected.hex()) from None
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        raise certificate_refused(endpoint, exc.certificate_error) from None
    if isinstance(exc, aiohttp.ClientConnectorError):
        mapped = unreachable(endpoint, exc)
    elif isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError | asyncio.IncompleteReadError):
        mapped = dropped(endpoint, exc)
    elif isinstance(exc, TimeoutError):
        mapped = timed_out(endpoint, wait)
    if mapped is None:
        raise exc
    raise mapped from exc
