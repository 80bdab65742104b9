"""Big results a worker is still writing into one of the daemon's pool files while the daemon already sends them.

A private call's big result goes into a file of the daemon's result pool (:mod:`tether.daemon.result_pool`).
There the worker pickles the value into pieces first (:class:`tether.protocol.pieces.Pieces`: the big buffers
by reference, nothing copied), so it knows the result's size at once. It answers RESULT with ``_slab``,
``_size`` and ``_filling``, then copies the pieces into the file and reports how far it got in PROGRESS frames
(``{"upto": n}`` about every MiB, ``{"failed": true}`` if the copy broke off). The daemon starts the answer as
soon as the RESULT arrives and sends each byte once the worker has reported it written: the worker's copy into
the file overlaps the transfer instead of coming before it.

- A worker that dies, or fails, before it reported the whole result fails the fill: a send under way is cut
  (the client gets its typed ``Dropped`` error), and a later attach to the call answers ``WorkerDied``.
- The pool file goes back to the pool only once its fill ended (see ``ResultPool.give_back``).
- Progress crosses the worker's socket, so what a PROGRESS frame reports is in the file before the daemon reads
  it (no shared counter, no memory-ordering question).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from tether.protocol.pieces import Pieces

__all__ = ["FILLS", "STEP", "Fill", "STALL_S", "write_reporting"]

STALL_S = 60.0  # a fill that moves no further for this long is failed (a stuck worker)


class Fill:
    """How far the worker got writing one result of ``size`` bytes; waited on by the thread that sends it."""

    __slots__ = ("_cond", "_loop", "_on_end", "_waiters", "failed", "size", "upto")

    def __init__(self, size: int) -> None:
        """Made on the daemon's event loop, where its end callbacks run."""
        self.size = size
        self.upto = 0
        self.failed = False
        self._cond = threading.Condition()
        self._loop = asyncio.get_running_loop()
        self._on_end: list[Callable[[], None]] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []  # (offset, future) of :meth:`until` calls

    @property
    def ended(self) -> bool:
        return self.failed or self.upto >= self.size

    def advance(self, upto: int) -> None:
        """The worker wrote the first ``upto`` bytes."""
        with self._cond:
            if self.ended:
                return
            self.upto = max(self.upto, min(int(upto), self.size))
            self._cond.notify_all()
        if self.ended:
            self._end()
        else:
            self._wake()  # (PROGRESS frames arrive on the event loop)

    def fail(self) -> None:
        with self._cond:
            if self.ended:
                return
            self.failed = True
            self._cond.notify_all()
        self._end()

    def when_ended(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` once the fill ended (at once when it has)."""
        if self.ended:
            fn()
        else:
            self._on_end.append(fn)

    def _end(self) -> None:
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if not on_loop:  # a sending thread that gave up on a stalled worker
            self._loop.call_soon_threadsafe(self._end)
            return
        self._wake()
        todo, self._on_end = self._on_end, []
        for fn in todo:
            fn()

    def _wake(self) -> None:
        """Resolve the :meth:`until` calls whose bytes are written (all of them once the fill failed); on the loop."""
        waiting: list[tuple[int, asyncio.Future[None]]] = []
        for offset, fut in self._waiters:
            if fut.done():
                continue
            if self.failed or self.upto > offset:
                fut.set_result(None)
            else:
                waiting.append((offset, fut))
        self._waiters = waiting

    def past(self, offset: int, stall: float = STALL_S) -> int:
        """How many bytes are written, once more than ``offset`` are (blocks; from a sending thread).
        Raises ``ConnectionResetError`` when the fill failed or stalled: the answer is cut."""
        with self._cond:
            moved = self._cond.wait_for(lambda: self.failed or self.upto > offset, stall)
            upto, failed = self.upto, self.failed
        if not moved:
            self.fail()
        if failed or not moved:
            raise ConnectionResetError("the worker did not finish writing the result")
        return upto

    async def until(self, offset: int, stall: float = STALL_S) -> None:
        """Wait (on the event loop) until more than ``offset`` bytes are written; as :meth:`past` otherwise."""
        if not self.failed and self.upto <= offset:
            fut = self._loop.create_future()
            self._waiters.append((offset, fut))
            try:
                await asyncio.wait_for(fut, stall)
            except TimeoutError:
                self.fail()
        if self.failed:
            raise ConnectionResetError("the worker did not finish writing the result")


#: fills under way, by pool file path (a pool file holds one result at a time)
FILLS: dict[str, Fill] = {}


# -- the worker's side ------------------------------------------------------------------------------------------
STEP = 1024 * 1024  # bytes copied between two PROGRESS reports


def write_reporting(target: memoryview, pieces: Pieces, report: Callable[[int], None]) -> None:
    """Copy ``pieces`` into ``target`` (a pool file's mapping) in order, calling ``report(n)`` after about every
    :data:`STEP` bytes and once at the end, ``n`` being how many bytes are in the file by then."""
    pos = 0
    reported = 0
    for part in pieces.parts:
        with memoryview(part) as view:
            done = 0
            while done < len(view):
                k = min(len(view) - done, STEP)
                target[pos:pos + k] = view[done:done + k]
                pos += k
                done += k
                if pos - reported >= STEP:
                    report(pos)
                    reported = pos
    if reported != pos:
        report(pos)
