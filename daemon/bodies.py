"""Big call bodies of clients that are not on this host (TCP, with or without TLS), without full copies here.

A same-host client hands its big arguments over in ``/dev/shm`` and maps big results itself. A client on another
host sends and receives them through the socket, and the daemon used to hold each one whole in its own memory twice
over: the request read and joined (a copy), then written to ``/dev/shm`` for the worker (another); the worker's
result read back out of its ``/dev/shm`` file (a third) before it was sent. Here:

- :func:`receive_args`: a pickle body of ``SHM_THRESHOLD`` bytes or more with a ``Content-Length`` is streamed
  from the socket straight into a new ``/dev/shm`` file of the daemon's, which the call then takes as its argument
  file (as it takes a same-host client's ``X-Tether-Shm`` file): the worker unpickles it from there.
- :func:`result_view`: a result (or item) the worker left in ``/dev/shm`` is sent from a read-only mapping of its
  file, never read into the daemon's memory.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from aiohttp import web

from tether.daemon.calls import Call, frame_body
from tether.errors import PayloadTooLarge, SerializationError
from tether.protocol.shm import SHM_DIR, SHM_THRESHOLD, new_shm_file, unlink_quietly

__all__ = ["receive_args", "result_view"]

_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_BATCH = 1024 * 1024  # body bytes gathered per write  # Linux: map every page at once (no fault per page while sending)


async def receive_args(request: web.Request, max_body: int) -> str | None:
    """The path of a new ``/dev/shm`` file of ours holding the request's pickle body, for a body of
    ``SHM_THRESHOLD`` bytes or more with a ``Content-Length``; None to read it the ordinary way (a small or
    chunked body, no ``/dev/shm``, or no room there: nothing was read yet). The file is removed on any failure."""
    length = request.content_length
    if length is None or length < SHM_THRESHOLD or SHM_DIR is None or request.method == "GET":
        return None
    if length > max_body:
        raise PayloadTooLarge(f"request body over the daemon's limit of {max_body} bytes",
                              details={"limit": max_body})
    f, path = new_shm_file()
    try:
        with f:
            fd = f.fileno()
            try:
                os.posix_fallocate(fd, 0, length)  # room for all of it now, or the ordinary way
            except OSError:
                unlink_quietly(path)
                return None
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
                if got - written >= _BATCH or got >= length:  # the kernel copies into the file's pages
                    written += _write_all(fd, pieces, written)
                    pieces.clear()
        if first != b"\x80" or last != b".":  # PROTO ... STOP
            raise SerializationError("the body is not a pickle", hint="send cloudpickle.dumps((args, kwargs)) or JSON")
    except BaseException:
        unlink_quietly(path)
        raise
    return path


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


def result_view(meta: dict[str, Any], body: bytes, call: Call) -> bytes | memoryview:
    """A frame's payload as :func:`tether.daemon.calls.frame_body` gives it, except that one in a ``/dev/shm``
    file is a read-only mapping of that file (no copy; the mapping lives as long as the view, and outlives the file
    being removed)."""
    path = meta.get("_shm")
    if not path or meta.get("_size", SHM_THRESHOLD) < SHM_THRESHOLD:
        return frame_body(meta, body, call)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return frame_body(meta, body, call)  # gone: the typed result-gone error, as there
    try:
        size = os.fstat(fd).st_size
        if not size:
            return b""
        return memoryview(mmap.mmap(fd, size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ))
    finally:
        os.close(fd)
