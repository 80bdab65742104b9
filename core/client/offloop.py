"""Big plain bodies of the asyncio transport moved off the event loop, straight between the socket and the
caller's objects.

An asyncio transport copies what the socket does not take at once into its own buffer, and a stream reader hands
each read on as a new ``bytes``. For a call body or result of megabytes that is one to two extra copies of it, and
a loop wakeup per read. Here a thread of the transfer's own (a daemon thread: :func:`run_off_loop`) does the I/O
itself on a duplicate of the connection's descriptor:

- :func:`send_off_loop` sends the body's pieces with ``os.write`` while the transport, its buffer empty, writes
  nothing (the request's head is out: the caller drained it);
- :class:`OffLoopPayload` is the file a big pickled result frame's unpickler reads in that thread (``read``,
  ``readinto``, ``readline``): what the stream reader held already, then ``recv_into`` straight into the objects
  the pickle becomes, while the transport's reading is paused. It never reads past the frame's end, and it gives
  the connection's reads back to the transport when done.

Each waits for the socket with ``poll`` and a deadline of the connection's read timeout; a wake pipe stops the
thread when the awaiting task is cancelled. Only plain connections (TCP or unix): TLS keeps the transport's path.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["OffLoopPayload", "OffLoopSocket", "plain", "run_off_loop", "send_off_loop"]


def plain(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` is a plain socket connection (not TLS) this module can move bytes on."""
    return transport.get_extra_info("sslcontext") is None and transport.get_extra_info("socket") is not None


