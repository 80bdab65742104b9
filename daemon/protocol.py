"""Framing between the daemon and its worker processes (the client stream's framing is ``tether.protocol``).

Worker link (unix socket pair): ``!BIIQ`` = kind, tag, meta length, body length; then JSON meta, raw body.
A body of 1 MiB or more travels as a file in ``/dev/shm`` named ``tether-<owner pid>-…`` (meta ``_shm``).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import functools
import json
import mmap
import os
import struct
import threading
from collections.abc import Container
from typing import Any

from tether.errors import ConfigError, SerializationError
from tether.protocol.frames import (
    CLIENT_HDR_SIZE,
    ERROR,
    FILE,
    HEARTBEAT,
    ITEM,
    LOG,
    RESULT,
    client_frame,
    client_header,
    parse_client_header,
    split_client_frames,
)
from tether.protocol.headers import SHM
from tether.protocol.shm import (
    SHM_DIR,
    SHM_THRESHOLD,
    new_shm_file,
    open_client_file,
    read_shm,
    shm_name,
    shm_share,
    unlink_quietly,
)

__all__ = [
    "CALL", "CANCEL", "CLIENT_HDR_SIZE", "DEPLOY", "ERROR", "FILE", "HEARTBEAT", "ITEM", "LOG", "OBJECT", "PROGRESS",
    "READY", "RESULT", "SHM_DIR", "SHM_THRESHOLD", "SPARES", "FrameWriter", "SpareFiles", "Spill", "adopt_shm", "claim_shm", "client_frame",
    "client_header", "encode_meta", "map_shm", "open_client_file", "parse_client_header", "read_frame", "read_shm",
    "shm_name", "spill", "split_client_frames", "sweep_stale_shm", "unlink_quietly", "write_frame",
]

# daemon -> worker
CALL = ord("C")
DEPLOY = ord("D")
CANCEL = ord("X")
OBJECT = ord("O")
# worker -> daemon (LOG, ITEM, RESULT, ERROR, HEARTBEAT and FILE are the client frames' kinds as well)
READY = ord("Y")
PROGRESS = ord("P")  # {"upto": n} or {"failed": true}: how far a result being written into a pool file got

_WORKER_HDR = struct.Struct("!BIIQ")
LINK_BUFFER = 64 * 1024 * 1024  # stream-reader buffer of a worker link: large bodies arrive without pause/resume
FLUSH_AT = 256 * 1024  # queued bytes that are written at once instead of at the end of the loop iteration
DRAIN_AT = 4 * 1024 * 1024  # buffered bytes above which senders wait for the socket (back-pressure)


def encode_meta(meta: dict[str, Any] | None) -> bytes:
    """The JSON meta of a frame (empty for no meta); callers may encode a constant meta once and reuse it."""
    return json.dumps(meta, separators=(",", ":")).encode() if meta else b""


def encode(kind: int, tag: int, meta: dict[str, Any] | bytes | None = None, body: bytes = b"") -> list[bytes]:
    """The parts of one frame; a large body goes to a shared-memory file instead (two copies instead of the
    socket's five or so: ~4x faster for 10 MB on this kind of machine)."""
    if len(body) >= SHM_THRESHOLD and SHM_DIR is not None:
        with contextlib.suppress(OSError):  # /dev/shm full: the socket still works
            meta = {**(json.loads(meta) if isinstance(meta, bytes) else meta or {}), "_shm": spill(body)}
            body = b""
    m = meta if isinstance(meta, bytes) else encode_meta(meta)
    return [_WORKER_HDR.pack(kind, tag, len(m), len(body)), m, body]


def spill(body: bytes | memoryview) -> str:
    """Write ``body`` to a new shared-memory file owned by this process; returns its path."""
    f, path = new_shm_file()
    try:
        with f:
            f.write(body)
    except BaseException:
        unlink_quietly(path)
        raise
    return path


class SpareFiles:
    """Result files allocated ahead of time, off the call's path: a big result is pickled into pages that are
    already there (a write into a fresh tmpfs page costs ~4x one into an allocated page), and once the spare is
    taken the next one is allocated by a background thread. One spare at a time, as long as the last big result
    (up to ``max_bytes``); it is removed when the process exits."""

    def __init__(self, max_bytes: int = 256 * 1024 * 1024) -> None:
        self.max_bytes = shm_share(max_bytes)
        self._lock = threading.Lock()
        self._ready: tuple[Any, str, int] | None = None
        self._filling = False

    def take(self) -> tuple[Any, str, int] | None:
        """The spare (file object, path, size), now the caller's; None when none is ready."""
        with self._lock:
            got, self._ready = self._ready, None
        if got is not None and os.fstat(got[0].fileno()).st_nlink == 0:  # its name was removed (a sweep): not it
            got[0].close()
            return None
        return got

    def refill(self, size: int) -> None:
        """Allocate a spare of ``size`` bytes in the background, unless one that big is ready or on its way."""
        if size > self.max_bytes or SHM_DIR is None:
            return
        with self._lock:
            if self._filling or (self._ready is not None and self._ready[2] >= size):
                return
            self._filling = True
        _filler().submit(self._fill, size)

    def _fill(self, size: int) -> None:
        try:
            f, path = new_shm_file()
            try:
                os.posix_fallocate(f.fileno(), 0, size)
            except OSError:  # no room in /dev/shm: no spare (a call's own file may still fit)
                f.close()
                unlink_quietly(path)
                return
            with self._lock:
                old, self._ready = self._ready, (f, path, size)
            if old is not None:
                old[0].close()
                unlink_quietly(old[1])
        finally:
            with self._lock:
                self._filling = False

    def close(self) -> None:
        got = self.take()
        if got is not None:
            got[0].close()
            unlink_quietly(got[1])


@functools.cache
def _filler() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tether-spare")


SPARES = SpareFiles()
atexit.register(SPARES.close)


class Spill:
    """A write-only file for a pickler: output stays in memory below ``SHM_THRESHOLD``, then continues in a new
    shared-memory file (a large result is pickled straight into ``/dev/shm``, no in-memory copy).

    Subclasses continue somewhere else by overriding :meth:`_open` and :meth:`_meta` (see ``slabs.ResultSpill``).
    """

    def __init__(self) -> None:
        self._chunks: list[Any] = []
        self._size = 0
        self._file: Any = None
        self.path: str | None = None

    def write(self, data: Any) -> int:
        n = data.nbytes if isinstance(data, memoryview) else len(data)
        if self._file is None:
            self._size += n
            if self._size < SHM_THRESHOLD or SHM_DIR is None:
                self._chunks.append(data)
                return n
            self._file = self._open()
            self._file.writelines(self._chunks)
            self._chunks = []
        self._file.write(data)
        return n

    def _open(self) -> Any:
        """Where the output continues past the threshold: a file object with ``write`` and ``writelines`` (an
        allocated spare file when one is ready, see :class:`SpareFiles`)."""
        got = SPARES.take()
        if got is None:
            f, self.path = new_shm_file()
            return f
        f, self.path, self._spare = got
        return f

    def _meta(self) -> dict[str, Any]:
        n = self._file.tell()
        if getattr(self, "_spare", n) != n:
            self._file.truncate(n)  # a spare is as long as the result it was made for: cut to this one
        self._file.close()
        SPARES.refill(n)
        return {"_shm": self.path}

    def finish(self) -> tuple[dict[str, Any] | None, bytes]:
        """The frame's meta and body: ``({"_shm": path}, b"")`` once in a file, else ``(None, the bytes)``."""
        if self._file is None:
            return None, b"".join(self._chunks)
        return self._meta(), b""

    def abort(self) -> None:
        """Drop what was written (the pickler failed)."""
        self._chunks = []
        if self._file is not None:
            with contextlib.suppress(OSError):  # flushing may fail again (a full /dev/shm)
                self._file.close()
            unlink_quietly(self.path or "")


def write_frame(
    writer: asyncio.StreamWriter, kind: int, tag: int, meta: dict[str, Any] | None = None, body: bytes = b""
) -> None:
    """Write one frame on ``writer`` now (see :class:`FrameWriter` for the coalescing writer)."""
    writer.writelines(encode(kind, tag, meta, body))


class FrameWriter:
    """Frames queued for one stream and written once per event-loop iteration.

    Every frame sent during one loop iteration goes out in a single write (one syscall and one wake-up of the
    reader instead of one per frame); order is kept since every frame of the stream goes through here.
    """

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self._loop = asyncio.get_running_loop()
        self._parts: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def send(self, kind: int, tag: int, meta: dict[str, Any] | bytes | None = None, body: bytes = b"") -> None:
        """Queue one frame; it is written at the end of this loop iteration (at once when much is queued).

        The first frame of an iteration goes out at once (a lone call pays no extra loop turn); the frames that
        follow it in the same iteration are batched into one write.
        """
        parts = encode(kind, tag, meta, body)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)
            self.writer.write(b"".join(parts))
            return
        self._parts += parts
        self._size += _WORKER_HDR.size + len(parts[1]) + len(parts[2])
        if self._size >= FLUSH_AT:
            self.flush()

    def flush(self) -> None:
        """Write everything queued now."""
        self._scheduled = False
        if self._parts:
            parts, self._parts, self._size = self._parts, [], 0
            self.writer.write(b"".join(parts))

    def buffered(self) -> int:
        """Bytes queued here or in the socket's buffer."""
        return self._size + self.writer.transport.get_write_buffer_size()

    async def drain(self) -> None:
        """Wait for the socket when more than ``DRAIN_AT`` bytes are buffered (back-pressure for large bodies)."""
        if self.buffered() > DRAIN_AT:
            self.flush()
            await self.writer.drain()


