"""Large call payloads through shared memory for clients on the daemon's host.

A client connected over the daemon's unix socket pickles big arguments into a file in ``/dev/shm`` it keeps
and reuses (a "slab", see ``tether.daemon.slabs``) and lends it to the call (header ``X-Tether-Shm-Lent``); for
a call likely to return a big result it lends a second slab the worker pickles the result into
(``X-Tether-Result-Slab``). Other big results come in a file the daemon names in a ``FILE`` frame
(``X-Tether-Accept-Shm``). No payload byte crosses a socket or is copied by the daemon, and reused slabs are
already allocated and mapped on both sides: writing into a warm page costs a quarter of a fresh one.
"""

from __future__ import annotations

import atexit
import contextlib
import mmap
import os
import pickle
import threading
import time
from typing import Any

from tether.protocol.headers import RESULT_SLAB, SHM_LENT
from tether.protocol.shm import SHM_DIR, SHM_THRESHOLD, MappedFile, SlabWriter, keep_freed_memory

__all__ = ["SHM_DIR", "THRESHOLD", "Lease", "SlabPool", "is_big", "load", "pool"]

THRESHOLD = SHM_THRESHOLD  # the same cut as the daemon↔worker link: below it the socket is as fast and simpler


def is_big(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """Whether a top-level argument is a large buffer (bytes, bytearray, memoryview, an array's ``nbytes``)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, bytes | bytearray | memoryview):
            if len(value) >= THRESHOLD:
                return True
        elif isinstance(getattr(value, "nbytes", None), int) and value.nbytes >= THRESHOLD:
            return True
    return False


def load(path: str) -> Any:
    """Unpickle a file's contents through a read-only mapping (one copy: into the objects it holds)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            raise EOFError(f"{path} is empty")
        with mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ) as view:
            return pickle.loads(view)


class SlabPool:
    """This process's idle slabs, for the next big call of any thread.

    Idle slabs are kept up to ``max_idle_bytes`` in all and for ``idle_seconds`` after their last use (then
    removed by a timer thread); every slab of this process is removed at exit. A forked child forgets its
    parent's slabs without touching them.
    """

    def __init__(self, max_idle_bytes: int = 512 * 1024 * 1024, idle_seconds: float = 30.0) -> None:
        keep_freed_memory()  # big results are unpickled here: into reused pages, ~7x faster (see there)
        self.max_idle_bytes = max_idle_bytes
        self.idle_seconds = idle_seconds
        self._idle: list[MappedFile] = []
        self._lent: set[MappedFile] = set()
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None
        os.register_at_fork(after_in_child=self._forget)
        atexit.register(self.close)

    def acquire(self) -> MappedFile:
        """An idle slab (the most recently used: its pages are the warmest), or a new one."""
        with self._lock:
            slab = self._idle.pop() if self._idle else None
        if slab is None:
            slab = MappedFile.create()
        with self._lock:
            self._lent.add(slab)
        return slab

    def release(self, slab: MappedFile) -> None:
        """Take a slab back once its call's last frame arrived (nobody else writes it any more)."""
        slab.used = time.monotonic()
        with self._lock:
            self._lent.discard(slab)
            if slab.size + sum(s.size for s in self._idle) <= self.max_idle_bytes:
                self._idle.append(slab)
                if self._timer is None:
                    self._arm()
                return
        slab.close(unlink=True)

    def discard(self, slab: MappedFile) -> None:
        """Remove a slab whose call ended any other way (a worker may still write it: never reuse it)."""
        with self._lock:
            self._lent.discard(slab)
        slab.close(unlink=True)

    def idle(self) -> list[str]:
        """The paths of the idle slabs (for tests and diagnostics)."""
        with self._lock:
            return [s.path for s in self._idle]

    def _arm(self) -> None:
        self._timer = threading.Timer(self.idle_seconds, self._expire)
        self._timer.daemon = True
        self._timer.start()

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            old = [s for s in self._idle if now - s.used >= self.idle_seconds]
            self._idle = [s for s in self._idle if s not in old]
            self._timer = None
            if self._idle:
                self._arm()
        for slab in old:
            slab.close(unlink=True)

    def close(self) -> None:
        """Remove every slab of this process (at exit)."""
        with self._lock:
            slabs, self._idle = [*self._idle, *self._lent], []
            self._lent = set()
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        for slab in slabs:
            slab.close(unlink=True)

    def _forget(self) -> None:
        self._lock = threading.Lock()
        self._idle, self._lent, self._timer = [], set(), None


_pool: SlabPool | None = None
_pool_lock = threading.Lock()


def pool() -> SlabPool:
    """The process's slab pool (made on first use)."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = SlabPool()
    return _pool


class Lease:
    """The slabs lent to one call: its pickled arguments and/or room for its result.

    :meth:`end` gives them back to the pool if the call's RESULT or ERROR frame arrived (the worker is done
    with both), else removes them.
    """

    __slots__ = ("args", "nbytes", "result")

    def __init__(self) -> None:
        self.args: MappedFile | None = None
        self.result: MappedFile | None = None
        self.nbytes = 0

    def write_args(self, obj: Any, dump: Any) -> None:
        """Pickle ``obj`` into an arguments slab with ``dump(obj, file)``."""
        self.args = pool().acquire()
        writer = SlabWriter(self.args)
        dump(obj, writer)
        self.nbytes = writer.pos

    def lend_result(self) -> None:
        self.result = pool().acquire()

    def headers(self, *, result_only: bool = False) -> dict[str, str]:
        """The request headers naming the lent slabs (only the result slab when the arguments go inline)."""
        out = {}
        if self.args is not None and not result_only:
            out[SHM_LENT] = f"{self.args.path}:{self.nbytes}"
        if self.result is not None:
            out[RESULT_SLAB] = self.result.path
        return out

    def load_result(self, path: str, size: int) -> Any:
        """Unpickle the result the worker left in our result slab."""
        if self.result is None or path != self.result.path:
            raise EOFError(f"the daemon named {path}, not a result slab this call lent")
        view = self.result.view(size)
        try:
            return pickle.loads(view)
        finally:
            view.release()

    def end(self, finished: bool) -> None:
        p = pool()
        for slab in (self.args, self.result):
            if slab is not None:
                with contextlib.suppress(Exception):
                    (p.release if finished else p.discard)(slab)
        self.args = self.result = None
