"""Talking to a daemon: :class:`DaemonClient` (a typed method per route, calls with their retries) and its sync
twin (``client.sync``), over one transport seam (blocking sockets, asyncio streams, an
in-process :class:`MockTransport` for tests); the outcome of a call's frames, same-host slabs, the health probe
and the background event loop behind the sync API.

Depends only on ``tether.protocol``, ``tether.errors`` and ``tether.specs``.
"""

import typing as _typing

from tether.client.daemon import AsyncClient, DaemonClient
from tether.client.health import probe_health
from tether.client.mock import MockRequest, MockResponse, MockTransport
from tether.client.outcome import LogSink, default_log_sink
from tether.client.syncclient import SyncDaemonClient
from tether.client.transport import Dropped, Unreachable, mount

if _typing.TYPE_CHECKING:
    from tether.client.wire import close_all

__all__ = [
    "AsyncClient", "DaemonClient", "Dropped", "LogSink", "MockRequest", "MockResponse", "MockTransport",
    "SyncDaemonClient", "Unreachable", "close_all", "default_log_sink", "mount", "probe_health",
]


def __getattr__(name: str) -> object:
    """``close_all`` from :mod:`tether.client.wire` on first use: the asyncio transport is loaded with the first
    async request, and a process that only makes sync calls never imports asyncio."""
    if name == "close_all":
        from tether.client.wire import close_all

        return close_all
    raise AttributeError(f"module 'tether.client' has no attribute {name!r}")
