"""The transport seam: what the client needs from a connection to a daemon, and what a failed one means.

A transport sends one request and hands back the response's status, headers and body (whole, or frame by frame).
Four implement it: :class:`tether.client.syncwire.SyncTransport` (blocking sockets: plain HTTP, a unix socket or
pinned TLS), :class:`tether.client.wire.AsyncTransport` (asyncio streams, the same three), :class:`tether.client.
sessions.AiohttpTransport` (aiohttp's client; no client of tether's uses it) and :class:`tether.client.mock.
MockTransport` (in-process, for tests). Transports raise only tether errors: every foreign error (``OSError``, aiohttp's,
``asyncio.IncompleteReadError``, ``ssl`` errors) is mapped here, once, to the most specific one::

    ClusterUnavailable
    └── Dropped          the link broke after the request was sent (details: unreachable=False); a call is
        │                retried under the same call id, frames already seen are skipped
        └── Unreachable  no connection could be made (details: unreachable=True): the daemon is down or gone
    AuthError            the TLS certificate is not the pinned one, or fails verification (never retried)
"""

from __future__ import annotations

import contextlib
import os
import ssl
from collections.abc import Iterator
from typing import Any, Protocol

from tether.errors import AuthError, ClusterUnavailable
from tether.protocol.frames import Frame

__all__ = [
    "CONNECT_TIMEOUT", "READ_TIMEOUT", "RETRIES", "AsyncResponse", "AsyncTransport", "Dropped", "SyncResponse",
    "SyncTransport", "Unreachable", "certificate_refused", "dropped", "fingerprint_mismatch", "is_certificate_error",
    "link_dropped", "link_error", "mount", "mounted", "new_call_id", "timed_out", "unreachable",
]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # the daemon sends a heartbeat frame at least every 10 s while a call runs
RETRIES = 5
"""Attempts of a call (or spawn) whose link drops: the same call id each time, so the daemon runs it once."""


class SyncResponse(Protocol):
    """A response being read on the calling thread. Its connection goes back to the pool once the body was read
    to its end; :meth:`close` (safe in a ``finally``) closes it otherwise."""

    status: int
    headers: dict[str, str]

    def read(self) -> bytes:
        """The whole body."""

    def next_frame(self) -> Frame | None:
        """The body's next call frame (heartbeats included), None at its end."""

    def close(self) -> None: ...


class AsyncResponse(Protocol):
    """:class:`SyncResponse` for a coroutine."""

    status: int
    headers: dict[str, str]

    async def aread(self) -> bytes: ...

    async def anext_frame(self, off_loop: bool = False) -> Frame | None:
        """The next frame; ``off_loop``: a big pickled one may come as an
        :class:`~tether.client.offloop.OffLoopPayload` (only the lean transport makes them)."""
        ...

    def close(self) -> None: ...


class SyncTransport(Protocol):
    """Sends requests to one daemon from any thread (``timeout``: seconds without a byte from the daemon)."""

    def send(self, method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
             timeout: float | None = None) -> SyncResponse: ...

    def close(self) -> None:
        """Close the idle connections."""


class AsyncTransport(Protocol):
    """:class:`SyncTransport` for coroutines (connections are pooled per event loop)."""

    async def asend(self, method: str, path: str, headers: dict[str, str], body: bytes = b"", *,
                    timeout: float | None = None) -> AsyncResponse: ...

    async def aclose(self) -> None: ...


# -- what a failure means ----------------------------------------------------------------------------------------
class Dropped(ClusterUnavailable):
    """The connection broke (or went silent) after the request was sent; a call is retried with the same id."""

    def __init__(self, message: str, *, hint: str | None = None, retryable: bool | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint or "the daemon may be down; a call can be re-attached with "
                         "tether.call(call_id)", retryable=retryable,
                         details={"unreachable": isinstance(self, Unreachable), **(details or {})})


class Unreachable(Dropped):
    """No connection could be made at all (the daemon is down or the address is wrong): nothing was sent."""

    def __init__(self, message: str, *, hint: str | None = None, retryable: bool | None = None,
                 details: dict[str, Any] | None = None) -> None:
        super().__init__(message, hint=hint or "is the cluster up? cluster.up_if_not() relaunches it",
                         retryable=retryable, details=details)


def new_call_id() -> str:
    """A fresh call id (as unique as ``uuid4().hex``, a few µs cheaper)."""
    return os.urandom(16).hex()


def link_error(exc: BaseException) -> bool:
    """Any broken or missing link: a call retries it under the same call id (frames already seen skipped)."""
    return isinstance(exc, Dropped)


def link_dropped(exc: BaseException) -> bool:
    """A link that broke after the request went out: a spawn retries it (with no daemon there, it fails at once)."""
    return isinstance(exc, Dropped) and not isinstance(exc, Unreachable)


def unreachable(endpoint: str, exc: BaseException) -> Unreachable:
    """A connection to ``endpoint`` could not be made (refused, no such socket, no route, connect timeout)."""
    return Unreachable(f"cannot connect to the daemon at {endpoint}: {_why(exc)}", details={"endpoint": endpoint})


def dropped(endpoint: str, exc: BaseException) -> Dropped:
    """The connection to ``endpoint`` broke mid-request."""
    return Dropped(f"connection to {endpoint} dropped: {_why(exc)}", details={"endpoint": endpoint})


def timed_out(endpoint: str, seconds: float) -> Dropped:
    """``endpoint`` sent nothing for ``seconds`` (the daemon sends a heartbeat every 10 s while a call runs)."""
    return Dropped(f"no answer from {endpoint} in {seconds:g}s", details={"endpoint": endpoint})


def fingerprint_mismatch(where: str, got: str, expected: str) -> AuthError:
    """A TLS certificate other than the pinned one: refused, never retried."""
    return AuthError(f"the daemon at {where} presented a TLS certificate with sha256 {got}, not the pinned "
                     f"{expected}", hint="someone may be intercepting the connection, or the daemon was "
                                         "re-created; bring the cluster up again to pin its new certificate")


def certificate_refused(endpoint: str, exc: BaseException) -> AuthError:
    """A TLS certificate that fails verification (no fingerprint to pin it by)."""
    return AuthError(f"the TLS certificate of {endpoint} was refused: {_why(exc)}",
                     hint="pass the cluster's tls_fingerprint to pin its self-signed certificate")


def is_certificate_error(exc: BaseException) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError)


def _why(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# -- mounts: a transport for an endpoint, in place of the network -------------------------------------------------
_mounts: dict[str, Any] = {}


@contextlib.contextmanager
def mount(endpoint: str, transport: Any) -> Iterator[Any]:
    """Route every client of ``endpoint`` made inside the block (and health probes of it) through ``transport``
    (a :class:`tether.client.mock.MockTransport`, say): ``tether.cluster(endpoint=...)`` then works without a
    daemon."""
    key = endpoint.rstrip("/")
    previous = _mounts.get(key)
    _mounts[key] = transport
    try:
        yield transport
    finally:
        if previous is None:
            _mounts.pop(key, None)
        else:
            _mounts[key] = previous


def mounted(endpoint: str) -> Any | None:
    """The transport mounted for ``endpoint``, if any."""
    return _mounts.get(endpoint.rstrip("/")) if _mounts else None
