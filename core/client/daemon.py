"""The client of one daemon: a typed method per route, calls (run, spawn, re-attach, stream) with their retries,
over the transports of :mod:`tether.client.transport`. Its sync twin is :attr:`DaemonClient.sync`."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.client import routes, slabs, syncwire
from tether.client.outcome import (
    RERUN,
    LogSink,
    Outcome,
    default_log_sink,
    http_error,
    rerun_error,
    unavailable,
)
from tether.client.payloads import Pieces, dump_args, dump_pieces, dumps_args, pickle_error
from tether.client.syncclient import SyncDaemonClient
from tether.client.transport import (
    RETRIES,
    AsyncTransport,
    Dropped,
    SyncTransport,
    Unreachable,
    link_dropped,
    link_error,
    mounted,
    new_call_id,
)
from tether.protocol import frames as p
from tether.protocol import headers as h

if TYPE_CHECKING:
    from tether.specs import ServiceSpec

FOLLOW_BODIES = os.environ.get("TETHER_BODY_FOLLOWS", "1") != "0"
"""Whether a client sends big call bodies after the head to a daemon that takes them (``TETHER_BODY_FOLLOWS=0``:
never, e.g. behind an HTTP proxy that is not byte-transparent)."""
_FOLLOWS_KEY = h.BODY_FOLLOWS.lower()

__all__ = ["AsyncClient", "DaemonClient"]

_STREAMS_LOCK = threading.Lock()  # one for every client (a client is pickled with a cluster: it holds no lock)



@dataclass
class DaemonClient:
    """Talks to one daemon. Safe to share; connections are pooled (per event loop for the async methods).

    ``transport``: one object serving both the sync and the async side (``send`` / ``asend``, e.g. a
    :class:`tether.client.mock.MockTransport`) in place of the network. Without it: the blocking transport for
    sync methods (plain HTTP, the unix socket, pinned TLS); asyncio streams for async ones (the same three). A
    transport mounted for the endpoint (:func:`tether.client.transport.mount`) counts as given.
    """

    endpoint: str
    token: str | None = None
    tls_fingerprint: str | None = None
    unix_socket: str | None = None  # same-host daemons: a unix socket is ~0.1 ms a round trip cheaper than TCP
    transport: Any = None

    def __post_init__(self) -> None:
        self.endpoint = self.endpoint.rstrip("/")
        self._headers = h.bearer(self.token)
        self._big_results: set[tuple[str, str | None]] = set()  # targets that returned a big result (see call())
        given = self.transport if self.transport is not None else mounted(self.endpoint)
        self._sync: SyncTransport | None
        self._streams: AsyncTransport | None  # made at the first async request (see _async)
        if given is not None:
            self._sync = given if hasattr(given, "send") else None
            self._streams = given
            self._shm = False
            self._may_follow = self._may_pieces = False
        else:
            tls = self.endpoint.startswith("https://")
            self._sync = syncwire.SyncTransport(self.endpoint, self.unix_socket, tls_fingerprint=self.tls_fingerprint)
            self._streams = None
            self._shm = bool(self.unix_socket and not tls and slabs.SHM_DIR)  # same host: big payloads via /dev/shm
            self._may_follow = FOLLOW_BODIES
            self._may_pieces = True  # the lean transports send a body of Pieces as it is
        self._follow = False  # the daemon said it takes bodies that follow (see _learn)
        self._received: list[str] = []  # private calls whose big results arrived whole (X-Tether-Received)
        self.sync = SyncDaemonClient(self)
        """The same methods, blocking (see :class:`tether.client.syncclient.SyncDaemonClient`)."""

    @property
    def _async(self) -> AsyncTransport:
        """The async side's transport: asyncio streams (``tether.client.wire``), made at first use, so a process
        that only makes sync calls never imports asyncio."""
        streams = self._streams
        if streams is None:
            with _STREAMS_LOCK:
                if self._streams is None:
                    from tether.client.wire import AsyncTransport as Streams  # asyncio, for async calls only

                    self._streams = Streams(self.endpoint, self.unix_socket, tls_fingerprint=self.tls_fingerprint)
                streams = self._streams
        return streams

    # -- routes ----------------------------------------------------------------------------------------------------
    async def send(self, op: routes.Op) -> Any:
        """Send one :class:`routes.Op` and read its answer (raises the typed tether error of a 4xx/5xx)."""
        resp = await self._async.asend(op.method, op.path, op.request_headers(self._headers), op.body,
                                       timeout=op.timeout)
        try:
            body = await resp.aread()
        finally:
            resp.close()
        return op.answer(resp.status, resp.headers, body)

    async def request(self, method: str, path: str, *, json_body: Any = None, data: bytes | None = None,
                      params: dict[str, str] | None = None, content_type: str | None = None,
                      timeout: float | None = 60.0) -> Any:
        """Any route; returns parsed JSON (or raw bytes for pickle bodies); raises a typed tether error."""
        return await self.send(routes.raw(method, path, json_body=json_body, data=data, params=params,
                                          content_type=content_type, timeout=timeout))

    async def health(self, timeout: float | None = None) -> dict[str, Any]:
        return dict(await self.send(routes.health(timeout)))

    async def daemon_status(self) -> dict[str, Any]:
        return dict(await self.send(routes.daemon_status()))

    async def services(self) -> list[dict[str, Any]]:
        return list(await self.send(routes.services()))

    async def envs(self) -> dict[str, dict[str, Any]]:
        return dict(await self.send(routes.envs()))

    async def deploy(self, spec: ServiceSpec | dict[str, Any], *, replace_env: bool = False) -> dict[str, Any]:
        return dict(await self.send(routes.deploy(spec, replace_env=replace_env)))

    async def status(self, call_id: str) -> dict[str, Any]:
        return dict(await self.send(routes.status(call_id)))

    async def cancel(self, call_id: str) -> dict[str, Any]:
        return dict(await self.send(routes.cancel(call_id)))

    async def logs(self, call_id: str, since: int = 0) -> list[dict[str, Any]]:
        return list(await self.send(routes.logs(call_id, since)))

    async def put_object(self, key: str, value: Any, *, env: str = "default") -> dict[str, Any]:
        return dict(await self.send(routes.put_object(key, value, env)))

    async def get_object(self, key: str) -> Any:
        return await self.send(routes.get_object(key))

    async def keys(self) -> list[str]:
        return list(await self.send(routes.keys()))

    async def delete_object(self, key: str) -> dict[str, Any]:
        return dict(await self.send(routes.delete_object(key)))

    async def rename_object(self, key: str, to: str) -> dict[str, Any]:
        return dict(await self.send(routes.rename_object(key, to)))

    async def delete_env(self, env: str) -> dict[str, Any]:
        return dict(await self.send(routes.delete_env(env)))

    async def set_autostop(self, mins: float | None = routes.UNSET, *, paused: bool | None = None
                           ) -> dict[str, Any]:
        return dict(await self.send(routes.set_autostop(mins, paused)))

    # -- calls -----------------------------------------------------------------------------------------------------
    def _route(self, name: str, method: str | None, call_id: str, caller: str | None, attach: bool,
               expect: str | None = None) -> tuple[str, str, dict[str, str]]:
        headers = {**self._headers, h.CALL_ID: call_id, "Content-Type": h.PICKLE}
        if caller:
            headers[h.CALLER] = caller
        if expect:
            headers[h.EXPECT] = expect
        if self._shm:
            headers[h.ACCEPT_SHM] = "1"
        if attach:
            return "GET", f"/calls/{call_id}", headers
        return "POST", (f"/{name}/{method}/call" if method else f"/{name}/call"), headers

    def spawn_op(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 call_id: str | None = None, caller: str | None = None, expect: str | None = None) -> routes.Op:
        """The request that spawns a call (its arguments inline: a spawned call lends no slab)."""
        headers = {h.CALL_ID: call_id or new_call_id()}
        if caller:
            headers[h.CALLER] = caller
        if expect:
            headers[h.EXPECT] = expect
        return routes.spawn(name, method, dumps_args(args, kwargs), {**headers, "Content-Type": h.PICKLE})

    async def spawn(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                    call_id: str | None = None, caller: str | None = None, expect: str | None = None) -> str:
        """Start a call and return its id as soon as the daemon registered it (``status`` / ``attach`` /
        ``cancel`` / ``logs`` work on it from anywhere then). The same call id again runs nothing new; without
        one, a new id is made up."""
        op = self.spawn_op(name, method, args, kwargs, call_id=call_id, caller=caller, expect=expect)
        call_id = op.headers[h.CALL_ID] if op.headers else ""
        try:
            from tenacity import (  # here: off a fresh process's imports
                AsyncRetrying,
                retry_if_exception,
                stop_after_attempt,
                wait_exponential,
            )
            async for attempt in AsyncRetrying(stop=stop_after_attempt(RETRIES), reraise=True,
                                               wait=wait_exponential(multiplier=0.1, max=2),
                                               retry=retry_if_exception(link_dropped)):
                with attempt:
                    return str(await self.send(op))
        except Dropped as exc:
            unavailable(exc, call_id)
            raise
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    async def attach(self, call_id: str, *, on_log: LogSink | None = default_log_sink) -> Any:
        """Wait for a call started elsewhere (``spawn``, another process): its logs, then its result or error."""
        return await self.call("", None, (), {}, call_id=call_id, on_log=on_log, attach=True)

    async def frames(self, name: str, method: str | None, body: bytes, *, call_id: str,
                     caller: str | None = None, expect: str | None = None, attach: bool = False, seen: int = 0,
                     extra: dict[str, str] | None = None, run: str | None = None
                     ) -> AsyncGenerator[tuple[int, bytes], None]:
        """Send a call (or re-attach to ``call_id``) and yield its frames after the first ``seen`` as they arrive.

        A dropped connection is retried with the same call id: the daemon runs the call once and re-sends
        its frames from the start, so frames already seen are skipped — unless the retry's answer comes from
        another run of the call (``X-Tether-Call-Attempt``: it was lost in a daemon restart and runs again): a
        :data:`~tether.client.outcome.RERUN` frame then comes first, and every frame of the re-run after it.
        ``run``: the attempt the ``seen`` frames came from (None: whichever answers first).
        """
        from tenacity import (  # here: off a fresh process's imports
            AsyncRetrying,
            retry_if_exception,
            stop_after_attempt,
            wait_exponential,
        )
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(RETRIES), wait=wait_exponential(multiplier=0.1, max=2),
            retry=retry_if_exception(link_error), reraise=True,
        ):
            with attempt:
                index = 0
                verb, path, headers = self._route(name, method, call_id, caller, attach, expect)
                headers.update(extra or {})
                resp = await self._async.asend(verb, path, headers, b"" if attach else body)
                try:
                    if resp.status >= 400:
                        raise http_error(resp.status, await resp.aread())
                    now = resp.headers.get(h.CALL_ATTEMPT.lower())  # lower-cased by every transport
                    if run is not None and now is not None and now != run and seen:
                        seen = 0  # another run: its frames from its first
                        yield RERUN, now.encode()
                    run = now if now is not None else run
                    while (frame := await resp.anext_frame()) is not None:
                        if frame[0] == p.HEARTBEAT:
                            continue
                        index += 1
                        if index > seen:
                            seen = index
                            yield frame
                finally:
                    resp.close()

    async def call(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                   call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None, expect: str | None = None,
                   attach: bool = False, resume: Outcome | None = None, lend: bool = False) -> Any:
        """Run a call to completion; logs go to ``on_log``; returns the result or raises the remote error.

        ``resume``: what a sync attempt of this call id handled before its link dropped (frames are not repeated).
        ``lend``: the caller made ``call_id`` up and shows it to nobody, so a big result may be left in a slab
        of ours that only this call can read (see ``tether.daemon.slabs``).
        """
        out = resume or Outcome(on_log)
        try:
            if resume is None:  # one request in one coroutine, no generator: the common case
                verb, path, headers = self._route(name, method, call_id, caller, attach, expect)
                body, out.lease = self._body(name, method, args, kwargs, headers, attach, lend)
                self._follow_if_big(body, headers)
                private = self._private(headers, lend and not attach)
                try:
                    resp = await self._async.asend(verb, path, headers, body)
                    out.attempt = resp.headers.get(h.CALL_ATTEMPT.lower())
                    self._learn(resp.headers)
                    try:
                        if resp.status >= 400:
                            out.failure = http_error(resp.status, await resp.aread())
                        else:
                            from tether.client.offloop import OffLoopPayload  # loaded with the async side

                            while (frame := await resp.anext_frame(off_loop=True)) is not None:
                                # a big result of a plain connection is unpickled off the loop, from the socket
                                if (await frame.payload.feed(out.feed, frame.kind)
                                        if isinstance(frame.payload, OffLoopPayload) else out.feed(*frame)):
                                    if out.final:  # the body ends after a call's last frame: read that end,
                                        await resp.anext_frame()  # and the connection is reused
                                    break
                    finally:
                        resp.close()
                    self._note_received(call_id, out, private)
                    return out.outcome(call_id)
                except Dropped:
                    if out.done:
                        return out.outcome(call_id)
                    # the same call id again, on the retrying path below
            body = b"" if attach else dumps_args(args, kwargs)
            extra = out.lease.headers(result_only=True) if out.lease is not None else None
            async with contextlib.aclosing(self.frames(name, method, body, call_id=call_id, caller=caller, expect=expect,
                                                       attach=attach, seen=out.seen, extra=extra,
                                                       run=out.attempt)) as frames:
                async for kind, payload in frames:
                    if kind == RERUN:  # nothing was handed out yet: the re-run's outcome is the call's
                        out.rerun()
                    elif out.feed(kind, payload):
                        break
        except Dropped as exc:
            unavailable(exc, call_id)
            raise
        finally:
            self._settle(name, method, out)
        return out.outcome(call_id)

    def call_sync(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                  call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None, expect: str | None = None,
                  lend: bool = False, attach: bool = False) -> Any:
        """:meth:`call` for a sync caller: blocking sockets on this thread (no event loop in the way). A dropped
        link resumes on the async path's retries."""
        transport = self._sync
        if transport is None:
            return _run_sync(self.call(name, method, args, kwargs, call_id=call_id, on_log=on_log, caller=caller, expect=expect,
                                      attach=attach))
        out = Outcome(on_log)
        verb, path, headers = self._route(name, method, call_id, caller, attach, expect)
        resumed = private = False
        try:
            body, out.lease = self._body(name, method, args, kwargs, headers, attach, lend)
            self._follow_if_big(body, headers)
            private = self._private(headers, lend and not attach)
            resp = transport.send(verb, path, headers, body)
            out.attempt = resp.headers.get(h.CALL_ATTEMPT.lower())
            self._learn(resp.headers)
            try:
                if resp.status >= 400:
                    out.failure = http_error(resp.status, resp.read())
                else:
                    while (frame := resp.next_frame()) is not None:
                        if out.feed(*frame):
                            if out.final:  # read the body's end: the connection is reused
                                resp.next_frame()
                            break
            finally:
                resp.close()
        except Unreachable as exc:
            unavailable(exc, call_id)
            raise
        except Dropped:
            if out.done:  # the outcome arrived before the link dropped
                return out.outcome(call_id)
            resumed = True  # the async path settles the call
            return _run_sync(self.call(name, method, args, kwargs, call_id=call_id, on_log=on_log, caller=caller, expect=expect,
                                      attach=attach, resume=out))
        finally:
            if not resumed:
                self._settle(name, method, out)
        self._note_received(call_id, out, private)
        return out.outcome(call_id)

    def _follow_if_big(self, body: bytes | Pieces, headers: dict[str, str]) -> None:
        """A big body goes after the head once the daemon said it takes bodies that follow
        (:data:`~tether.protocol.headers.BODY_FOLLOWS`: received straight into its argument file)."""
        if self._follow and len(body) >= slabs.SHM_THRESHOLD:
            headers[h.BODY_FOLLOWS] = str(len(body))

    def _private(self, headers: dict[str, str], private: bool) -> bool:
        """Mark a call whose id only we know (``lend``) as private, so that the daemon may leave a big result in a
        file it reuses once we say we have it; and say which earlier private results we have
        (``X-Tether-Private`` / ``X-Tether-Received``, see ``tether.daemon.result_pool``). Not for same-host
        calls (their big results come in slabs of our own)."""
        if self._received:
            done, self._received = self._received, []
            headers[h.RECEIVED] = ",".join(done[-64:])
        if private and self._may_pieces and not self._shm:
            headers[h.PRIVATE] = "1"
            return True
        return False

    def _note_received(self, call_id: str, out: Outcome, private: bool) -> None:
        """A private call's big result arrived whole: the next call says so."""
        if private and out.big_payload and out.failure is None:
            if len(self._received) >= 256:
                del self._received[:128]
            self._received.append(call_id)

    def _learn(self, headers: dict[str, str]) -> None:
        """Note from a call's response whether the daemon takes bodies that follow."""
        if self._may_follow and not self._follow and headers.get(_FOLLOWS_KEY) == "1":
            self._follow = True

    def _settle(self, name: str, method: str | None, out: Outcome) -> None:
        """After a call: its slabs back to the pool (or removed), and whether its target returns big results."""
        if out.lease is not None:
            out.lease.end(out.final)
            out.lease = None
        if out.big_result and self._shm:
            if len(self._big_results) >= 1024:
                self._big_results.clear()
            self._big_results.add((name, method))

    def _body(self, name: str, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any],
              headers: dict[str, str], attach: bool, lend: bool) -> tuple[bytes | Pieces, slabs.Lease | None]:
        """The request body, and the slabs lent to the call (named in ``headers``): big arguments go in one
        (the body is then empty); with ``lend``, a result slab too if the target returned big results before."""
        if attach:
            return b"", None
        big = slabs.is_big(args, kwargs)
        if not self._shm:  # through the socket: big arguments sent from the pickler's pieces, not one copy
            return (dump_pieces(args, kwargs) if big and self._may_pieces else dumps_args(args, kwargs)), None
        if not big and not (lend and (name, method) in self._big_results):
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
                     call_id: str, on_log: LogSink | None = default_log_sink, caller: str | None = None, expect: str | None = None,
                     replayable: bool = False) -> AsyncIterator[Any]:
        """Yield a remote generator's items as they are produced (big arguments go in a lent slab, as for
        :meth:`call`; it is reused only if the stream reached its end).

        If the call is lost in a daemon restart after items were yielded and the retry runs it again, the re-run's
        items are not the lost run's next ones: ``WorkerDied`` (``details["reason"] == "rerun_after_items"``,
        ``items_seen``), unless ``replayable`` (a re-run yields the same items): its first ones are then skipped."""
        extra: dict[str, str] = {}
        body, lease = self._body(name, method, args, kwargs, extra, False, False)
        out = Outcome(on_log)
        given = skip = 0
        try:
            async with contextlib.aclosing(self.frames(name, method, body, call_id=call_id, caller=caller, expect=expect,
                                                       extra=extra)) as frames:
                async for kind, payload in frames:
                    if kind == RERUN:
                        if given and not replayable:
                            raise rerun_error(call_id, given, int(payload))
                        skip = given
                        continue
                    done = out.feed(kind, payload)
                    for item in out.take_items():
                        if skip:
                            skip -= 1
                            continue
                        given += 1
                        yield item
                    if done:
                        break
            out.outcome(call_id)  # the remote error, if the generator raised
        except Dropped as exc:
            unavailable(exc, call_id)
            raise
        finally:
            if lease is not None:
                lease.end(out.final)


AsyncClient = DaemonClient
"""The name the client had before it had a sync twin (still used throughout)."""


def _run_sync(coro: Any) -> Any:
    """``tether.client.loop.run_sync``: the background event loop, for the rare sync call that needs the async
    path (a transport with no sync side, a dropped link resumed)."""
    from tether.client.loop import run_sync  # asyncio: most sync calls never need it

    return run_sync(coro)
