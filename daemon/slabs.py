"""Reusable shared-memory files ("slabs") for the big payloads of a same-host client's calls.

A client on the daemon's unix socket lends two files for a big call: one holding its pickled arguments
(request header ``X-Tether-Shm-Lent: <path>:<length>``) and one for a big result (``X-Tether-Result-Slab:
<path>``). The worker maps both and keeps the mappings for the next call; it unpickles the arguments in place
and pickles a result of 1 MiB or more straight into the second file (frame meta ``_slab``, ``_size``). The
daemon passes paths, never bytes. The client takes both files back when the call's last frame arrives and
reuses them, so every payload copy lands in pages that are already allocated and mapped: a write into a fresh
tmpfs page costs ~4x a write into a warm one, and mapping a file anew costs ~1 ms per 10 MB.

What keeps reuse safe:

- the files stay the client's (named ``tether-<client pid>-…``, removed by it, or by ``sweep_stale_shm`` once
  it is dead); the daemon never renames or deletes them;
- a client reuses a slab only after the call's RESULT or ERROR frame arrived (the worker is done with both);
  after any other end (a dropped link, a timeout) it unlinks them and never writes them again;
- a result left in a lent slab goes only to the client that lent it (the same path on its request): anyone
  else attaching to that call id gets ``NotFound``. A client lends a result slab only for calls whose id it
  made up and never showed (plain calls, not ``.spawn()`` or an explicit call id).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import sys
import time
from collections import OrderedDict
from typing import Any

from tether.daemon.protocol import SHM_DIR, Spill, open_client_file, shm_name, unlink_quietly
from tether.errors import NotFound

__all__ = ["ARGS_HEADER", "RESULT_HEADER", "MappedFile", "ResultSpill", "SlabCache", "SlabWriter", "is_slab_path",
           "keep_freed_memory", "not_kept", "not_kept_error"]

ARGS_HEADER = "X-Tether-Shm-Lent"
RESULT_HEADER = "X-Tether-Result-Slab"
_GROW_STEP = 1024 * 1024


def is_slab_path(path: str) -> bool:
    """A cheap look at a lent path (the worker checks the file itself when it opens it)."""
    if SHM_DIR is None or not path.startswith(SHM_DIR + "/tether-"):
        return False
    name = path[len(SHM_DIR) + 1:]
    return "/" not in name and ".." not in name and len(name) < 128


_kept: list[int] = []
_GLIBC_DYNAMIC_MAX = 32 * 1024 * 1024  # glibc's own mmap threshold rises up to this as blocks are freed


def keep_freed_memory(limit: int | None = None) -> int:
    """Have glibc keep freed memory for reuse, up to ``TETHER_MALLOC_KEEP_MB`` (default 256; 0, or anything
    under 32, keeps glibc's defaults; at most a quarter of ``limit`` bytes); returns the bytes kept (0: nothing
    changed).

    glibc returns every freed block over 32 MiB to the system at once, so each big payload is unpickled into
    fresh pages: 100 MB took 70-78 ms that way on a 2-core VM, and 11 ms into pages kept from the last one.
    Called once by each worker at start, and by a client process at its first payload through a slab (a
    process that never moves a big payload on the daemon's host is left alone). Linux with glibc only.
    """
    if _kept:
        return _kept[0]
    keep = int(os.environ.get("TETHER_MALLOC_KEEP_MB", "256") or 0) * 1024 * 1024
    if limit:
        keep = min(keep, limit // 4)
    _kept.append(0)
    if keep < _GLIBC_DYNAMIC_MAX or not sys.platform.startswith("linux"):
        return 0  # glibc already keeps blocks below 32 MiB: a lower threshold would only cost more mmaps
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc
        return 0
    m_trim_threshold, m_mmap_threshold = -1, -3
    if mallopt(m_mmap_threshold, ctypes.c_int(keep)) == 1 and mallopt(m_trim_threshold, ctypes.c_int(keep)) == 1:
        _kept[0] = keep
    return _kept[0]


def not_kept_error(call_id: str | None = None) -> NotFound:
    """What anyone but the lender of a result slab gets for that result."""
    what = f"call {call_id}" if call_id else "this call"
    return NotFound(f"the result of {what} was handed to its caller in shared memory and not kept",
                    hint="to fetch a call's result again later, start it with .spawn() or an explicit call id")


def not_kept(call_id: str) -> dict[str, Any]:
    """:func:`not_kept_error` as an ERROR frame's meta."""
    return not_kept_error(call_id).to_wire()


class MappedFile:
    """A shared-memory file kept open and mapped read-write: it grows on demand and is reused across calls."""

    __slots__ = ("fd", "map", "path", "size", "used")

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.map: mmap.mmap | None = None
        self.size = 0
        self.used = time.monotonic()
        self.remap()

    @classmethod
    def create(cls) -> MappedFile:
        """A new empty file owned by this process."""
        path = shm_name()
        return cls(path, os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))

    @classmethod
    def open_lent(cls, path: str, header: str) -> MappedFile:
        """A client's lent file, checked (see ``protocol.open_client_file``; raises ``ConfigError``)."""
        fd, _, _ = open_client_file(path, header, write=True)
        try:
            return cls(path, fd)
        except BaseException:
            os.close(fd)
            raise

    def remap(self) -> None:
        """Follow the file's size (the other side may have grown it)."""
        size = os.fstat(self.fd).st_size
        if size == self.size and (self.map is not None or size == 0):
            return
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a view still exported: the old mapping goes with it
                self.map.close()
            self.map = None
        self.size = size
        if size:
            self.map = mmap.mmap(self.fd, size)

    def reserve(self, n: int) -> None:
        """Make the file at least ``n`` bytes long (doubling, in whole MiB: few regrowths).

        The pages are allocated here, so a full ``/dev/shm`` (64 MiB in a default Docker container) raises
        ``OSError`` (ENOSPC) now instead of killing the process with SIGBUS at a write into the mapping.
        """
        if n <= self.size:
            return
        new = -(-max(n, 2 * self.size) // _GROW_STEP) * _GROW_STEP
        try:
            os.posix_fallocate(self.fd, 0, new)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(self.fd, new)  # a file system without fallocate
        self.remap()

    def view(self, n: int) -> memoryview:
        """The first ``n`` bytes, in place (release the view before the file is remapped or closed)."""
        if n > self.size:
            self.remap()
        if self.map is None or n > self.size:
            raise EOFError(f"{self.path} holds {self.size} bytes, not {n}")
        return memoryview(self.map)[:n]

    def linked(self) -> bool:
        """Whether the file still has a name (its owner has not removed it)."""
        try:
            return os.fstat(self.fd).st_nlink > 0
        except OSError:
            return False

    def close(self, *, unlink: bool = False) -> None:
        if self.map is not None:
            with contextlib.suppress(BufferError):  # a view still exported: the mapping goes with the object
                self.map.close()
            self.map = None
        with contextlib.suppress(OSError):
            os.close(self.fd)
        if unlink:
            unlink_quietly(self.path)


class SlabWriter:
    """A write-only file object over a :class:`MappedFile` for a pickler: each write is one copy into the map."""

    __slots__ = ("pos", "slab")

    def __init__(self, slab: MappedFile) -> None:
        self.slab = slab
        self.pos = 0

    def write(self, data: Any) -> int:
        with memoryview(data) as view:
            flat = view if view.format == "B" and view.ndim == 1 else view.cast("B")
            n = flat.nbytes
            if not n:
                return 0
            end = self.pos + n
            if end > self.slab.size:
                self.slab.reserve(end)
            assert self.slab.map is not None
            self.slab.map[self.pos:end] = flat
        self.pos = end
        return n

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)


