"""HTTP client of a daemon: async core (aiohttp, pooled connections), used by the sync facade via ``tether.loop``."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pickle
import sys
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import cloudpickle
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from tether import shm, syncwire, wire
from tether.daemon import protocol as p
from tether.errors import (
    AuthError,
    ClusterUnavailable,
    SerializationError,
    TetherError,
    error_from_wire,
)

__all__ = ["AsyncClient", "LogSink", "close_all", "default_log_sink"]

PICKLE = "application/x-tether-pickle"
LogSink = Callable[[dict[str, Any]], None]
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary())

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # the daemon sends a heartbeat frame at least every 10 s while a call runs


def default_log_sink(event: dict[str, Any]) -> None:
    """Re-emit a remote log event locally: printed text to stdout/stderr, log records to the same logger."""
    if "text" in event:
        stream = sys.stderr if event.get("stream") == "stderr" else sys.stdout
        stream.write(event["text"])
        stream.flush()
    else:
        logging.getLogger(event.get("name") or "tether.remote").log(int(event.get("level", 20)), event.get("msg", ""))


def _loop_pools() -> dict[str | None, aiohttp.ClientSession]:
    """The aiohttp sessions of the running loop. On a loop's first use, a hook is set that closes them and the
    loop's :mod:`tether.wire` connections when the loop shuts down (``asyncio.run`` ends, ``close_all``)."""
    loop = asyncio.get_running_loop()
    pools = _sessions.get(loop)
    if pools is None:
        pools = _sessions[loop] = {}
        closer = _close_at_loop_shutdown(pools)
        loop.create_task(_start(closer))  # started, so loop.shutdown_asyncgens() will close the pools
        _closers[loop] = closer
    return pools


def _session(unix_socket: str | None = None) -> aiohttp.ClientSession:
    """The connection pool of the running loop for TCP (or for one unix socket); closed with the loop."""
    pools = _loop_pools()
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
        await wire.close_pools()
        for session in list(pools.values()):
            await session.close()


async def close_all() -> None:
    """Close the connection pools of the running loop."""
    await wire.close_pools()
    pools = _sessions.pop(asyncio.get_running_loop(), None) or {}
    for session in pools.values():
        await session.close()


