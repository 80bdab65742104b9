"""Shared memory between a same-host client, the daemon and its workers: ``/dev/shm`` files named
``tether-<owner pid>-...``, the checks a lent file must pass, and the reusable mapped files ("slabs").

A client on the daemon's unix socket lends two files for a big call: one holding its pickled arguments
(header ``X-Tether-Shm-Lent: <path>:<length>``) and one for a big result (``X-Tether-Result-Slab: <path>``).
See ``tether.daemon.slabs`` for the worker's side and ``tether.client.slabs`` for the client's pool.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import secrets
import stat
import sys
import tempfile
import time
from typing import Any

from tether.errors import ConfigError

__all__ = [
    "SHM_DIR", "SHM_THRESHOLD", "MappedFile", "shm_share", "SlabWriter", "is_slab_path", "keep_freed_memory", "new_shm_file",
    "open_client_file", "read_shm", "shm_name", "unlink_quietly",
]

SHM_THRESHOLD = 1024 * 1024
"""Payloads of at least this many bytes go through a file (below it the socket is as fast and simpler)."""
SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
_GROW_STEP = 1024 * 1024


def new_shm_file() -> tuple[Any, str]:
    """A new private file in shared memory, named for this process (``sweep_stale_shm`` keeps it while we
    live), opened for writing; and its path."""
    fd, path = tempfile.mkstemp(prefix=f"tether-{os.getpid()}-", dir=SHM_DIR)
    return os.fdopen(fd, "wb"), path


def read_shm(path: str, *, unlink: bool = True) -> bytes:
    """The bytes of a shared-memory body; the file is removed unless ``unlink`` is False."""
    with open(path, "rb") as f:
        body = f.read()
    if unlink:
        os.unlink(path)
    return body


def shm_name() -> str:
    """A fresh shared-memory path named for this process, to rename a file taken from another process to."""
    return f"{SHM_DIR}/tether-{os.getpid()}-{secrets.token_hex(8)}"


def open_client_file(path: str, header: str, *, write: bool = False) -> tuple[int, os.stat_result, str]:
    """Open a same-host client's shared-memory file named in request header ``header``, after checking it is
    a regular file named ``tether-*`` directly inside ``/dev/shm``, not a symlink, owned by this process's user.
    Returns ``(fd, stat, real path)``; raises ``ConfigError`` (nothing is left open).
    """
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"{header} {path!r}: {why}",
                           hint=f"name a file tether-* directly inside {SHM_DIR or '/dev/shm'}, or send the "
                                "body inline")

    if SHM_DIR is None:
        raise refuse("this host has no writable /dev/shm")
    real = os.path.realpath(path)
    if not os.path.isabs(path) or os.path.dirname(real) != os.path.realpath(SHM_DIR):
        raise refuse(f"not directly inside {SHM_DIR}")
    if not os.path.basename(path).startswith("tether-") or not os.path.basename(real).startswith("tether-"):
        raise refuse("the file name does not start with 'tether-'")
    flags = (os.O_RDWR if write else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC
    try:  # O_NONBLOCK: a FIFO must not block the daemon; it is refused below as not a regular file
        fd = os.open(path, flags | os.O_NONBLOCK)
    except OSError as exc:
        raise refuse("a symlink" if os.path.islink(path) else f"cannot open it: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise refuse("not a regular file")
        if st.st_uid != os.getuid():
            raise refuse("owned by another user")
    except BaseException:
        os.close(fd)
        raise
    return fd, st, real


def unlink_quietly(path: str) -> None:
    """Remove a file that may already be gone."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def shm_share(limit: int, fraction: float = 0.125) -> int:
    """``limit`` bytes, or ``fraction`` of ``/dev/shm``'s size when that is less: what a pool of files kept for
    reuse may hold there (a 64 MiB ``/dev/shm`` in a default Docker container keeps room for the calls)."""
    if SHM_DIR is None:
        return 0
    try:
        st = os.statvfs(SHM_DIR)
    except OSError:
        return 0
    return min(limit, int(st.f_blocks * st.f_frsize * fraction))


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
        """A client's lent file, checked (see :func:`open_client_file`; raises ``ConfigError``)."""
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
