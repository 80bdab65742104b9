"""The sync facade: one background event loop per process runs the async core for sync callers."""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

from tether.client.wire import close_all

T = TypeVar("T")

_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None


def background_loop() -> asyncio.AbstractEventLoop:
    """The process's tether loop, started on first use in a daemon thread."""
    global _loop
    if _loop is not None and _loop.is_running():
        return _loop
    with _lock:
        if _loop is None or not _loop.is_running():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="tether-loop", daemon=True).start()
            ready.wait()
            _loop = loop
            atexit.register(_shutdown, loop)
    return _loop


def run_threadsafe(coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
    """Start ``coro`` on the background loop; its future, for a sync caller to wait on."""
    return asyncio.run_coroutine_threadsafe(coro, background_loop())


def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    with contextlib.suppress(Exception):  # best effort at exit
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=2)
    loop.call_soon_threadsafe(loop.stop)


class _ThreadLoop:
    """A private event loop for one calling thread; its connections close when the thread's locals go."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if not self.loop.is_closed():
                self.loop.run_until_complete(close_all())
                self.loop.run_until_complete(self.loop.shutdown_asyncgens())
                self.loop.close()


_local = threading.local()


def _thread_loop() -> asyncio.AbstractEventLoop | None:
    """This thread's private loop, or None when a loop already runs here (a notebook, an async app)."""
    try:
        asyncio.get_running_loop()
        return None
    except RuntimeError:
        pass
    holder = getattr(_local, "holder", None)
    if holder is None or holder.loop.is_closed():
        holder = _local.holder = _ThreadLoop()
        if threading.current_thread() is threading.main_thread():
            atexit.register(holder.__del__)
    return holder.loop


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` to completion for a sync caller.

    On this thread's private loop when no loop runs here (no thread hand-off: the fast path), else on the
    background loop. Never call it from inside the background loop itself.
    """
    loop = _thread_loop()
    if loop is not None:
        task = loop.create_task(asyncio.wait_for(coro, timeout) if timeout else coro)
        try:
            return loop.run_until_complete(task)
        except BaseException:
            if not task.done():  # interrupted (KeyboardInterrupt, a signal): stop waiting, leave nothing pending
                task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(task)
            raise
    fut = asyncio.run_coroutine_threadsafe(coro, background_loop())
    try:
        return fut.result(timeout)
    except BaseException:
        fut.cancel()
        raise


def iterate_sync(agen: AsyncIterator[T]) -> Iterator[T]:
    """Turn an async iterator running on the background loop into a sync iterator."""
    loop = background_loop()
    it = agen.__aiter__()
    while True:
        try:
            yield asyncio.run_coroutine_threadsafe(it.__anext__(), loop).result()  # type: ignore[arg-type]
        except StopAsyncIteration:
            return
