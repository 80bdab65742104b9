"""Calls the daemon knows about: running or finished, by call id, so a second request with the same id
attaches to the first instead of running again.

A RESULT or ITEM body of 1 MiB or more stays in the shared-memory file the worker wrote (frame meta ``_shm`` =
its path, ``_size`` = its length, body empty): it counts in the table's byte budget and is deleted when the call
leaves the table (or the daemon stops), never while a response is still being written from it.
"""

from __future__ import annotations

import asyncio
import json
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from tether.daemon import protocol as p
from tether.daemon import slabs
from tether.protocol.states import CallState

FINAL = (p.RESULT, p.ERROR)
GRACE_SECONDS = 1.0  # a file handed to a same-host client outlives its call this long, for the client to open it

Frame = tuple[int, dict[str, Any], bytes]


@dataclass(eq=False, slots=True)
class Call:
    """One remote call: the frames it produced (logs, items, then a result or an error)."""

    call_id: str
    service: str
    method: str | None
    json_mode: bool
    arg_file: str | None = None  # the arguments' shared-memory file, removed at the latest when the call ends
    started: float = field(default_factory=time.time)
    finished: float | None = None
    frames: list[Frame] = field(default_factory=list)
    nbytes: int = 0
    worker_tag: int | None = None
    worker: Any = None
    on_finish: Any = None
    shared: bool = False  # a file of this call was handed to a client (see :meth:`release`)
    _files: list[str] = field(default_factory=list)
    _pins: int = 0
    _released: bool = False
    _waiters: list[asyncio.Future[bool]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def state(self) -> CallState:
        if not self.done:
            return CallState.RUNNING
        kind, meta, _ = self.frames[-1]
        if kind == p.RESULT:
            return CallState.SUCCEEDED
        return CallState.CANCELLED if meta.get("error", {}).get("type") == "CallCancelled" else CallState.FAILED

    def add(self, kind: int, meta: dict[str, Any], body: bytes) -> None:
        """Record a frame from the worker and wake whoever waits for one."""
        self.frames.append((kind, meta, body))
        self.nbytes += len(body)
        if "_shm" in meta:
            self._files.append(meta["_shm"])
            self.nbytes += meta.get("_size", 0)
        if kind in FINAL:
            self.finished = time.time()
            if self.arg_file is not None:  # normally the worker took it; not if it died first
                p.unlink_quietly(self.arg_file)
            if self.on_finish is not None:
                self.on_finish(self)
        if self._waiters:
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                _deadlines.forget(fut)
                if not fut.done():
                    fut.set_result(True)

    def changed(self, timeout: float | None = None) -> asyncio.Future[bool]:
        """A future that becomes True when the next frame arrives, or False once ``timeout`` seconds (give or
        take :data:`TICK`) pass without one."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()
        self._waiters.append(fut)
        if timeout is not None:
            _deadlines.watch(loop, fut, timeout)
        return fut

    # -- shared-memory bodies ----------------------------------------------------------------------------------
    def pin(self) -> None:
        """A response is being written from this call's frames: keep its files until :meth:`unpin`."""
        self._pins += 1

    def unpin(self) -> None:
        """That response is written (its client may still be reading a file it was given, see GRACE_SECONDS)."""
        self._pins -= 1
        if self._released and not self._pins:
            self._delete_files()

    def release(self) -> None:
        """The call left the table: delete its files once no response is being written from them."""
        self._released = True
        if not self._pins:
            self._delete_files()

    def _delete_files(self) -> None:
        if self._files:
            files, self._files = self._files, []
            _discard(files, GRACE_SECONDS if self.shared else 0.0)  # a client was given a path: time to open it

    def delete_files_now(self) -> None:
        """Delete this call's files at once (the daemon stops)."""
        files, self._files = self._files, []
        _unlink_all(files)

    # -- views -------------------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "service": self.service,
            "method": self.method,
            "state": self.state,
            "started": self.started,
            "finished": self.finished,
            "seconds": (self.finished or time.time()) - self.started,
        }

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(body) for kind, _, body in self.frames if kind == p.LOG]


