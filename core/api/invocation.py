"""One call of a service, and the recovery policy every kind of call shares.

An :class:`Invocation` holds what belongs to one call and not to the handle it was made from: the call id,
who calls, whether a big result may come back in a slab of ours, the log sink, and the escalation attempts.
Sync, async, streaming and spawned calls all go through it, so they recover the same way:

- the daemon lost the service (``NotFound`` whose ``details["missing_service"]`` names it: torn down, or a
  fresh daemon): deploy it again, once, and send the call again under the same id;
- another process restarted the daemon (``AuthError``: a new token; or unreachable at the old address):
  adopt its current address and token from the backend's state, once, and send the call again;
- nothing answers (``ClusterUnavailable`` with ``details["unreachable"]``: e.g. autostopped): relaunch the
  cluster from its spec, once, and send the call again;
- out of memory with an ``on_oom`` policy: the next rung of the ladder (see :mod:`tether.escalation`);
- the caller is interrupted while it waits (Ctrl-C, an orchestrator's timeout or kill: any exception that is
  not an ``Exception``): the remote call is cancelled, unless ``cancel_on_interrupt=False``;
- a call of a saved version is recorded in the registry's usage table, whatever its outcome.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from tether.api.calls import CallHandle
from tether.api.lineage import Edges
from tether.api.logsinks import ambient_sink
from tether.api.records import record_call
from tether.client import LogSink, routes
from tether.errors import AuthError, ClusterUnavailable, NotFound

if TYPE_CHECKING:
    from tether.api.services import _Service
    from tether.escalation import Attempt

__all__ = ["Invocation", "new_call_id"]

CANCEL_TIMEOUT = 5.0


def new_call_id() -> str:
    return os.urandom(16).hex()  # as unique as uuid4().hex, a few µs cheaper per call


class Invocation:
    """One call of ``service.method(*args, **kwargs)``; run it once with one of the ``run_*`` / ``stream_*`` /
    :meth:`spawn` methods."""

    __slots__ = ("args", "attempts", "call_id", "edges", "kwargs", "lend", "method", "on_log", "service",
                 "_recovered")

    def __init__(self, service: _Service, method: str | None, args: tuple[Any, ...], kwargs: dict[str, Any], *,
                 call_id: str | None = None, on_log: LogSink | None = None) -> None:
        self.service = service
        self.method = method
        self.args = args
        self.kwargs = kwargs
        self.lend = call_id is None  # an id nobody else knows: a big result may come back in a slab of ours
        self.call_id = call_id or new_call_id()
        self.edges = Edges()  # lineage the remote code declares (tether.lineage), stored with the usage record
        self.on_log = self.edges.wrap(on_log if on_log is not None else ambient_sink(service.options.on_log))
        self.attempts: list[Attempt] = []
        self._recovered: set[str] = set()

    # -- the recovery policy, once ----------------------------------------------------------------------------------
    def _recover(self, exc: BaseException) -> bool:
        """After ``exc``, make the call sendable again (redeploy or relaunch, each at most once); whether it is."""
        svc = self.service
        if isinstance(exc, NotFound):
            if "deploy" in self._recovered or not svc.name or exc.details.get("missing_service") != svc.name:
                return False
            self._recovered.add("deploy")
            svc._redeploy_spec()
            return True
        stale = isinstance(exc, AuthError) or (isinstance(exc, ClusterUnavailable) and exc.details.get("unreachable"))
        if stale and "refresh" not in self._recovered and svc.cluster is not None and svc.cluster.refresh():
            self._recovered.add("refresh")  # another process restarted the daemon: its new address and token
            return True
        if isinstance(exc, ClusterUnavailable) and exc.details.get("unreachable"):
            if "launch" in self._recovered or not svc._relaunch():
                return False
            self._recovered.add("launch")
            return True
        return False

    def _record(self, started: float, outcome: str) -> None:
        svc = self.service
        if svc.saved_version is not None:
            record_call(svc, call_id=self.call_id, method=self.method, seconds=time.perf_counter() - started,
                        outcome=outcome, edges=self.edges)

    @contextlib.contextmanager
    def _settling(self) -> Iterator[None]:
        """Around one attempt: cancel the remote call if the caller is interrupted, record the outcome."""
        started, outcome = time.perf_counter(), "ok"
        try:
            yield
        except BaseException as exc:
            outcome = type(exc).__name__
            if self._cancels(exc):
                self.cancel_quietly()
            raise
        finally:
            self._record(started, outcome)

    @contextlib.asynccontextmanager
    async def _settling_async(self) -> AsyncIterator[None]:
        """:meth:`_settling` for the async paths."""
        started, outcome = time.perf_counter(), "ok"
        try:
            yield
        except BaseException as exc:
            outcome = type(exc).__name__
            if self._cancels(exc):
                await self.cancel_quietly_async()
            raise
        finally:
            self._record(started, outcome)

    def _cancels(self, exc: BaseException) -> bool:
        return not isinstance(exc, Exception) and self.service.options.cancel_on_interrupt

    def cancel_quietly(self) -> None:
        """Cancel the remote call, ignoring every failure (the caller is already on its way out)."""
        cluster = self.service.cluster
        if cluster is None or cluster._handle is None:
            return
        with contextlib.suppress(Exception):
            self.service.client_on(cluster).sync.send(replace(routes.cancel(self.call_id), timeout=CANCEL_TIMEOUT))

    async def cancel_quietly_async(self) -> None:
        import asyncio  # in an async caller's own loop (already imported there); a sync call needs none

        cluster = self.service.cluster
        if cluster is None or cluster._handle is None:
            return
        with contextlib.suppress(Exception):
            op = replace(routes.cancel(self.call_id), timeout=CANCEL_TIMEOUT)
            await asyncio.wait_for(asyncio.shield(self.service.client_on(cluster).send(op)), CANCEL_TIMEOUT)

    # -- one attempt on the handle's cluster ----------------------------------------------------------------------
    def run_sync(self) -> Any:
        """Run the call to its end (escalating on OOM when the handle has an ``on_oom`` policy)."""
        if self.service.options.on_oom is not None:
            return self._escalate(lambda inv: inv.run_sync_once())
        return self.run_sync_once()

    def run_sync_once(self) -> Any:
        svc = self.service
        cluster = svc._ensure_deployed()
        with self._settling():
            while True:
                try:
                    return svc.client_on(cluster).call_sync(svc.name or "", self.method, self.args, self.kwargs,
                                                    call_id=self.call_id, on_log=self.on_log,
                                                    caller=svc.options.caller, expect=svc.expects, lend=self.lend)
                except Exception as exc:
                    if not self._recover(exc):
                        raise
                    cluster = svc._ensure_deployed()

    async def run_async(self) -> Any:
        """:meth:`run_sync` for an async caller (bring-up, redeploys and escalation run in a thread)."""
        import asyncio  # in an async caller's own loop (already imported there); a sync call needs none

        if self.service.options.on_oom is not None:
            return await asyncio.to_thread(self._escalate, lambda inv: inv.run_sync_once())
        svc = self.service
        cluster = await asyncio.to_thread(svc._ensure_deployed) if svc._needs_preparing() else svc.cluster
        assert cluster is not None
        async with self._settling_async():
            while True:
                try:
                    return await svc.client_on(cluster).call(svc.name or "", self.method, self.args, self.kwargs,
                                                     call_id=self.call_id, on_log=self.on_log,
                                                     caller=svc.options.caller, expect=svc.expects, lend=self.lend)
                except Exception as exc:
                    if not await asyncio.to_thread(self._recover, exc):
                        raise
                    cluster = await asyncio.to_thread(svc._ensure_deployed)

    async def stream_async(self) -> AsyncGenerator[Any, None]:
        """A remote generator's items as they come. Recovery and escalation apply until the first item arrives;
        closing the iterator early cancels the remote generator (unless ``cancel_on_interrupt=False``)."""
        import asyncio  # in an async caller's own loop (already imported there); a sync call needs none

        policy = self.service.options.on_oom
        if policy is None:
            async with contextlib.aclosing(self._stream_once()) as once:
                async for item in once:
                    yield item
            return
        ladder = await asyncio.to_thread(self.service._ladder)
        while True:
            step = await asyncio.to_thread(ladder.next_step)
            target = await asyncio.to_thread(self.service._on_rung, step)
            inv = Invocation(target, self.method, self.args, self.kwargs, call_id=ladder.call_id(self.call_id, step),
                             on_log=self.on_log)
            self.attempts = ladder.attempts
            ladder.calling(step)
            yielded = False
            try:
                async with contextlib.aclosing(inv._stream_once()) as once:
                    async for item in once:
                        yielded = True
                        yield item
            except Exception as exc:
                if yielded:
                    raise
                await asyncio.to_thread(ladder.failed, step, exc)  # raises unless the next rung may help
                continue
            ladder.succeeded(step)
            self.service._remember(ladder, step, target)
            return

    async def _stream_once(self) -> AsyncGenerator[Any, None]:
        import asyncio  # in an async caller's own loop (already imported there); a sync call needs none

        svc = self.service
        cluster = await asyncio.to_thread(svc._ensure_deployed) if svc._needs_preparing() else svc.cluster
        assert cluster is not None
        yielded = False
        async with self._settling_async():
            while True:
                try:
                    async with contextlib.aclosing(svc.client_on(cluster).stream(
                            svc.name or "", self.method, self.args, self.kwargs, call_id=self.call_id,
                            on_log=self.on_log, caller=svc.options.caller, expect=svc.expects,
                            replayable=svc.options.replayable)) as items:
                        async for item in items:
                            yielded = True
                            yield item
                    return
                except Exception as exc:
                    if yielded or not await asyncio.to_thread(self._recover, exc):
                        raise
                    cluster = await asyncio.to_thread(svc._ensure_deployed)

    def stream_sync(self) -> Iterator[Any]:
        """:meth:`stream_async` for a sync caller (the stream runs on the background loop). Closing this
        iterator early, or an interrupt while it waits, closes the stream there at once (and so cancels it)."""
        import asyncio  # the background loop's; a plain sync call needs none

        from tether.client.loop import background_loop

        loop = background_loop()
        items = self.stream_async()
        try:
            while True:
                step: concurrent.futures.Future[Any] = asyncio.run_coroutine_threadsafe(items.__anext__(), loop)
                try:
                    yield step.result()
                except StopAsyncIteration:
                    return
                except BaseException:
                    step.cancel()  # interrupted while waiting: the stream sees CancelledError (and cancels)
                    raise
        finally:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(_close(items), loop).result(CANCEL_TIMEOUT + 5)

    def spawn(self) -> CallHandle:
        """Start the call and return its handle once the daemon registered it (cancel and re-attach work from
        anywhere then). The call runs to its end whatever the spawning caller does; with an ``on_oom`` policy
        the handle's result is the escalated one and ``handle.attempts`` lists the rungs tried."""
        svc = self.service
        self.lend = False  # a spawned call's id is shown: its result must stay fetchable by anyone holding it
        if svc.options.on_oom is not None:
            cluster = self._probe()
            future = _SPAWNED.submit(self._escalate, lambda inv: inv.run_sync_once())
            return CallHandle(svc.client_on(cluster), self.call_id, future, self.on_log, attempts=self.attempts,
                              cluster=cluster, node=svc.node).wait_started()
        cluster = svc._ensure_deployed()
        started = time.perf_counter()
        while True:
            try:
                call_id = svc.client_on(cluster).sync.spawn(svc.name or "", self.method, self.args, self.kwargs,
                                                    call_id=self.call_id, caller=svc.options.caller, expect=svc.expects)
                # a saved version's usage record once the handle has the outcome (its remote duration, its lineage)
                return CallHandle(svc.client_on(cluster), call_id, None, self.on_log, cluster=cluster, node=svc.node,
                                  on_outcome=lambda outcome: self._record(started, outcome))
            except Exception as exc:
                if not self._recover(exc):
                    raise
                cluster = svc._ensure_deployed()

    def _probe(self) -> Any:
        """Before a spawn: make sure the daemon answers and holds the service (relaunch or redeploy as a call
        would), so the spawned call starts at once and its handle can see it."""
        svc = self.service
        cluster = svc._ensure_deployed()
        try:
            names = {r["name"] for r in svc.client_on(cluster).sync.services()}
        except ClusterUnavailable:
            if "launch" in self._recovered or not svc._relaunch():
                raise
            self._recovered.add("launch")
            cluster = svc._ensure_deployed()
            names = {r["name"] for r in svc.client_on(cluster).sync.services()}
        if svc.name not in names and "deploy" not in self._recovered:
            self._recovered.add("deploy")
            svc._redeploy_spec()
        return cluster

    # -- escalation -------------------------------------------------------------------------------------------------
    def _escalate(self, once: Callable[[Invocation], Any]) -> Any:
        """Run ``once`` on the rungs of the handle's ladder until one succeeds (blocking)."""
        ladder = self.service._ladder()
        self.attempts = ladder.attempts
        while True:
            step = ladder.next_step()
            target = self.service._on_rung(step)
            inv = Invocation(target, self.method, self.args, self.kwargs, call_id=ladder.call_id(self.call_id, step),
                             on_log=self.on_log)
            inv.lend = self.lend
            ladder.calling(step)
            try:
                value = once(inv)
            except BaseException as exc:
                ladder.failed(step, exc)  # raises unless the next rung may help
                continue
            ladder.succeeded(step)
            self.service._remember(ladder, step, target)
            return value


async def _close(items: AsyncGenerator[Any, None]) -> None:
    """Close an async generator once it is not running (an interrupted step may still be finishing)."""
    import asyncio  # in the loop that runs the stream

    while getattr(items, "ag_running", False):
        await asyncio.sleep(0.005)
    await items.aclose()


_SPAWNED = concurrent.futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="tether-spawn")