class OffLoopSocket:
    """A duplicate of a transport's socket descriptor for one transfer's thread, with a wake pipe to stop it."""

    def __init__(self, transport: asyncio.BaseTransport, timeout: float,
                 on_io: Callable[[], None] | None = None) -> None:
        self.fd = os.dup(transport.get_extra_info("socket").fileno())  # ours: valid even if the transport closes
        self._wake_r, self._wake_w = os.pipe()
        self.timeout = timeout
        self.on_io = on_io
        self.stopped = False
        self.closed = False

    def wait(self, event: int) -> None:
        """Block until the socket is ready for ``event`` (POLLIN / POLLOUT); TimeoutError after the timeout,
        ConnectionAbortedError once :meth:`stop` was called."""
        poller = select.poll()
        poller.register(self.fd, event)
        poller.register(self._wake_r, select.POLLIN)
        ready = poller.poll(self.timeout * 1000)
        if self.stopped or any(fd == self._wake_r for fd, _ in ready):
            raise ConnectionAbortedError("the call was cancelled")
        if not ready:
            raise TimeoutError(f"nothing moved on the connection in {self.timeout:g}s")

    def send_all(self, parts: Sequence[Any]) -> None:
        for part in parts:
            with memoryview(part) as whole, whole.cast("B") as view:
                off = 0
                while off < len(view):
                    try:
                        off += os.write(self.fd, view[off:])
                    except BlockingIOError:
                        self.wait(select.POLLOUT)
                        continue
                    if self.on_io is not None:
                        self.on_io()

    def recv_into(self, view: memoryview) -> int:
        """At least one byte into ``view`` (0: the peer closed)."""
        while True:
            try:
                n = os.readv(self.fd, [view])  # recv_into on the raw descriptor
            except BlockingIOError:
                self.wait(select.POLLIN)
                continue
            if self.on_io is not None:
                self.on_io()
            return n

    def stop(self) -> None:
        """Wake the thread (from the loop's thread); it raises ConnectionAbortedError."""
        self.stopped = True
        if not self.closed:
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close the duplicate and the wake pipe (once; on the loop's thread, once the thread is out)."""
        if self.closed:
            return
        self.closed = True
        for fd in (self.fd, self._wake_r, self._wake_w):
            os.close(fd)


async def run_off_loop(sock: OffLoopSocket, fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in a thread of its own; a cancelled await stops the thread (its I/O raises). The socket
    duplicate is closed on the loop once the thread is out of it (so a late :meth:`OffLoopSocket.stop` never
    writes to a closed descriptor). A daemon thread, not the loop's executor: a transfer in progress never holds
    up the interpreter's exit, and never waits for an executor slot that other work holds."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, exc: BaseException | None) -> None:  # on the loop
        sock.close()
        if done.done():  # the await was cancelled: nobody wants the outcome
            return
        if exc is not None:
            done.set_exception(exc)
        else:
            done.set_result(result)

    def run() -> None:
        try:
            outcome: tuple[Any, BaseException | None] = (fn(*args), None)
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting call
            outcome = (None, exc)
        try:
            loop.call_soon_threadsafe(settle, *outcome)
        except RuntimeError:  # the loop is closed: nobody will stop this socket any more
            sock.close()

    threading.Thread(target=run, name="tether-offloop", daemon=True).start()
    try:
        return await done
    except asyncio.CancelledError:
        sock.stop()
        raise


async def send_off_loop(writer: asyncio.StreamWriter, parts: Sequence[Any], timeout: float,
                        on_io: Callable[[], None] | None = None) -> None:
    """Send ``parts`` on ``writer``'s plain connection from the transfer's thread (see the module's text)."""
    await writer.drain()
    if writer.transport.get_write_buffer_size():  # pragma: no cover - drain leaves at most the low-water mark
        for part in parts:
            writer.write(part)
        await writer.drain()
        return
    sock = OffLoopSocket(writer.transport, timeout, on_io)
    await run_off_loop(sock, sock.send_all, parts)


class OffLoopPayload:
    """A big pickled frame's payload: a file its unpickler reads in the transfer's thread (see the module's text).

    :meth:`feed` runs ``fn(kind, self)`` there (``tether.client.outcome.Outcome.feed``, which unpickles it and
    calls :meth:`finish`); the connection's reads are the transport's again when it returns.
    """

    def __init__(self, reader: asyncio.StreamReader, transport: asyncio.Transport, size: int, timeout: float, *,
                 on_io: Callable[[], None] | None = None, on_done: Callable[[bool], None],
                 failed: Callable[[BaseException], BaseException]) -> None:
        self.size = size
        self.left = size
        self._reader = reader
        self._transport = transport
        self._timeout = timeout
        self._on_io = on_io
        self._on_done = on_done  # (in the loop's thread) whether the payload was read whole
        self._failed = failed  # the typed error to raise for a failed read (the link dropped, a timeout)
        self._held = memoryview(b"")
        self._sock: OffLoopSocket | None = None

    def __len__(self) -> int:
        return self.size

    async def feed(self, fn: Callable[[int, Any], Any], kind: int) -> Any:
        """``fn(kind, self)`` in the transfer's thread, the socket's reads its own meanwhile."""
        transport = self._transport
        transport.pause_reading()
        buffered: bytearray = self._reader._buffer  # type: ignore[attr-defined]  # what the reader holds already
        k = min(len(buffered), self.left)
        with memoryview(buffered) as view:
            self._held = memoryview(bytes(view[:k]))  # one copy (a bytearray slice would be one more)
        del buffered[:k]
        try:
            self._sock = OffLoopSocket(transport, self._timeout, self._on_io)
        except OSError as exc:  # the connection closed under us: no descriptor left to duplicate
            self._on_done(False)
            raise self._failed(exc) from exc
        try:
            return await run_off_loop(self._sock, fn, kind, self)
        finally:
            whole = not self.left
            if whole and not transport.is_closing():
                if getattr(self._reader, "_paused", False):
                    self._reader._paused = False  # type: ignore[attr-defined]
                transport.resume_reading()
            self._on_done(whole)  # not whole: the connection is closed (its next byte is mid-payload)

    # -- the file the unpickler reads (in the transfer's thread) ------------------------------------------------------
    def readinto(self, buf: Any) -> int:
        with memoryview(buf) as whole, whole.cast("B") as flat:
            n = min(len(flat), self.left)
            got = 0
            if self._held:
                got = min(n, len(self._held))
                flat[:got] = self._held[:got]
                self._held = self._held[got:]
            while got < n:
                assert self._sock is not None
                try:
                    k = self._sock.recv_into(flat[got:n])
                    if not k:
                        raise ConnectionResetError("the daemon closed the connection mid-result")
                except OSError as exc:  # TimeoutError and a cancelled call's ConnectionAbortedError too
                    self.left -= got
                    raise self._failed(exc) from exc
                got += k
        self.left -= n
        return n

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        buf = bytearray(n)
        self.readinto(buf)
        return bytes(buf)

    def readline(self, limit: int = -1) -> bytes:
        limit = self.left if limit < 0 else min(limit, self.left)
        line = bytearray()
        while len(line) < limit:
            ch = self.read(1)
            line += ch
            if ch == b"\n":
                break
        return bytes(line)

    def finish(self) -> None:
        """Skip the rest of the payload (nothing when it was read whole)."""
        while self.left:
            self.read(min(self.left, 1 << 20))