_PLAIN = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether every argument is a plain value the C pickler handles (~10x cheaper than cloudpickle's)."""
    return all(type(a) in _PLAIN for a in args) and all(type(v) in _PLAIN for v in kwargs.values())


def dumps_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The call's arguments as a pickle (plain values take the C pickler)."""
    if _plain(args, kwargs):
        return pickle.dumps((args, kwargs), protocol=5)
    try:
        return cloudpickle.dumps((args, kwargs), protocol=5)
    except Exception as exc:
        raise _pickle_error(exc) from exc


def _pickle_error(exc: Exception) -> SerializationError:
    return SerializationError(f"could not pickle the call's arguments: {type(exc).__name__}: {exc}",
                              hint="pass picklable values (no open files, sockets, locks or live connections)")


def _dump(obj: Any, file: Any) -> None:
    """Pickle the call's arguments into ``file`` (plain values take the C pickler, see :func:`dumps_args`)."""
    if _plain(*obj):
        pickle.dump(obj, file, protocol=5)
    else:
        cloudpickle.dump(obj, file, protocol=5)


def _unpickle_error(exc: Exception) -> SerializationError:
    return SerializationError(f"could not unpickle the remote result: {type(exc).__name__}: {exc}",
                              hint="the result's type must be importable here with the same code as on the cluster")


def _loads(body: bytes) -> Any:
    try:
        return cloudpickle.loads(body)
    except Exception as exc:
        raise _unpickle_error(exc) from exc


def _load_file(path: str) -> Any:
    try:
        return shm.load(path)
    except OSError as exc:
        raise ClusterUnavailable(f"the daemon's result file {path} is gone: {exc}",
                                 hint="the daemon restarted or dropped the finished call; run the call again") from exc
    except Exception as exc:
        raise _unpickle_error(exc) from exc


def raise_remote(payload: bytes) -> None:
    """Raise the error an E frame carries, with the remote traceback attached as a note."""
    body = json.loads(payload)
    exc = error_from_wire(body)
    tb = body.get("error", {}).get("details", {}).get("traceback")
    if tb and not isinstance(exc, TetherError):
        exc.add_note(f"--- remote traceback ---\n{tb.rstrip()}")
    raise exc


@dataclass
class AsyncClient:
    """Talks to one daemon. Safe to share; connections are pooled per event loop."""

    endpoint: str
    token: str | None = None
    tls_fingerprint: str | None = None
    unix_socket: str | None = None  # same-host daemons: a unix socket is ~0.1 ms a round trip cheaper than TCP

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        self._headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._ssl: Any = None
        self._lean = self.endpoint.startswith("http://")  # TLS endpoints keep aiohttp (fingerprint pinning)
        self._shm = bool(self.unix_socket and self._lean and shm.SHM_DIR)  # same host: big payloads via /dev/shm
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
                async with _session(self.unix_socket).request(
                        method, self.endpoint + path, json=json_body, data=data, params=params, headers=headers,
                        ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=timeout, sock_connect=CONNECT_TIMEOUT)
                ) as resp:
                    body = await resp.read()
                    if resp.status >= 400:
                        raise _http_error(resp.status, body)
                    if resp.content_type == PICKLE:
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
            retry=retry_if_exception_type(_Dropped), reraise=True,
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
            async with _session(self.unix_socket).request(verb, url, data=data, headers=headers, ssl=self._ssl) as resp:
                if resp.status >= 400:
                    raise _http_error(resp.status, await resp.read())
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
            raise _Unreachable(f"cannot connect to the daemon at {self.endpoint}: {exc}") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.IncompleteReadError) as exc:
            raise _Dropped(f"connection to {self.endpoint} dropped: {exc}") from exc
        except TimeoutError as exc:
            raise _Dropped(f"no answer from {self.endpoint} in {READ_TIMEOUT}s") from exc

    async def _frames_lean(self, verb: str, path: str, headers: dict[str, str], body: bytes
                           ) -> AsyncIterator[tuple[int, bytes]]:
        """The same frames over :mod:`tether.wire` (plain HTTP daemons): one write per request, less CPU."""
        resp: wire.Response | None = None
        try:
            async with asyncio.timeout(READ_TIMEOUT) as deadline:
                resp = await self._lean_request(verb, path, headers, body)
                if resp.status >= 400:
                    raise _http_error(resp.status, await resp.read())
                while (frame := await _next_frame(resp, deadline)) is not None:
                    if frame[0] != p.HEARTBEAT:
                        yield frame
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            raise self._lean_error(exc) from exc
        finally:
            if resp is not None:
                resp.close()

    async def _lean_request(self, verb: str, path: str, headers: dict[str, str], body: bytes) -> wire.Response:
        """Send a request over :mod:`tether.wire` and read its head (the loop's connections close with it)."""
        _loop_pools()
        return await wire.request(self.endpoint, self.unix_socket, verb, path, headers, body,
                                  connect_timeout=CONNECT_TIMEOUT)

    def _lean_error(self, exc: BaseException) -> _Dropped:
        """What a failure of the lean transport means: no daemon there, a read timeout, or a dropped link."""
        if isinstance(exc, ConnectionRefusedError | FileNotFoundError):
            return _Unreachable(f"cannot connect to the daemon at {self.endpoint}: {exc}")
        if isinstance(exc, TimeoutError):
            return _Dropped(f"no answer from {self.endpoint} in {READ_TIMEOUT}s")
        return _Dropped(f"connection to {self.endpoint} dropped: {exc}")

    def _route(self, name: str, method: str | None, call_id: str, caller: str | None, attach: bool
               ) -> tuple[str, str, dict[str, str]]:
        headers = {**self._headers, "X-Tether-Call-Id": call_id, "Content-Type": PICKLE}
        if caller:
            headers["X-Tether-Caller"] = caller
        if self._shm:
            headers["X-Tether-Accept-Shm"] = "1"
        if attach:
            return "GET", f"/calls/{call_id}", headers
        return "POST", (f"/{name}/{method}/call" if method else f"/{name}/call"), headers

    async def call(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None,
                   attach: bool = False, resume: _Outcome | None = None, lend: bool = False) -> Any:
        """Run a call to completion; logs go to ``on_log``; returns the result or raises the remote error.

        ``resume``: what a sync attempt of this call id handled before its link dropped (frames are not repeated).
        ``lend``: the caller made ``call_id`` up and shows it to nobody, so a big result may be left in a slab
        of ours that only this call can read (see ``tether.daemon.slabs``).
        """
        out = resume or _Outcome(on_log)
        try:
            if self._lean and resume is None:  # one coroutine, no generators: the common case
                verb, path, headers = self._route(name, method, call_id, caller, attach)
                body, out.lease = self._body(name, method, args, kwargs, headers, attach, lend)
                try:
                    await self._call_lean(out, verb, path, headers, body)
                    return out.outcome(call_id)
                except _Dropped:
                    pass  # the same call id again, on the retrying path below
            body = b"" if attach else dumps_args(args, kwargs)
            extra = out.lease.headers(result_only=True) if out.lease is not None else None
            async with contextlib.aclosing(self.frames(name, method, body, call_id=call_id, caller=caller,
                                                       attach=attach, seen=out.seen, extra=extra)) as frames:
                async for kind, payload in frames:
                    if out.feed(kind, payload):
                        break
        except _Dropped as exc:
            raise _unavailable(exc, call_id) from exc
        finally:
            self._settle(name, method, out)
        return out.outcome(call_id)

    def _settle(self, name: str, method: str | None, out: _Outcome) -> None:
        """After a call: its slabs back to the pool (or removed), and whether its target returns big results."""
        if out.lease is not None:
            out.lease.end(out.final)
            out.lease = None
        if out.big_result and self._shm:
            if len(self._big_results) >= 1024:
                self._big_results.clear()
            self._big_results.add((name, method))

    async def _call_lean(self, out: _Outcome, verb: str, path: str, headers: dict[str, str], body: bytes) -> None:
        """One request over :mod:`tether.wire`, its frames folded into ``out``; ``_Dropped`` if the link breaks."""
        resp: wire.Response | None = None
        try:
            async with asyncio.timeout(READ_TIMEOUT) as deadline:
                resp = await self._lean_request(verb, path, headers, body)
                if resp.status >= 400:
                    out.failure = _http_error(resp.status, await resp.read())
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
        from tether.loop import run_sync

        if not self._lean:
            return run_sync(self.call(name, method, args, kwargs, call_id=call_id, on_log=on_log, caller=caller))
        out = _Outcome(on_log)
        verb, path, headers = self._route(name, method, call_id, caller, False)
        resp: syncwire.BlockingResponse | None = None
        resumed = False
        try:
            body, out.lease = self._body(name, method, args, kwargs, headers, False, lend)
            resp = syncwire.request(self.endpoint, self.unix_socket, verb, path, headers, body,
                                    connect_timeout=CONNECT_TIMEOUT, read_timeout=READ_TIMEOUT)
            if resp.status >= 400:
                out.failure = _http_error(resp.status, resp.read())
            else:
                for kind, payload in resp.frames():  # read to the end so the connection can be reused
                    if not out.done:
                        out.feed(kind, payload)
            resp.release()
            resp = None
        except (OSError, ValueError) as exc:
            error = self._lean_error(exc)
            if isinstance(error, _Unreachable):
                raise _unavailable(error, call_id) from exc
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
              headers: dict[str, str], attach: bool, lend: bool) -> tuple[bytes, shm.Lease | None]:
        """The request body, and the slabs lent to the call (named in ``headers``): big arguments go in one
        (the body is then empty); with ``lend``, a result slab too if the target returned big results before."""
        if attach:
            return b"", None
        big = self._shm and shm.is_big(args, kwargs)
        if not big and not (lend and self._shm and (name, method) in self._big_results):
            return dumps_args(args, kwargs), None
        lease = shm.Lease()
        try:
            if lend:
                lease.lend_result()
            if big:
                lease.write_args((args, kwargs), _dump)
        except Exception as exc:
            lease.end(False)
            if isinstance(exc, OSError):  # /dev/shm full: the socket still works
                return dumps_args(args, kwargs), None
            raise _pickle_error(exc) from exc
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
                            yield _load_file(ref["path"])
                        elif ref["kind"] == p.RESULT:
                            ended = True
                            return
                    elif kind == p.ITEM:
                        yield _loads(payload)
                    elif kind == p.LOG:
                        if on_log is not None:
                            on_log(json.loads(payload))
                    elif kind == p.ERROR:
                        ended = True
                        raise_remote(payload)
                    elif kind == p.RESULT:
                        ended = True
                        return
        except _Dropped as exc:
            raise ClusterUnavailable(str(exc), details={"call_id": call_id}) from exc
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


