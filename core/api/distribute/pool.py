"""``.distribute("pool", num_replicas=N)``: N replicas of a service, each its own worker process, spread over
the cluster's nodes; every call goes to the replica with the least outstanding work.

A replica that dies (a segfault, the OOM killer) fails only the calls it was running, with the daemon's typed
``WorkerDied``/``OutOfMemory``; its node's daemon starts it again on its next call, with the service restored.
``map``/``starmap`` return results in input order, ``imap`` yields them in that order as soon as each is
known. An interrupted, cancelled or timed-out map cancels every call it still has running.
``gpus_per_replica=g``: each node's GPUs are partitioned among its replicas with ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from tether.api.distribute.placement import Copy, Placement, prefixed
from tether.api.mapping import zip_args
from tether.client.loop import background_loop, run_sync
from tether.client.transport import new_call_id
from tether.errors import CallTimeout, ClusterUnavailable, NotFound, TetherError

if TYPE_CHECKING:
    from tether.api.services import _Service

__all__ = ["Pool"]

_DONE = object()


class Pool:
    """Replicas of one service; call it like the function, or ``map``/``starmap``/``imap`` over many inputs."""

    def __init__(self, service: _Service, num_replicas: int, replicas_per_node: int | None = None, *,
                 in_flight: int = 8, gpus_per_replica: int | None = None) -> None:
        self.service = service
        self.in_flight = in_flight
        """Calls at most in flight per replica during a map."""
        self.placement = Placement(service, "replica", num_replicas, replicas_per_node,
                                   gpus_per_copy=gpus_per_replica)  # fmt: skip
        self.placement.deploy()
        self._lock = threading.Lock()
        self._turn = 0

    @property
    def replicas(self) -> list[Copy]:
        return self.placement.copies

    def _pick(self) -> Copy:
        """The replica with the least outstanding calls (ties taken in turn)."""
        with self._lock:
            n = len(self.replicas)
            self._turn = (self._turn + 1) % n
            order = self.replicas[self._turn:] + self.replicas[:self._turn]
            best = min(order, key=lambda c: c.outstanding)
            best.outstanding += 1
            return best

    def _done(self, c: Copy) -> None:
        with self._lock:
            c.outstanding -= 1

    async def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        c = self._pick()
        call_id = new_call_id()
        sink = prefixed(self.service.options.on_log, f"[replica {c.index}] ")
        client = c.node.client()
        try:
            try:
                return await client.call(c.service, None, args, kwargs, call_id=call_id, on_log=sink,
                                         caller=self.service.options.caller)  # fmt: skip
            except NotFound as exc:  # the node's daemon lost the replica (restarted fresh, env deleted): once more
                if exc.details.get("missing_service") != c.service:
                    raise
                await client.deploy(c.spec, replace_env=True)
            except ClusterUnavailable as exc:  # the client's tunnel to the node is gone: reopen it, once more
                if not exc.details.get("unreachable") or c.node.is_head:
                    raise
                await asyncio.to_thread(self.placement.reconnect, c)
                client = c.node.client()
            return await client.call(c.service, None, args, kwargs, call_id=call_id, on_log=sink,
                                     caller=self.service.options.caller)  # fmt: skip
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted, cancelled, timed out: stop the remote call
                with contextlib.suppress(Exception):
                    await asyncio.shield(client.cancel(call_id))
            raise
        finally:
            self._done(c)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(args, kwargs)

    def call(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> Any:
        """One call on the least busy replica; ``timeout``: :class:`CallTimeout` (the call is cancelled)."""
        try:
            return run_sync(self._call(tuple(args), dict(kwargs or {})), timeout=timeout)
        except TimeoutError as exc:
            raise CallTimeout(f"no answer within {timeout}s", details={"service": self.service.name}) from exc

    # -- many calls ---------------------------------------------------------------------------------------------------
    def map(self, *iterables: Iterable[Any], timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """``[fn(*xs, **kwargs) for xs in zip(*iterables)]`` over the replicas, results in input order (as
        ``Function.map``, whose calls all go to one service)."""
        return list(self.imap(*iterables, timeout=timeout, **kwargs))

    def starmap(self, argtuples: Iterable[Iterable[Any]], timeout: float | None = None, **kwargs: Any) -> list[Any]:
        """``[fn(*args, **kwargs) for args in argtuples]`` over the replicas, results in input order."""
        return list(self.istarmap(argtuples, timeout=timeout, **kwargs))

    def imap(self, *iterables: Iterable[Any], timeout: float | None = None, **kwargs: Any) -> Iterator[Any]:
        """Results in input order, each as soon as it and those before it are known."""
        return self.istarmap(zip_args(iterables), timeout=timeout, **kwargs)

    def istarmap(self, argtuples: Iterable[Iterable[Any]], timeout: float | None = None,
                 **kwargs: Any) -> Iterator[Any]:
        """:meth:`imap` with argument tuples. The first failure is raised in its place; the calls after it
        that were not started yet are never started."""
        items = [tuple(a) for a in argtuples]
        out: queue.Queue[tuple[int, bool, Any]] = queue.Queue()
        fut = asyncio.run_coroutine_threadsafe(self._run(items, kwargs, out, timeout), background_loop())
        show = os.environ.get("TETHER_PROGRESS", "1") != "0" and len(items) > 1
        return self._ordered(items, out, fut, show)

    def _ordered(self, items: list[tuple[Any, ...]], out: queue.Queue[tuple[int, bool, Any]],
                 fut: concurrent.futures.Future[None], show: bool) -> Iterator[Any]:
        done: dict[int, tuple[bool, Any]] = {}
        nxt = 0
        try:
            from rich.progress import Progress

            with Progress(transient=True, disable=not show) as bar:
                task = bar.add_task(f"{self.service.name} x{len(self.replicas)}", total=len(items))
                while nxt < len(items):
                    i, ok, value = out.get()
                    if i < 0:  # the run ended early: a failure or a timeout
                        raise value
                    done[i] = (ok, value)
                    bar.advance(task)
                    while nxt in done:
                        ok, value = done.pop(nxt)
                        nxt += 1
                        if not ok:
                            raise value
                        yield value
        finally:
            if not fut.done():
                fut.cancel()  # cancels the calls still running
                with contextlib.suppress(BaseException):
                    fut.result(timeout=10)

    async def _run(self, items: list[tuple[Any, ...]], kwargs: dict[str, Any],
                   out: queue.Queue[tuple[int, bool, Any]], timeout: float | None) -> None:
        todo = iter(range(len(items)))
        failed = asyncio.Event()

        async def lane() -> None:
            for i in todo:
                if failed.is_set():
                    return
                try:
                    out.put((i, True, await self._call(items[i], kwargs)))
                except Exception as exc:  # noqa: BLE001 - handed to the caller in its place
                    failed.set()
                    out.put((i, False, exc))

        lanes = [asyncio.ensure_future(lane()) for _ in range(min(len(items), self.in_flight * len(self.replicas)))]
        try:
            await asyncio.wait_for(asyncio.gather(*lanes), timeout)
        except TimeoutError:
            out.put((-1, False, CallTimeout(f"map over {self.service.name!r} did not finish within {timeout}s",
                                            details={"service": self.service.name})))  # fmt: skip
        except TetherError as exc:  # pragma: no cover - lanes hand their errors over themselves
            out.put((-1, False, exc))
        finally:
            for t in lanes:
                t.cancel()
            await asyncio.gather(*lanes, return_exceptions=True)

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def status(self) -> list[dict[str, Any]]:
        """Each replica: its index, node, service, env and calls outstanding from this process."""
        return [{"replica": c.index, "node": c.node.index, "host": c.node.host, "service": c.service,
                 "env": c.env, "outstanding": c.outstanding} for c in self.replicas]  # fmt: skip

    def delete(self) -> None:
        """Delete every replica (their worker processes stop on every node)."""
        self.placement.remove()

    def __repr__(self) -> str:
        return f"Pool({self.service.name!r}, replicas={len(self.replicas)})"
