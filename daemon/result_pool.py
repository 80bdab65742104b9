"""Files the daemon lends its workers for big results of private calls from clients that are not on this host.

A big result normally goes into a new ``/dev/shm`` file that the daemon keeps for a re-attach by call id until the
call leaves its table, so every result costs fresh pages: allocated, zero-filled, written, freed. A call whose id
only its caller knows (``X-Tether-Private``, a client's ``lend``) needs its result kept only until the caller has it.
The caller says so on a later request (``X-Tether-Received``: the ids of private calls whose results arrived
whole). For such a call the daemon lends the worker one of its own files, kept between calls (the worker keeps it
mapped, so the next result is written into pages that are already there), and takes it back:

- once the caller said it received the result, or when the call leaves the table (then anyone attaching to the
  call id gets ``NotFound``: the result was not kept, as for a same-host client's lent slab);
- at once when the call ended without using it (a small result, an error).

A file goes back to the pool only while the pool holds fewer than ``keep`` files and ``max_bytes`` in all; else it
is removed. The daemon keeps a read-only mapping of each file too, and sends a result from it: a tmpfs file's
``sendfile`` costs more than writing pages that are already mapped (measured: ~5.6 against ~4.6 ms for 10 MB
over loopback). Such a result is journaled as not kept (``_slab``, never ``_shm``), so a daemon restarted after a crash
never hands out a reused file as an old call's result. Only targets that returned a big result before get a file
(:func:`wants`): a small call's path is unchanged.
"""

from __future__ import annotations

import atexit
import mmap
import os

from tether.daemon import fills
from tether.protocol.shm import SHM_DIR, new_shm_file, shm_share, unlink_quietly

__all__ = ["POOL", "ResultPool", "note_big", "wants"]


class ResultPool:
    """The daemon's reusable result files: :meth:`take` one for a call, :meth:`give_back` it afterwards."""

    def __init__(self, keep: int = 4, max_bytes: int = 512 * 1024 * 1024) -> None:
        self.keep = keep
        self.max_bytes = shm_share(max_bytes)
        self.free: list[str] = []
        self.lent: set[str] = set()
        self.maps: dict[str, mmap.mmap] = {}  # each file's read-only mapping, as long as the file is the pool's

    def take(self) -> str | None:
        """A file for one result (the most recently returned: the worker most likely still has it mapped); a new,
        empty one when none is free (the worker grows it); None without ``/dev/shm``."""
        if SHM_DIR is None:
            return None
        if self.free:
            path = self.free.pop()
        else:
            try:
                f, path = new_shm_file()  # private (0600), named for this process
            except OSError:
                return None
            f.close()
        self.lent.add(path)
        return path

    def view(self, path: str, size: int) -> memoryview | None:
        """The first ``size`` bytes of pool file ``path`` through the pool's mapping of it (mapped again when the
        worker grew the file past it); None when it cannot be mapped (the caller sends the file another way)."""
        if path not in self.lent and path not in self.free:
            return None
        kept = self.maps.get(path)
        if kept is None or len(kept) < size:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                return None
            try:
                length = os.fstat(fd).st_size
                if length < size or not size:
                    return None
                kept = self.maps[path] = mmap.mmap(fd, length, prot=mmap.PROT_READ)
            except (OSError, ValueError):
                return None
            finally:
                os.close(fd)
        return memoryview(kept)[:size]

    def give_back(self, path: str) -> None:
        """``path`` is free again: kept for the next result, or removed when the pool is full; once the worker
        finished writing into it when it still is (:mod:`tether.daemon.fills`)."""
        fill = fills.FILLS.get(path)
        if fill is not None and not fill.ended:
            fill.when_ended(lambda: self.give_back(path))
            return
        self.lent.discard(path)
        try:
            size = os.stat(path).st_size
        except OSError:
            self.maps.pop(path, None)
            return  # removed behind our back (a sweep): nothing to keep
        held = sum(_size(p) for p in self.free)
        if len(self.free) >= self.keep or held + size > self.max_bytes:
            self.maps.pop(path, None)  # unmapped with its last view (a send still under way keeps it)
            unlink_quietly(path)
        else:
            self.free.append(path)

    def close(self) -> None:
        """Remove every file of the pool, lent or free (the daemon stops)."""
        for path in [*self.free, *self.lent]:
            unlink_quietly(path)
        self.free.clear()
        self.lent.clear()
        self.maps.clear()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


POOL = ResultPool()
atexit.register(POOL.close)

_big: set[tuple[str, str | None]] = set()


def note_big(service: str, method: str | None) -> None:
    """``service.method`` returned a big result: its private calls get a file from now on."""
    if len(_big) >= 1024:
        _big.clear()
    _big.add((service, method))


def wants(service: str, method: str | None) -> bool:
    return (service, method) in _big