class _Outcome:
    """Folds a call's frames into its outcome: logs to ``on_log``, items collected, the result or the error kept.

    Never raises while frames arrive (so the transport's error handling cannot mistake the remote error, or a
    failing log sink, for a broken connection); :meth:`outcome` returns or raises at the end.
    """

    __slots__ = ("big_result", "done", "error", "failure", "final", "items", "lease", "on_log", "seen", "value")

    def __init__(self, on_log: LogSink | None) -> None:
        self.on_log = on_log
        self.seen = 0  # frames handled (a resumed attempt skips them)
        self.items: list[Any] | None = None
        self.value: Any = None
        self.error: bytes | None = None
        self.failure: BaseException | None = None
        self.done = False
        self.final = False  # the call's RESULT or ERROR arrived: the worker is done with its slabs
        self.big_result = False  # the result came in a file the daemon owns (next time: lend a result slab)
        self.lease: shm.Lease | None = None

    def feed(self, kind: int, payload: bytes) -> bool:
        """Take one frame; True once the call's outcome is known."""
        if kind == p.HEARTBEAT:
            return False
        self.seen += 1
        try:
            if kind in (p.RESULT, p.ERROR):
                self.final = True
            if kind == p.FILE:  # a big result or item in a shared-memory file the daemon owns (or in our slab)
                ref = json.loads(payload)
                kind = ref["kind"]
                self.final = kind != p.ITEM
                self.big_result = self.final and not ref.get("slab")
                loaded = self._load_slab(ref) if ref.get("slab") else _load_file(ref["path"])
                if kind == p.ITEM:
                    self.items = self.items if self.items is not None else []
                    self.items.append(loaded)
                    return False
                self.value = self.items if self.items is not None else loaded
            elif kind == p.RESULT:
                self.value = self.items if self.items is not None else _loads(payload)
            elif kind == p.ERROR:
                self.error = payload
            elif kind == p.LOG:
                if self.on_log is not None:
                    self.on_log(json.loads(payload))
                return False
            elif kind == p.ITEM:
                self.items = self.items if self.items is not None else []
                self.items.append(_loads(payload))
                return False
            else:
                return False
        except Exception as exc:  # noqa: BLE001 - raised by outcome(), after the transport is done
            self.failure = exc
        self.done = True
        return True

    def _load_slab(self, ref: dict[str, Any]) -> Any:
        """A result the worker pickled into the slab this call lent."""
        try:
            if self.lease is None:
                raise EOFError("this call lent no result slab")
            return self.lease.load_result(ref["path"], ref["size"])
        except (OSError, EOFError, ValueError) as exc:
            raise ClusterUnavailable(f"could not read the call's result slab: {exc}",
                                     hint="run the call again") from exc
        except Exception as exc:
            raise _unpickle_error(exc) from exc

    def outcome(self, call_id: str) -> Any:
        if self.failure is not None:
            raise self.failure
        if self.error is not None:
            raise_remote(self.error)
        if not self.done:
            raise ClusterUnavailable(f"the stream of call {call_id} ended without a result",
                                     details={"call_id": call_id})
        return self.value