def frame_body(meta: dict[str, Any], body: bytes) -> bytes:
    """A frame's payload bytes, read from its shared-memory file when it has one (the file stays)."""
    path = meta.get("_shm")
    if path is None and "_slab" in meta:
        raise slabs.not_kept_error()
    return p.read_shm(path, unlink=False) if path else body


_doomed: set[str] = set()  # files of released calls not deleted yet (all deleted at once if the daemon stops)


def _discard(files: list[str], delay: float) -> None:
    """Delete ``files`` after ``delay`` seconds, in a thread: freeing a large file's pages takes ~1 ms per 10 MB,
    which the event loop (and the call whose result evicted them) should not wait for."""
    _doomed.update(files)
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        _unlink_all(files)
        return
    if delay:
        loop.call_later(delay, _discard, files, 0.0)
    else:
        loop.run_in_executor(None, _unlink_all, files)


def _unlink_all(paths: list[str]) -> None:
    for path in paths:
        p.unlink_quietly(path)
        _doomed.discard(path)


TICK = 1.0  # resolution of wait timeouts (heartbeats): one timer per loop and tick, none per wait


class _Deadlines:
    """Timeouts of :meth:`Call.changed` waits, expired by one repeating timer per event loop.

    Nearly every wait ends within a millisecond; a timer armed and cancelled per wait costs more than a dict
    entry added and removed.
    """

    def __init__(self) -> None:
        self._due: dict[asyncio.Future[bool], float] = {}
        self._ticking: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def watch(self, loop: asyncio.AbstractEventLoop, fut: asyncio.Future[bool], timeout: float) -> None:
        """Resolve ``fut`` with False once ``timeout`` seconds pass (unless it is done or forgotten first)."""
        self._due[fut] = loop.time() + timeout
        if loop not in self._ticking:
            self._ticking.add(loop)
            loop.call_later(TICK, self._tick, loop)

    def forget(self, fut: asyncio.Future[bool]) -> None:
        self._due.pop(fut, None)

    def _tick(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        waiting = False
        for fut, due in list(self._due.items()):
            floop = fut.get_loop()
            if fut.done() or floop.is_closed():
                del self._due[fut]
            elif floop is not loop:
                continue
            elif due <= now:
                del self._due[fut]
                fut.set_result(False)
            else:
                waiting = True
        if waiting:
            loop.call_later(TICK, self._tick, loop)
        else:
            self._ticking.discard(loop)


_deadlines = _Deadlines()


class CallTable:
    """Running calls, plus finished ones kept for re-attach within a count, byte and age budget."""

    def __init__(self, max_finished: int = 10_000, max_bytes: int = 512 * 1024**2, ttl: float = 3600.0) -> None:
        self.calls: dict[str, Call] = {}
        self.max_finished = max_finished
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._finished: deque[Call] = deque()
        self._finished_bytes = 0

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id)

    def add(self, call: Call) -> None:
        call.on_finish = self._on_finish
        self.calls[call.call_id] = call

    def running(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.done]

    def _on_finish(self, call: Call) -> None:
        self._finished.append(call)
        self._finished_bytes += call.nbytes
        now = time.time()
        while self._finished and (
            len(self._finished) > self.max_finished
            or self._finished_bytes > self.max_bytes
            or now - (self._finished[0].finished or now) > self.ttl
        ):
            old = self._finished.popleft()
            self._finished_bytes -= old.nbytes
            if self.calls.get(old.call_id) is old:
                del self.calls[old.call_id]
            old.release()

    def close(self) -> None:
        """Delete every call's shared-memory files (the daemon stops)."""
        for call in self.calls.values():
            call.delete_files_now()
        for call in self._finished:
            call.delete_files_now()
        _unlink_all(list(_doomed))