async def read_frame(
    reader: asyncio.StreamReader, keep_shm: Container[int] = ()
) -> tuple[int, int, dict[str, Any], bytes]:
    """Read one frame; raises ``asyncio.IncompleteReadError`` at EOF.

    A shared-memory body is read and its file removed, except for the kinds in ``keep_shm``: their meta keeps
    the file's path as ``_shm`` (the body is then empty) for the caller to take.
    """
    kind, tag, mlen, blen = _WORKER_HDR.unpack(await reader.readexactly(_WORKER_HDR.size))
    meta = json.loads(await reader.readexactly(mlen)) if mlen else {}
    body = await reader.readexactly(blen) if blen else b""
    if mlen and "_shm" in meta and kind not in keep_shm:
        body = read_shm(meta.pop("_shm"))
    return kind, tag, meta, body


def map_shm(path: str) -> bytes | mmap.mmap:
    """A shared-memory body mapped read-only (no copy), its file already removed; ``b""`` for an empty file."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.unlink(path)
        size = os.fstat(fd).st_size
        if not size:
            return b""
        return mmap.mmap(fd, size, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


def adopt_shm(path: str) -> tuple[str, int]:
    """Rename another process's shared-memory file to one of ours; returns the new path and its size."""
    new = shm_name()
    os.rename(path, new)
    return new, os.stat(new).st_size