def _unavailable(exc: _Dropped, call_id: str) -> ClusterUnavailable:
    unreachable = isinstance(exc, _Unreachable)
    return ClusterUnavailable(
        str(exc), hint="is the cluster up? cluster.up_if_not() relaunches it" if unreachable
        else "the daemon may be down; re-attach with tether.call(call_id)",
        details={"call_id": call_id, "unreachable": unreachable})


class _Dropped(Exception):
    """The connection broke mid-call; retried with the same call id."""


class _Unreachable(_Dropped):
    """No connection could be made at all (the daemon is down or the address is wrong)."""


def _unreachable(endpoint: str, exc: BaseException) -> ClusterUnavailable:
    return ClusterUnavailable(f"cannot reach the daemon at {endpoint}: {type(exc).__name__}: {exc}",
                              hint="is the cluster up? try cluster.up_if_not()")


def _fingerprint_error(exc: aiohttp.ServerFingerprintMismatch) -> AuthError:
    """A TLS certificate other than the pinned one: refused, never retried."""
    return AuthError(f"the daemon at {exc.host}:{exc.port} presented a TLS certificate with sha256 {exc.got.hex()}, "
                     f"not the pinned {exc.expected.hex()}",
                     hint="someone may be intercepting the connection, or the daemon was re-created; "
                          "bring the cluster up again to pin its new certificate")


def _http_error(status: int, body: bytes) -> BaseException:
    try:
        data = json.loads(body)
    except ValueError:
        data = {"error": {"type": "TetherError", "message": f"HTTP {status}: {body[:200]!r}"}}
    return error_from_wire(data, status=status)
