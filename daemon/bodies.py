"""Big call bodies of clients that are not on this host (TCP, with or without TLS), without full copies here.

A same-host client hands its big arguments over in ``/dev/shm`` and maps big results itself. A client on another
host sends and receives them through the socket. Here:

- :func:`receive_args`: a pickle body of ``SHM_THRESHOLD`` bytes or more with a ``Content-Length`` is streamed
  from the socket into one of the daemon's reusable argument files (:class:`ArgSlabs`), which the call's worker
  takes as a lent slab (``_lent``, as a same-host client's, see ``tether.daemon.slabs``): it maps the file once and
  unpickles in place. The pages of a reused file are already allocated, so the daemon's one copy (socket buffer
  -> file) lands in warm memory, and no file is allocated, zero-filled and freed per call.
  A client that knows this daemon takes bodies that follow (``tether.protocol.headers.BODY_FOLLOWS``) sends the
  head with ``Content-Length: 0`` and the pickle only after the daemon's ``100 Continue``: the pickle is then
  received straight into a mapping of the argument file (:func:`receive_following`), past aiohttp's HTTP parser,
  which copies every piece it reads (and the event loop makes a ``bytes`` of each read before that). For a 10 MB
  body that is ~4 ms against ~13 ms on this machine.
- :func:`result_body`: a result (or item) the worker left in ``/dev/shm`` is sent from its file: by ``sendfile``
  over a plain socket (the kernel copies the file's pages to the socket; nothing passes through the daemon's
  memory), from a read-only mapping in 1 MiB slices over TLS (the TLS layer copies what it encrypts, never the
  whole payload at once).

The reuse rule for argument files: a file goes back to the pool only once its call's RESULT or ERROR frame has
arrived (the worker has unpickled the arguments and let go of its view long before); after a refused or short
body, or a call that could not be handed to its worker, the file is removed, never reused.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import mmap
import os
import select
from typing import Any

from aiohttp import web

from tether.daemon.calls import Call, frame_body
from tether.daemon.fills import Fill
from tether.errors import PayloadTooLarge, SerializationError
from tether.protocol.headers import BODY_FOLLOWS
from tether.protocol.receive import ReceiveInto
from tether.protocol.shm import SHM_DIR, SHM_THRESHOLD, shm_name, shm_share, unlink_quietly

__all__ = ["ArgSlab", "ArgSlabs", "ShmBody", "following", "read_body", "receive_args", "receive_following",
           "release_when_done", "result_body", "result_view", "slabs"]

_BATCH = 1024 * 1024  # body bytes gathered per write
_SLICE = 1024 * 1024  # bytes per write of a mapped body over TLS
_STEP = 1024 * 1024  # argument files grow in whole MiB
READ_STALL_MS = 300_000  # a client that takes none of a result for this long is dropped
BODY_STALL_S = float(os.environ.get("TETHER_BODY_STALL_S", "120"))
"""A client that sends no byte of a body that follows for this long is dropped."""
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class ArgSlab:
    """One reusable argument file of the daemon's: open, ``size`` bytes allocated; ``length`` of them hold the
    current call's pickle."""

    __slots__ = ("_map", "fd", "length", "path", "size")

    def __init__(self) -> None:
        self.path = shm_name()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.size = 0
        self.length = 0
        self._map: mmap.mmap | None = None

    def mapped(self) -> mmap.mmap:
        """A shared mapping of the whole file (kept for the next call; a new one once the file grew)."""
        if self._map is None or len(self._map) != self.size:
            if self._map is not None:
                with contextlib.suppress(BufferError):  # a view is still held: the old mapping goes with it
                    self._map.close()
            self._map = mmap.mmap(self.fd, self.size)
        return self._map

    def reserve(self, n: int) -> None:
        """At least ``n`` bytes allocated now (``OSError`` for a full ``/dev/shm``, before a byte is written)."""
        if n > self.size:
            new = -(-n // _STEP) * _STEP
            os.posix_fallocate(self.fd, 0, new)
            self.size = new

    def lent(self) -> dict[str, Any]:
        """The CALL meta handing this file to the worker (``tether.daemon.slabs``' ``_lent``)."""
        return {"_lent": [self.path, self.length]}

    def discard(self) -> None:
        if self._map is not None:
            with contextlib.suppress(BufferError):  # a view is still held: the mapping goes with it
                self._map.close()
            self._map = None
        os.close(self.fd)
        unlink_quietly(self.path)


class ArgSlabs:
    """The daemon's pool of free argument files: at most ``keep`` of them and ``max_bytes`` in all; one beyond
    that is removed when its call ends."""

    def __init__(self, keep: int = 4, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.keep = keep
        self.max_bytes = shm_share(max_bytes)
        self.free: list[ArgSlab] = []

    def take(self, length: int) -> ArgSlab:
        """A free file for ``length`` bytes: the smallest big enough, else the biggest (grown), else a new one."""
        fits = [s for s in self.free if s.size >= length]
        pick = min(fits, key=lambda s: s.size) if fits else max(self.free, key=lambda s: s.size, default=None)
        if pick is None:
            return ArgSlab()
        self.free.remove(pick)
        return pick

    def give_back(self, slab: ArgSlab) -> None:
        slab.length = 0
        if len(self.free) >= self.keep or sum(s.size for s in self.free) + slab.size > self.max_bytes:
            slab.discard()
        else:
            self.free.append(slab)

    def close(self) -> None:
        for slab in self.free:
            slab.discard()
        self.free.clear()


slabs = ArgSlabs()  # the daemon process's pool
atexit.register(slabs.close)  # a daemon killed outright: any daemon's sweep of dead processes' files


def following(request: web.Request, max_body: int) -> int | None:
    """The length of a body that follows the request's head (:data:`~tether.protocol.headers.BODY_FOLLOWS`), None
    for an ordinary body; a typed error for a bad announcement (nothing was read)."""
    value = request.headers.get(BODY_FOLLOWS)
    if value is None:
        return None
    if not value.isdigit() or len(value) > 19:
        raise SerializationError(f"{BODY_FOLLOWS} {value[:40]!r} is not a byte count",
                                 details={"reason": "bad_body_follows"})
    if request.body_exists or request.method == "GET":
        raise SerializationError(f"a request with {BODY_FOLLOWS} has no body of its own (Content-Length: 0)",
                                 hint=f"send the head with Content-Length: 0, then the {value} bytes after "
                                      "the daemon's 100 Continue", details={"reason": "bad_body_follows"})
    length = int(value)
    if length > max_body:
        raise PayloadTooLarge(f"request body over the daemon's limit of {max_body} bytes",
                              details={"limit": max_body})
    return length


async def receive_following(request: web.Request, view: memoryview) -> None:
    """Answer ``100 Continue`` and receive the body that follows straight into ``view`` (all of it: the
    connection is left at the start of the next request). A client that closes the connection first, or sends
    nothing for :data:`BODY_STALL_S`, is dropped (a typed error here)."""
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the connection is gone")
    loop = asyncio.get_running_loop()
    last = loop.time()

    def on_read() -> None:
        nonlocal last
        last = loop.time()

    into = ReceiveInto(transport, view, on_read=on_read, closed="the client closed the connection mid-body")
    into.start()
    transport.write(_CONTINUE)
    try:
        while not into.done.done():
            await asyncio.wait([into.done], timeout=max(0.01, last + BODY_STALL_S - loop.time()))
            if not into.done.done() and loop.time() - last >= BODY_STALL_S:
                into.give_back()
                transport.abort()  # the rest may still come: the connection cannot carry a next request
                raise SerializationError(f"the client sent none of its body for {BODY_STALL_S:.0f} s "
                                         f"({into.pos} of {len(view)} bytes in)", details={"reason": "stalled_body"})
        try:
            into.done.result()
        except OSError as exc:
            raise SerializationError(f"the request body ended after {into.pos} of its {len(view)} bytes: {exc}",
                                     details={"reason": "short_body"}) from None
    finally:
        into.give_back()


async def read_body(request: web.Request, max_body: int) -> bytes:
    """The request's body read whole: the ordinary way, or one that follows the head (:func:`following`; this
    way only when :func:`receive_args` could not take it: no room in ``/dev/shm``)."""
    length = following(request, max_body)
    if length is None:
        return await request.read()
    buf = bytearray(length)
    with memoryview(buf) as view:
        await receive_following(request, view)
    return bytes(buf)


async def receive_args(request: web.Request, max_body: int) -> ArgSlab | None:
    """One of :data:`slabs` holding the request's pickle body, for a body of ``SHM_THRESHOLD`` bytes or more with a
    ``Content-Length`` or one that follows the head; None to read it the ordinary way (:func:`read_body`: a small
    or chunked body, no ``/dev/shm``, or no room there: nothing was read yet). Hand it to
    :func:`release_when_done` with its call; on any failure here it is removed."""
    follows = following(request, max_body)
    length = request.content_length if follows is None else follows
    if length is None or length < SHM_THRESHOLD or SHM_DIR is None or request.method == "GET":
        return None
    if length > max_body:
        raise PayloadTooLarge(f"request body over the daemon's limit of {max_body} bytes",
                              details={"limit": max_body})
    slab = slabs.take(length)
    try:
        slab.reserve(length)  # room for all of it now, or the ordinary way
    except OSError:
        slab.discard()
        return None
    try:
        if follows is not None:
            with memoryview(slab.mapped()) as whole, whole[:length] as view:
                await receive_following(request, view)
                first, last = view[:1].tobytes(), view[-1:].tobytes()
        else:
            first, last = await _stream_into(request, slab, length)
        if first != b"\x80" or last != b".":  # PROTO ... STOP
            raise SerializationError("the body is not a pickle", hint="send cloudpickle.dumps((args, kwargs)) or JSON")
    except BaseException:
        slab.discard()
        raise
    slab.length = length
    return slab


async def _stream_into(request: web.Request, slab: ArgSlab, length: int) -> tuple[bytes, bytes]:
    """The request's ``Content-Length`` body, as aiohttp's parser hands it over, written into ``slab``; its
    first and last byte."""
    got, written, first, last = 0, 0, b"", b""
    pieces: list[bytes] = []
    while got < length:
        chunk, _ = await request.content.readchunk()  # as the parser made it: not joined (no copy)
        if not chunk:
            raise SerializationError(f"the request body ended after {got} of its {length} bytes",
                                     details={"reason": "short_body"})
        if not got:
            first = chunk[:1]
        pieces.append(chunk)
        got += len(chunk)
        last = chunk[-1:]
        if got - written >= _BATCH or got >= length:  # the kernel copies into the file's (warm) pages
            written += _write_all(slab.fd, pieces, written)
            pieces.clear()
    return first, last


def _write_all(fd: int, pieces: list[bytes], offset: int) -> int:
    """Write ``pieces`` at ``offset`` (one ``pwritev`` for all of them, more if the kernel takes less)."""
    total = sum(map(len, pieces))
    done = os.pwritev(fd, pieces, offset)
    if done < total:  # short write: the rest one piece at a time
        view = memoryview(b"".join(pieces))[done:]
        while view:
            view = view[os.pwrite(fd, view, offset + done):]
            done = total - len(view)
    return total


def release_when_done(call: Call | None, slab: ArgSlab) -> None:
    """Give ``slab`` back to the pool once ``call`` has its last frame; remove it now when there is no call (it
    never reached a worker)."""
    if call is None:
        slab.discard()
    elif call.done:
        slabs.give_back(slab)
    else:
        asyncio.ensure_future(_after(call, slab))


async def _after(call: Call, slab: ArgSlab) -> None:
    try:
        while not call.done:
            await call.changed(None)
    except BaseException:  # the daemon stops: the file goes (a restarted daemon sweeps what is left)
        slab.discard()
        raise
    slabs.give_back(slab)


class ShmBody:
    """A response body in a ``/dev/shm`` file: sent by ``sendfile`` over a plain socket, from a read-only mapping in
    slices over TLS (see :meth:`send`). ``view``: the file's bytes through a mapping the daemon keeps (a result pool
    file, :mod:`tether.daemon.result_pool`), written to the socket as they are."""

    __slots__ = ("fill", "path", "size", "view")

    def __init__(self, path: str, size: int, view: memoryview | None = None, fill: Fill | None = None) -> None:
        self.path = path
        self.size = size
        self.view = view
        self.fill = fill  # the worker is still writing it: each byte goes once written (tether.daemon.fills)

    def __len__(self) -> int:
        return self.size

    async def send(self, request: web.Request, stream: web.StreamResponse) -> str:
        """Write the file to ``stream`` (prepared, its headers sent); returns how: ``"sendfile"`` or ``"written"``
        (a kept mapping) over a plain socket, ``"mapped"`` (TLS, or a transport without a socket)."""
        transport = request.transport
        if transport is None:
            raise ConnectionResetError("the connection is gone")
        sock = transport.get_extra_info("socket")
        plain = transport.get_extra_info("sslcontext") is None and sock is not None
        if plain:
            while transport.get_write_buffer_size():  # what was written before goes first
                await asyncio.sleep(0.001)
        loop = asyncio.get_running_loop()
        fill = self.fill if self.fill is not None and not self.fill.ended else None
        if self.view is None and fill is not None:  # not mapped by the pool: the whole result first
            await fill.until(self.size - 1)
            fill = None
        if self.view is not None:
            if plain:
                await loop.run_in_executor(None, _to_socket, sock.fileno(), self.view, None, fill)
                return "written"
            view = self.view
        else:
            with open(self.path, "rb", buffering=0) as f:
                if plain:
                    await loop.run_in_executor(None, _to_socket, sock.fileno(), f.fileno(), self.size)
                    return "sendfile"
                view = memoryview(mmap.mmap(f.fileno(), self.size, prot=mmap.PROT_READ))  # goes with its last slice
        for off in range(0, self.size, _SLICE):
            if fill is not None:
                await fill.until(min(off + _SLICE, self.size) - 1)
            await stream.write(view[off:off + _SLICE])
        return "mapped"


def _to_socket(sock: int, source: int | memoryview, count: int | None, fill: Fill | None = None) -> None:
    """All of ``source`` to the (non-blocking) socket ``sock``: ``count`` bytes of file descriptor ``source`` by
    ``sendfile``, or a mapped view by ``write`` (each byte once ``fill`` says it is written), waiting in this
    thread for room (the event loop's own writes to this socket wait for the response, and its reads go on)."""
    poll = select.poll()
    poll.register(sock, select.POLLOUT)
    total = count if isinstance(source, int) else len(source)
    assert total is not None
    offset = 0
    written = total if fill is None else 0
    while offset < total:
        if offset >= written:
            assert fill is not None
            written = fill.past(offset)
        try:
            if isinstance(source, int):
                sent = os.sendfile(sock, source, offset, total - offset)
            else:
                sent = os.write(sock, source[offset:written])
        except BlockingIOError:
            sent = None
        if sent == 0:
            raise ConnectionResetError("the connection closed while a result was sent")
        if sent is None:
            if not poll.poll(READ_STALL_MS):
                raise ConnectionResetError("the client read nothing for too long")
            continue
        offset += sent


def result_body(meta: dict[str, Any], body: bytes, call: Call) -> bytes | ShmBody:
    """A frame's payload as :func:`tether.daemon.calls.frame_body` gives it, except that a big one in a
    ``/dev/shm`` file is a :class:`ShmBody` of that file (sent without a copy in the daemon)."""
    path = meta.get("_shm")
    if not path or meta.get("_size", SHM_THRESHOLD) < SHM_THRESHOLD:
        return frame_body(meta, body, call)
    try:
        size = os.stat(path).st_size
    except FileNotFoundError:
        return frame_body(meta, body, call)  # gone: the typed result-gone error, as there
    return ShmBody(path, size)


def result_view(meta: dict[str, Any], body: bytes, call: Call) -> bytes | memoryview:
    """:func:`result_body` as bytes or a read-only mapping of the file (the mapping lives as long as the view)."""
    out = result_body(meta, body, call)
    if not isinstance(out, ShmBody):
        return out
    fd = os.open(out.path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return memoryview(mmap.mmap(fd, out.size, prot=mmap.PROT_READ)) if out.size else b""
    finally:
        os.close(fd)