class ResultSpill(Spill):
    """Pickler output for a result: in memory below ``SHM_THRESHOLD``, then in the client's lent slab (from
    ``open_slab()``); the frame's meta is then ``{"_slab": path, "_size": n}``."""

    def __init__(self, open_slab: Any) -> None:
        super().__init__()
        self._open_slab = open_slab

    def _open(self) -> SlabWriter:
        return SlabWriter(self._open_slab())

    def _meta(self) -> dict[str, Any]:
        return {"_slab": self._file.slab.path, "_size": self._file.pos}

    def abort(self) -> None:
        self._chunks = []  # the slab stays the client's: nothing to remove


class SlabCache:
    """A worker's mappings of lent files, by path: a file is opened and mapped once, not once a call.

    Holds at most ``limit`` files and, when ``max_bytes`` is set, at most that many mapped bytes besides the
    file in use (a worker under a memory limit: mappings count in its address space); the least recently used
    go first. One its client removed is closed at the next use of the cache (its pages are freed only then),
    and :meth:`sweep` does the same for an idle worker.
    """

    def __init__(self, limit: int = 64, max_bytes: int | None = None) -> None:
        self.limit = limit
        self.max_bytes = max_bytes
        self._files: OrderedDict[str, MappedFile] = OrderedDict()

    def __len__(self) -> int:
        return len(self._files)

    def get(self, path: str, header: str) -> MappedFile:
        f = self._files.get(path)
        if f is None or not f.linked():
            self.sweep()
            f = self._files[path] = MappedFile.open_lent(path, header)
        self._files.move_to_end(path)
        while len(self._files) > self.limit or (
                self.max_bytes is not None and len(self._files) > 1
                and sum(m.size for m in self._files.values()) > self.max_bytes):
            self._files.popitem(last=False)[1].close()
        return f

    def sweep(self) -> int:
        """Close the files whose client removed them; returns how many."""
        gone = [path for path, f in self._files.items() if not f.linked()]
        for path in gone:
            self._files.pop(path).close()
        return len(gone)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()
