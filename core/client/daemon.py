"""HTTP client of a daemon: the async core (lean HTTP/1.1 over :mod:`tether.client.wire`, aiohttp for TLS) and
a blocking path for sync callers (:mod:`tether.client.syncwire`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from tether.client import slabs, syncwire, wire
from tether.client.loop import run_sync
from tether.client.outcome import (
    Dropped,
    LogSink,
    Outcome,
    Unreachable,
    default_log_sink,
    http_error,
    raise_remote,
    unavailable,
)
from tether.client.payloads import dump_args, dumps_args, load_file, loads, pickle_error
from tether.client.sessions import CONNECT_TIMEOUT, READ_TIMEOUT, loop_pools, session
from tether.errors import AuthError, ClusterUnavailable
from tether.protocol import frames as p
from tether.protocol import headers as h

__all__ = ["AsyncClient"]


@dataclass
class AsyncClient:
    """Talks to one daemon. Safe to share; connections are pooled per event loop."""

    endpoint: str
    token: str | None = None
    tls_fingerprint: str | None = None
    unix_socket: str | None = None  # same-host daemons: a unix socket is ~0.1 ms a round trip cheaper than TCP

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        self._headers = h.bearer(self.token)
        self._ssl: Any = None
        self._lean = self.endpoint.startswith("http://")  # TLS endpoints keep aiohttp (fingerprint pinning)
        self._shm = bool(self.unix_socket and self._lean and slabs.SHM_DIR)  # same host: big payloads via /dev/shm
        self._big_results: set[tuple[str, str | None]] = set()  # targets that returned a big result (see call())
        if self.tls_fingerprint:
            self._ssl = aiohttp.Fingerprint(bytes.fromhex(self.tls_fingerprint.replace(":", "")))

    # -- plain JSON routes -----------------------------------------------------------------------------------------
    async def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                      params: dict[str, str] | None = None, content_type: str | None = None,
                      timeout: float | None = 60.0) -> Any:
        """One request; returns parsed JSON (or raw bytes for pickle bodies); raises a typed tether error."""
        headers = dict(self._headers)
        if content_type:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            try:
                async with session(self.unix_socket).request(
                        method, self.endpoint + path, json=json_body, data=data, params=params, headers=headers,
                        ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)
                ) as resp:
                    body = await resp.read()
                    if resp.status >= 400:
                        raise http_error(resp.status, body)
                    if resp.content_type == h.PICKLE:
                        return body
                    return json.loads(body) if body else None
            except aiohttp.ServerFingerprintMismatch as exc:
                raise _fingerprint_error(exc) from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A pooled keep-alive connection the network (or the daemon) dropped while idle: the first use
                # fails at once. Once more on a fresh connection; the daemon's routes are idempotent.
                if attempt == 1 and not isinstance(exc, aiohttp.ClientConnectorError):
                    continue
                raise _unreachable(self.endpoint, exc) from exc
            except (aiohttp.ClientConnectionError, TimeoutError) as exc:
                raise _unreachable(self.endpoint, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    # -- calls ---------------------------------------------------------------------------------------------------
    async def frames(self, name: str, method: str | None, body: bytes, *, call_id: str,
                     caller: str | None = None, attach: bool = False, seen: int = 0,
                     extra: dict[str, str] | None = None) -> AsyncGenerator[tuple[int, bytes], None]:
        """Send a call (or re-attach to ``call_id``) and yield its frames after the first ``seen`` as they arrive.

        A dropped connection is retried with the same call id: the daemon runs the call once and re-sends
        its frames from the start, so frames already seen are skipped.
        """
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(5), wait=wait_exponential(multiplier=0.1, max=2),
            retry=retry_if_exception_type(Dropped), reraise=True,
        ):
            with attempt:
                index = 0
                async for frame in self._frames_once(name, method, body, call_id, caller, attach, extra):
                    index += 1
                    if index > seen:
                        seen = index
                        yield frame

    async def _frames_once(self, name: str, method: str | None, body: bytes, call_id: str, caller: str | None,
                           attach: bool, extra: dict[str, str] | None = None) -> AsyncIterator[tuple[int, bytes]]:
        verb, path, headers = self._route(name, method, call_id, caller, attach)
        headers.update(extra or {})
        url, data = self.endpoint + path, (None if attach else body)
        if self._lean:
            async for frame in self._frames_lean(verb, path, headers, data or b""):
                yield frame
            return
        try:
            async with session(self.unix_socket).request(verb, url, data=data, headers=headers, ssl=self._ssl) as resp:
                if resp.status >= 400:
                    raise http_error(resp.status, await resp.read())
                if resp.content_length is not None:
                    raw = await resp.read()
                    for frame in p.split_client_frames(raw):
                        if frame[0] != p.HEARTBEAT:
                            yield frame
                    return
                reader = resp.content
                while True:
                    try:
                        head = await reader.readexactly(p.CLIENT_HDR_SIZE)
                    except asyncio.IncompleteReadError as exc:
                        if not exc.partial:
                            return
                        raise
                    kind, length = p.parse_client_header(head)
                    payload = await reader.readexactly(length) if length else b""
                    if kind != p.HEARTBEAT:
                        yield kind, payload
        except aiohttp.ServerFingerprintMismatch as exc:
            raise _fingerprint_error(exc) from None
        except aiohttp.ClientConnectorError as exc:
            raise Unreachable(f"cannot connect to the daemon at {self.endpoint}: {exc}") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
            raise Dropped(f"connection to {self.endpoint} dropped: {exc}") from exc
        except TimeoutError as exc:
            raise Dropped(f"no answer from {self.endpoint} in {READ_TIMEOUT}s") from exc

    async def _frames_lean(self, verb: str, path: str, headers: dict[str, str], body: bytes
                           ) -> AsyncIterator[tuple[int, bytes]]:
        """The same frames over :mod:`tether.client.wire` (plain HTTP daemons): one write per request, less CPU."""
        resp: wire.Response | None = None
        try:
            async with asyncio.timeout(READ_TIMEOUT) as deadline:
                resp = await self._lean_request(verb, path, headers, body)
                if resp.status >= 400:
                    raise http_error(resp.status, await resp.read())
                while (frame := await _next_frame(resp, deadline)) is not None:
                    if frame[0] != p.HEARTBEAT:
                        yield frame
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise self._lean_error(exc) from exc
        finally:
            if resp is not None:
                resp.close()

    async def _lean_request(self, verb: str, path: str, headers: dict[str, str], body: bytes) -> wire.Response:
        """Send a request over :mod:`tether.client.wire` and read its head (the loop's connections close with it)."""
        loop_pools()
        return await wire.request(self.endpoint, self.unix_socket, verb, path, headers, body,
                                  connect_timeout=CONNECT_TIMEOUT)

    def _lean_error(self, exc: BaseException) -> Dropped:
        """What a failure of the lean transport means: no daemon there, a read timeout, or a dropped link."""
        if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
            return Unreachable(f"cannot connect to the daemon at {self.endpoint}: {exc}")
        if isinstance(exc, TimeoutError):
            return Dropped(f"no answer from {self.endpoint} in {READ_TIMEOUT}s")
        return Dropped(f"connection to {self.endpoint} dropped: {exc}")

    def _route(self, name: str, method: str | None, call_id: str, caller: str | None, attach: bool
               ) -> tuple[str, str, dict[str, str]]:
        headers = {**self._headers, h.CALL_ID: call_id, "Content-Type": h.PICKLE}
        if caller:
            headers[h.CALLER] = caller
        if self._shm:
            headers[h.ACCEPT_SHM] = "1"
        if attach:
            return "GET", f"/calls/{call_id}", headers
        return "POST", (f"/{name}/{method}/call" if method else f"/{name}/call"), headers

    async def call(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None,
                   attach: bool = False, resume: Outcome | None = None, lend: bool = False) -> Any:
        """Run a call to completion; logs go to ``on_log``; returns the result or raises the remote error.

        ``resume``: what a sync attempt of this call id handled before its link dropped (frames are not repeated).
        ``lend``: the caller made ``call_id`` up and shows it to nobody, so a big result may be left in a slab
        of ours that only this call can read (see ``tether.daemon.slabs``).
        """
        out = resume or Outcome(on_log)
        try:
            if self._lean and resume is None:  # one coroutine, no generators: the common case
                verb, path, headers = self._route(name, method, call_id, caller, attach)
                body, out.lease = self._body(name, method, args, kwargs, headers, attach, lend)
                try:
                    await self._call_lean(out, verb, path, headers, body)
                    return out.outcome(call_id)
                except Dropped:
                    pass  # the same call id again, on the retrying path below
            body = b"" if attach else dumps_args(args, kwargs)
            extra = out.lease.headers(result_only=True) if out.lease is not None else None
            async with contextlib.aclosing(self.frames(name, method, body, call_id=call_id, caller=caller,
                                                       attach=attach, seen=out.seen, extra=extra)) as frames:
                async for kind, payload in frames:
                    if out.feed(kind, payload):
                        break
        except Dropped as exc:
            raise unavailable(exc, call_id) from exc
        finally:
            self._settle(name, method, out)
        return out.outcome(call_id)

    def _settle(self, name: str, method: str | None, out: Outcome) -> None:
        """After a call: its slabs back to the pool (or removed), and whether its target returns big results."""
        if out.lease is not None:
            out.lease.end(out.final)
            out.lease = None
        if out.big_result and self._shm:
            if len(self._big_results) >= 1024:
                self._big_results.clear()
            self._big_results.add((name, method))

    async def _call_lean(self, out: Outcome, verb: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """One request over :mod:`tether.client.wire`, its frames folded into ``out``; ``Dropped`` if the link breaks."""
        resp: wire.Response | None = None
        try:
            async with asyncio.timeout(READ_TIMEOUT) as deadline:
                resp = await self._lean_request(verb, path, headers, body)
                if resp.status >= 400:
                    out.failure = http_error(resp.status, await resp.read())
                    return
                if resp._length is not None:  # the call ended before the daemon answered: all frames in one body
                    raw = await resp.read()
                    resp.release()
                    for kind, payload in p.split_client_frames(raw):
                        if out.feed(kind, payload):
                            return
                    return
                while (frame := await _next_frame(resp, deadline)) is not None:
                    if out.feed(*frame):
                        return
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise self._lean_error(exc) from exc
        finally:
            if resp is not None:
                resp.close()

    def call_sync(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                  call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None,
                  lend: bool = False) -> Any:
        """:meth:`call` for a sync caller: blocking sockets on this thread for plain-HTTP daemons (no event
        loop in the way), else the async path. A dropped link resumes on the async path's retries."""
        if not self._lean:
            return run_sync(self.call(name, method, args, kwargs, call_id=call_id, on_log=on_log, caller=caller))
        out = Outcome(on_log)
        verb, path, headers = self._route(name, method, call_id, caller, False)
        resp: syncwire.BlockingResponse | None = None
        resumed = False
        try:
            body, out.lease = self._body(name, method, args, kwargs, headers, False, lend)
            resp = syncwire.request(self.endpoint, self.unix_socket, verb, path, headers, body,
                                    connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
            if resp.status >= 400:
                out.failure = http_error(resp.status, resp.read())
            else:
                for kind, payload in resp.frames():  # read to the end so the connection can be reused
                    if not out.done:
                        out.feed(kind, payload)
            resp.release()
            resp = None
        except (OSError, ValueError) as exc:
            error = self._lean_error(exc)
            if isinstance(error, Unreachable):
                raise unavailable(error, call_id) from exc
            if out.done:  # dropped or timed out: resume with the same call id
                return out.outcome(call_id)
            resumed = True  # the async path settles the call
            return run_sync(self.call(name, method, args, kwargs, call_id=call_id, on_log=on_log, caller=caller,
                                      resume=out))
        finally:
            if resp is not None:
                resp.close()
            if not resumed:
                self._settle(name, method, out)
        return out.outcome(call_id)

    def _body(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any],
              headers: dict[str, str], attach: bool, lend: bool) -> tuple[bytes, slabs.Lease | None]:
        """The request body, and the slabs lent to the call (named in ``headers``): big arguments go in one
        (the body is then empty); with ``lend``, a result slab too if the target returned big results before."""
        if attach:
            return b"", None
        big = self._shm and slabs.is_big(args, kwargs)
        if not big and not (lend and self._shm and (name, method) in self._big_results):
            return dumps_args(args, kwargs), None
        lease = slabs.Lease()
        try:
            if lend:
                lease.lend_result()
            if big:
                lease.write_args((args, kwargs), dump_args)
        except Exception as exc:
            lease.end(False)
            if isinstance(exc, OSError):  # /dev/shm full: the socket still works
                return dumps_args(args, kwargs), None
            raise pickle_error(exc) from exc
        headers.update(lease.headers())
        return (b"" if big else dumps_args(args, kwargs)), lease

    async def stream(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                     call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None
                     ) -> AsyncIterator[Any]:
        """Yield a remote generator's items as they are produced (big arguments go in a lent slab, as for
        :meth:`call`; it is reused only if the stream reached its end)."""
        extra: dict[str, str] = {}
        body, lease = self._body(name, method, args, kwargs, extra, False, False)
        ended = False
        try:
            async with contextlib.aclosing(self.frames(name, method, body, call_id=call_id, caller=caller,
                                                       extra=extra)) as frames:
                async for kind, payload in frames:
                    if kind == p.FILE:  # a big item in a shared-memory file
                        ref = json.loads(payload)
                        if ref["kind"] == p.ITEM:
                            yield load_file(ref["path"])
                        elif ref["kind"] == p.RESULT:
                            ended = True
                            return
                    elif kind == p.ITEM:
                        yield loads(payload)
                    elif kind == p.LOG:
                        if on_log is not None:
                            on_log(json.loads(payload))
                    elif kind == p.ERROR:
                        ended = True
                        raise_remote(payload)
                    elif kind == p.RESULT:
                        ended = True
                        return
        except Dropped as exc:
            raise unavailable(exc, call_id) from exc
        finally:
            if lease is not None:
                lease.end(ended)


async def _next_frame(resp: wire.Response, deadline: asyncio.Timeout) -> tuple[int, bytes] | None:
    """The next frame of a streamed response (None at its end); every frame, heartbeats too, pushes the read
    deadline back. After the last frame the connection goes back to the pool before the frame is handled."""
    head = await resp.readexactly(p.CLIENT_HDR_SIZE)
    if head is None:
        return None
    kind, length = p.parse_client_header(head)
    payload = (await resp.readexactly(length) or b"") if length else b""
    deadline.reschedule(asyncio.get_running_loop().time() + READ_TIMEOUT)
    if kind in (p.RESULT, p.ERROR) and not await resp.read():
        resp.release()
    return kind, payload


def _unreachable(endpoint: str, exc: BaseException) -> ClusterUnavailable:
    return ClusterUnavailable(f"cannot reach the daemon at {endpoint}: {type(exc).__name__}: {exc}",
                              hint="is the cluster up? try cluster.up_if_not()")


def _fingerprint_error(exc: aiohttp.ServerFingerprintMismatch) -> AuthError:
    """A TLS certificate other than the pinned one: refused, never retried."""
    return AuthError(f"the daemon at {exc.host}:{exc.port} presented a TLS certificate with sha256 {exc.got.hex()}, "
                     f"not the pinned {exc.expected.hex()}",
                     hint="someone may be intercepting the connection, or the daemon was re-created; "
                          "bring the cluster up again to pin its new certificate")
