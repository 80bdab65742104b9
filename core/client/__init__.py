"""Talking to a daemon: the client, its transports (lean HTTP/1.1 sync and async, aiohttp for TLS), the
outcome of a call's frames, same-host slabs, and the background event loop behind the sync API.

Depends only on ``tether.protocol``, ``tether.errors`` and ``tether.specs``.
"""

from tether.client.daemon import AsyncClient
from tether.client.outcome import LogSink, default_log_sink
from tether.client.sessions import close_all

__all__ = ["AsyncClient", "LogSink", "close_all", "default_log_sink"]