def claim_shm(path: str) -> str:
    """Take a same-host client's shared-memory body (``X-Tether-Shm``): check it (see
    :func:`open_client_file`) and that it holds a pickle, and rename it to one of ours; returns the new path.
    Raises ``ConfigError`` (the file is then left alone) or ``SerializationError``.
    """
    fd, st, real = open_client_file(path, SHM)
    try:
        if st.st_size < 2 or os.pread(fd, 1, 0) != b"\x80" or os.pread(fd, 1, st.st_size - 1) != b".":
            raise SerializationError("the X-Tether-Shm file is not a pickle",
                                     hint="write cloudpickle.dumps((args, kwargs)) to it")
        new = shm_name()
        os.rename(real, new)
        moved = os.stat(new)
        if (moved.st_dev, moved.st_ino) != (st.st_dev, st.st_ino):
            with contextlib.suppress(OSError):
                os.rename(new, real)
            raise ConfigError(f"X-Tether-Shm {path!r}: it was replaced while being checked")
        return new
    except OSError as exc:
        raise ConfigError(f"X-Tether-Shm {path!r}: cannot take it: {exc.strerror}") from None
    finally:
        os.close(fd)


def sweep_stale_shm() -> int:
    """Remove shared-memory bodies left by processes that died before the reader took them."""
    if SHM_DIR is None:
        return 0
    removed = 0
    for name in os.listdir(SHM_DIR):
        parts = name.split("-")
        if len(parts) < 3 or parts[0] != "tether" or not parts[1].isdigit():
            continue
        try:
            os.kill(int(parts[1]), 0)
        except ProcessLookupError:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(SHM_DIR, name))
                removed += 1
        except PermissionError:
            pass
    return removed
