"""Real aiohttp servers for the daemon's body tests: an app served on 127.0.0.1 (TLS with a self-signed
certificate when asked) while a blocking client runs in a thread."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from tether.daemon.tls import server_context
from tether.protocol.tls import ensure_self_signed

T = TypeVar("T")


def self_signed(tmp_path: Path) -> ssl.SSLContext:
    """A server context with a new self-signed certificate under ``tmp_path``."""
    ensure_self_signed(tmp_path / "cert.pem", tmp_path / "key.pem")
    return server_context(tmp_path / "cert.pem", tmp_path / "key.pem")


async def serve_while(app: web.Application, tls: ssl.SSLContext | None, client: Callable[[int], T]) -> T:
    """Serve ``app`` on a free port while ``client(port)`` runs in a thread; what it returned."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        return await asyncio.get_running_loop().run_in_executor(None, client, port)
    finally:
        await runner.cleanup()
