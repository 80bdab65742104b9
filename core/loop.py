"""The sync facade: one background event loop per process runs the async core for sync callers."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from typing import Any, TypeVar

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


def _shutdown(loop: asyncio.AbstractEventLoop) -> None:
    from tether.client import close_all

    with contextlib.suppress(Exception):  # best effort at exit
        asyncio.run_coroutine_threadsafe(close_all(), loop).result(timeout=2)
    loop.call_soon_threadsafe(loop.stop)


def run_sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on the background loop and wait for it (never call from that loop itself)."""
    loop = background_loop()
    fut = asyncio.run_coroutine_threadsafe(coro, loop)
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
