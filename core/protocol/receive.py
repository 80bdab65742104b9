"""Receiving a known number of bytes straight into a buffer of the caller's, on an asyncio connection whose
protocol is something else (a stream reader, aiohttp's request handler).

:class:`ReceiveInto` stands in for the connection's protocol until the bytes are in: the transport receives into
the buffer (``recv_into``, or the TLS layer's ``read`` into it), where a stream protocol would be handed a new
``bytes`` per read and copy it on. It never takes a byte past the end of the buffer (each read is at most what is
left of it), and it gives the connection back to the protocol it replaced the moment the buffer is full, so what
follows on the connection reaches that protocol as if nothing had happened. A closed connection fails
:attr:`ReceiveInto.done` and is passed on to the replaced protocol too.

The client receives a big response body this way (``tether.client.wire``), the daemon a big call body that
follows the request's head (``tether.daemon.bodies``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["ReceiveInto"]


class ReceiveInto(asyncio.BufferedProtocol):
    """Receive into ``view[pos:]`` on ``transport``, then hand the connection back (see the module's text).

    ``on_read`` runs after every read (a read deadline's bookkeeping); ``closed`` is the text of the error a
    connection closed before the buffer is full raises. Install with :meth:`start`, then await :attr:`done`.
    """

    def __init__(self, transport: asyncio.BaseTransport, view: memoryview, pos: int = 0, *,
                 on_read: Callable[[], None] | None = None, closed: str = "the connection closed mid-body") -> None:
        self.transport = transport
        self.orig: Any = transport.get_protocol()
        self.view = view
        self.pos = pos
        self.on_read = on_read
        self.closed = closed
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def start(self) -> None:
        """Take the connection's reads from now on (the buffer may already be full: then nothing changes)."""
        if self.pos >= len(self.view):
            self.done.set_result(None)
            return
        self.transport.set_protocol(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view[self.pos:]

    def buffer_updated(self, nbytes: int) -> None:
        self.pos += nbytes
        if self.on_read is not None:
            self.on_read()
        if self.pos >= len(self.view):
            self.give_back()
            if not self.done.done():
                self.done.set_result(None)

    def give_back(self) -> None:
        """The connection's reads back to the protocol this one replaced (safe to call more than once)."""
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.orig)

    def _fail(self, exc: BaseException) -> None:
        self.give_back()
        if not self.done.done():
            self.done.set_exception(exc)

    def eof_received(self) -> bool | None:
        self._fail(ConnectionResetError(self.closed))
        return self.orig.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError(self.closed))
        self.orig.connection_lost(exc)

    def pause_writing(self) -> None:
        self.orig.pause_writing()

    def resume_writing(self) -> None:
        self.orig.resume_writing()
