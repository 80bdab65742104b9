"""The aiohttp connection pools of each event loop (TLS daemons and JSON routes); closed with their loop."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from tether.client import wire

__all__ = ["CONNECT_TIMEOUT", "READ_TIMEOUT", "close_all", "loop_pools", "session"]

CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0  # the daemon sends a heartbeat frame at least every 10 s while a call runs
_sessions: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str | None, aiohttp.ClientSession]] = (
    weakref.WeakKeyDictionary())


def loop_pools() -> dict[str | None, aiohttp.ClientSession]:
    """The aiohttp sessions of the running loop. On a loop's first use, a hook is set that closes them and the
    loop's :mod:`tether.client.wire` connections when the loop shuts down (``asyncio.run`` ends, ``close_all``)."""
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
        await wire.close_pools()
        for session in list(pools.values()):
            await session.close()


async def close_all() -> None:
    """Close the connection pools of the running loop."""
    await wire.close_pools()
    pools = _sessions.pop(asyncio.get_running_loop(), None) or {}
    for session in pools.values():
        await session.close()
