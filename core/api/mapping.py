"""``fn.map(xs, ys)`` and ``fn.starmap([(x, y), ...])``: many calls of one service, run concurrently, results in
order. The one place a handle's calls fan out (a replica pool extends :func:`map_calls` with where each call goes).

The calls are ordinary async calls (:meth:`Invocation.run_async`) on the background loop, at most ``concurrency``
in flight, so each one recovers and escalates as a single call would. The first failure is raised and the calls
still running are cancelled (remote calls too, like any interrupted call); an interrupt of the caller cancels
them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from tether.client.loop import run_sync
from tether.errors import ConfigError

__all__ = ["DEFAULT_CONCURRENCY", "map_calls", "zip_args"]

DEFAULT_CONCURRENCY = 32


def zip_args(iterables: tuple[Iterable[Any], ...]) -> list[tuple[Any, ...]]:
    """``map``'s arguments as one tuple per call (the shortest iterable ends it, as the builtin ``map``)."""
    return [tuple(args) for args in zip(*iterables, strict=False)]


def map_calls(handle: Any, method: str | None, arg_tuples: Iterable[Iterable[Any]],
              kwargs: dict[str, Any] | None = None, *, concurrency: int = DEFAULT_CONCURRENCY) -> list[Any]:
    """Call ``handle`` (its ``method``) once per argument tuple, ``kwargs`` added to each; the results in order."""
    calls = [tuple(args) for args in arg_tuples]
    if not calls:
        return []
    if concurrency < 1:
        raise ConfigError(f"concurrency={concurrency}: at least 1 call at a time")
    kind = handle.methods.get(method or "__call__", "sync")
    if kind in ("gen", "agen"):
        raise ConfigError(f"{handle.name!r} is a generator: map collects single results",
                          hint="iterate over its calls yourself, or return a list")
    if handle._needs_preparing():  # bring the cluster up and check the version once, not in every call
        handle._ensure_deployed()
    return list(run_sync(_gather(handle, method, calls, dict(kwargs or {}), concurrency)))


async def _gather(handle: Any, method: str | None, calls: list[tuple[Any, ...]], kwargs: dict[str, Any],
                  concurrency: int) -> list[Any]:
    gate = asyncio.Semaphore(concurrency)

    async def one(args: tuple[Any, ...]) -> Any:
        async with gate:
            return await handle._invoke(method, args, kwargs).run_async()

    tasks = [asyncio.ensure_future(one(args)) for args in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:  # a failure or an interrupt: the calls still running are cancelled (each cancels its remote call)
        pending = [t for t in tasks if not t.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
