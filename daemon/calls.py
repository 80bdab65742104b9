"""Calls the daemon knows about: running or finished, by call id, so a second request with the same id
attaches to the first instead of running again — also after the daemon crashed and restarted: the table writes
each call to the call journal (``journal.py``) and a restarted daemon's table is rebuilt from it
(:meth:`CallTable.recover`). A call that was running when the daemon died is *lost*: it answers a typed,
retryable ``WorkerDied`` (``details["lost_in"] == "daemon_restart"``), and the next request with its id runs it
again (once: that request's call replaces it in the table; its ``attempt`` is one more, and the response says so
in ``X-Tether-Call-Attempt``, so a client that saw items of the lost run knows these are a re-run's). A call that
finished keeps answering as it did; if its large result's ``/dev/shm`` file did not survive (a reboot, another
daemon's sweep, removed behind the daemon's back), it answers ``NotFound`` (``details["reason"] ==
"result_gone"``) and is not run again.

A finished call leaves the table after its retention (``TETHER_CALL_RETENTION_SECONDS``, an hour by default, or
the count and byte budgets) but its id does not: a tombstone (``tombstones.py``, 7 days) answers every later
request with that id — a retry too — with the same ``NotFound`` (``details`` ``reason``, ``call_id``,
``finished_at``), never by running it again; its summary keeps the state it ended in. Who started a call (the
token hash of its principal) is journaled with it and kept in its tombstone: a restarted daemon still refuses
others (see :attr:`CallTable.starters`).

A RESULT or ITEM body of 1 MiB or more stays in the shared-memory file the worker wrote (frame meta ``_shm`` =
its path, ``_size`` = its length, body empty): it counts in the table's byte budget and is deleted when the call
leaves the table (or the daemon stops), never while a response is still being written from it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import weakref
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.daemon import fills, result_pool, slabs
from tether.daemon import protocol as p
from tether.daemon.journal import Journal, Replayed, kill_orphans
from tether.daemon.tombstones import Tombstones
from tether.errors import NotFound, TetherError, WorkerDied, error_from_wire
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
    lost: bool = False  # it was running when the daemon died: the next request with its id runs it again
    journal_seg: int | None = None  # the journal segment holding its finish record
    attempt: int = 1  # 2 and up: a re-run of a call lost in a daemon restart
    starter: str | None = None  # the token hash of who started it
    ended_as: str | None = None  # the state it ended in, when an error frame stands in for its gone result
    pooled: str | None = None  # the daemon's file lent for its big result, while the result is kept in it
    fill: Any = None  # its result still being written into that file (tether.daemon.fills.Fill)
    _pool_used: bool = False
    _pool_release: bool = False
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
        if self.ended_as is not None:
            return CallState(self.ended_as)
        kind, meta, _ = self.frames[-1]
        if kind == p.RESULT:
            return CallState.SUCCEEDED
        return CallState.CANCELLED if meta.get("error", {}).get("type") == "CallCancelled" else CallState.FAILED

    def add(self, kind: int, meta: dict[str, Any], body: bytes) -> None:
        """Record a frame from the worker and wake whoever waits for one."""
        if self.pooled is not None and kind == p.RESULT and meta.get("_slab") == self.pooled:
            meta = {**meta, "_pooled": True}  # journaled as not kept: see tether.daemon.result_pool
            self._pool_used = True
            if meta.get("_filling"):
                self.fill = fills.FILLS.get(self.pooled)
            self.nbytes += meta.get("_size", 0)
        self.frames.append((kind, meta, body))
        self.nbytes += len(body)
        if "_shm" in meta:
            self._files.append(meta["_shm"])
            self.nbytes += meta.get("_size", 0)
        if kind in FINAL:
            self.finished = time.time()
            if kind == p.RESULT and meta.get("_size", 0) >= p.SHM_THRESHOLD:
                result_pool.note_big(self.service, self.method)
            if self.pooled is not None and not self._pool_used:  # a small result, or an error: not needed
                result_pool.POOL.give_back(self.pooled)
                self.pooled = None
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
        if self._pins:
            return
        if self._pool_release:
            self.release_pooled()
        if self._released:
            self._delete_files()

    def release_pooled(self) -> None:
        """The result's caller has it (or the call left the table): its lent file goes back to the pool, once no
        response is being written from it; from then on the result is not kept."""
        if self.pooled is None:
            return
        if self._pins:
            self._pool_release = True
            return
        result_pool.POOL.give_back(self.pooled)
        self.pooled = None
        self._pool_release = False

    def release(self) -> None:
        """The call left the table: delete its files once no response is being written from them."""
        self._released = True
        self.release_pooled()  # at once, or once unpinned
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
        out = {
            "call_id": self.call_id,
            "service": self.service,
            "method": self.method,
            "state": self.state,
            "started": self.started,
            "finished": self.finished,
            "seconds": (self.finished or time.time()) - self.started,
            "attempt": self.attempt,
        }
        if self.ended_as is not None:
            out["result_gone"] = True
        return out

    def gone(self) -> Frame:
        """A ``/dev/shm`` file of its result (or items) is gone: from now on it answers ``NotFound``
        (result_gone) in the state it ended in; returns that error frame. Each frame with a file is replaced in
        place (a response being written keeps its place in the list) and the first of them ends every answer."""
        error: Frame = (p.ERROR, result_gone_error(self).to_wire(), b"")
        if self.done and self.ended_as is None:
            self.ended_as = self.state.value
        for i, (_, meta, _) in enumerate(self.frames):
            if meta and "_shm" in meta:
                self.frames[i] = error
        return error

    def logs(self) -> list[dict[str, Any]]:
        return [json.loads(body) for kind, _, body in self.frames if kind == p.LOG]


def frame_body(meta: dict[str, Any], body: bytes, call: Call | None = None) -> bytes:
    """A frame's payload bytes, read from its shared-memory file when it has one (the file stays); a file that
    is gone is ``NotFound`` (result_gone), and from then on ``call`` answers so."""
    path = meta.get("_shm")
    if path is None and "_slab" in meta:
        raise slabs.not_kept_error()
    if not path:
        return body
    try:
        return p.read_shm(path, unlink=False)
    except FileNotFoundError:
        if call is None:
            raise NotFound("a result kept in shared memory is gone", hint="run the call under a new call id",
                           details={"reason": "result_gone"}) from None
        raise error_from_frame(call.gone()) from None


def present(call: Call, kind: int, meta: dict[str, Any], body: bytes) -> Frame:
    """The frame to answer with: ``call``'s result-gone error in place of a frame whose ``/dev/shm`` file is gone
    (a reboot, another daemon's sweep, or removed behind this daemon's back)."""
    path = meta.get("_shm") if meta else None
    if path is not None and not os.path.exists(path):
        return call.gone()
    return kind, meta, body


def error_from_frame(frame: Frame) -> TetherError:
    """The typed error an ERROR frame carries."""
    exc = error_from_wire(frame[1])
    return exc if isinstance(exc, TetherError) else TetherError(str(exc))


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
    """Running calls, plus finished ones kept for re-attach within a count, byte and age budget; written to the
    call journal when there is one."""

    def __init__(self, max_finished: int = 10_000, max_bytes: int = 512 * 1024**2, ttl: float | None = None,
                 journal: Journal | None = None) -> None:
        self.calls: dict[str, Call] = {}
        self.max_finished = max_finished
        self.max_bytes = max_bytes
        self.ttl = ttl if ttl is not None else retention_seconds()
        self.journal = journal
        self.tombstones = journal.tombstones if journal is not None else Tombstones(None)
        self.starters: dict[str, str] = {}
        """Call id -> token hash of the principal that started it (the daemon's access checks read and fill it;
        journaled with each call, so it survives a restart)."""
        self._finished: deque[Call] = deque()
        self._finished_bytes = 0

    @classmethod
    def recover(cls, state_dir: Path, **budgets: Any) -> CallTable:
        """The table of a daemon starting on ``state_dir``: its call journal replayed, the workers a dead daemon
        left running killed (before anything runs again), the calls it knew restored."""
        journal = Journal(state_dir / "calls")
        replayed = journal.replay()
        kill_orphans(replayed.workers)
        table = cls(journal=journal, **budgets)
        table.restore(replayed)
        return table

    def get(self, call_id: str) -> Call | None:
        """The call with this id: running, finished, or only its tombstone (its result gone)."""
        if self._finished and time.time() - (self._finished[0].finished or 0) > self.ttl:
            self._expire()
        call = self.calls.get(call_id)
        return call if call is not None else self._tomb(call_id)

    def attachable(self, call_id: str) -> Call | None:
        """The call a request with this id attaches to; None when it should run (unknown, or lost)."""
        call = self.get(call_id)
        return None if call is None or call.lost else call

    def _tomb(self, call_id: str) -> Call | None:
        """A finished call whose result was let go, made up from its tombstone: it answers result_gone."""
        entry = self.tombstones.get(call_id)
        if entry is None:
            return None
        call = Call(call_id, entry["service"], entry.get("method"), bool(entry.get("json")),
                    started=float(entry["started"]))
        call.starter = entry.get("starter")
        call.attempt = int(entry.get("attempt") or 1)
        call.finished = float(entry["finished"])
        call.ended_as = entry.get("state") or CallState.SUCCEEDED.value
        call.frames.append((p.ERROR, result_gone_error(call).to_wire(), b""))
        return call

    def add(self, call: Call) -> None:
        before = self.calls.get(call.call_id)
        if before is not None and before.lost:
            call.attempt = before.attempt + 1  # a re-run of a lost call
        call.starter = call.starter or self.starters.get(call.call_id)
        call.on_finish = self._on_finish
        self.calls[call.call_id] = call
        if self.journal is not None:
            self.journal.started(call.call_id, call.service, call.method, call.json_mode, call.started,
                                 starter=call.starter, attempt=call.attempt)

    def discard(self, call: Call) -> None:
        """Forget a call that never reached its worker."""
        if self.calls.get(call.call_id) is call:
            del self.calls[call.call_id]
            if self.journal is not None:
                self.journal.dropped(call.call_id)

    def running(self) -> list[Call]:
        return [c for c in self.calls.values() if not c.done]

    def _on_finish(self, call: Call) -> None:
        if self.journal is not None:
            call.journal_seg = self.journal.finished(call.call_id, call.service, call.method, call.json_mode,
                                                     call.started, call.finished or time.time(), call.frames,
                                                     lost=call.lost, starter=call.starter, attempt=call.attempt)
        self._keep(call)

    def _keep(self, call: Call) -> None:
        self._finished.append(call)
        self._finished_bytes += call.nbytes
        self._expire()

    def _expire(self) -> None:
        """Let go of the oldest finished calls past the count, byte or age budget; each leaves a tombstone
        (written before its journal segment may go)."""
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
                if not old.lost:  # a lost call never finished: its id may run again
                    self.tombstones.add(old.call_id, {
                        "service": old.service, "method": old.method, "json": old.json_mode,
                        "state": old.state.value, "started": old.started, "finished": old.finished,
                        "attempt": old.attempt, **({"starter": old.starter} if old.starter else {})})
            old.release()
            if self.journal is not None:
                self.journal.evicted(old.journal_seg)

    # -- after a restart ---------------------------------------------------------------------------------------
    def restore(self, replayed: Replayed) -> None:
        """Rebuild the table from the journal: finished calls as they were (large bodies: their ``/dev/shm``
        files adopted), calls that were running as lost ones."""
        self.starters.update(self.tombstones.starters())
        for seq, header, frames in replayed.finished:
            call = Call(header["id"], header["service"], header.get("method"), bool(header.get("json")),
                        started=float(header["started"]))
            call.lost, call.journal_seg = bool(header.get("lost")), seq
            self._restore_identity(call, header)
            moved = gone = False
            for kind, meta, body in frames:
                if "_shm" in meta:
                    try:
                        meta["_shm"], meta["_size"] = p.adopt_shm(meta["_shm"])
                        moved = True
                    except OSError:  # another tether process swept it, or the host rebooted
                        gone = True
                        break
                call.add(kind, meta, body)
            if gone or not call.done:  # it ran to its end, but its result is gone: an error takes its place
                ended = frames[-1][0] if frames else p.RESULT
                call.delete_files_now()
                call = Call(header["id"], header["service"], header.get("method"), bool(header.get("json")),
                            started=float(header["started"]))
                self._restore_identity(call, header)
                call.finished = float(header["finished"])
                call.add(p.ERROR, result_gone_error(call).to_wire(), b"")
                call.ended_as = (CallState.SUCCEEDED if ended == p.RESULT else CallState.FAILED).value
                moved = True
            call.finished = float(header["finished"])
            if moved and self.journal is not None:  # its record names files that are renamed or gone: anew
                self.journal.evicted(seq)
                call.journal_seg = self.journal.finished(call.call_id, call.service, call.method, call.json_mode,
                                                         call.started, call.finished, call.frames, lost=call.lost,
                                                         starter=call.starter, attempt=call.attempt)
            call.on_finish = self._on_finish
            self.calls[call.call_id] = call
            self._keep(call)  # in finish order: the budget lets go of the same calls as before the restart
        for header in replayed.running:
            self._lose(header)
        if self.journal is not None:
            self.journal.collect()

    def _restore_identity(self, call: Call, header: dict[str, Any]) -> None:
        """A journaled call's starter and attempt, back on it and in :attr:`starters`."""
        call.attempt = int(header.get("attempt") or 1)
        call.starter = header.get("starter")
        if call.starter:
            self.starters[call.call_id] = call.starter

    def _lose(self, header: dict[str, Any]) -> None:
        """Record a call that was running when the daemon died: its error frame answers every attach, and the
        next request with its id runs it again."""
        call = Call(header["id"], header["service"], header.get("method"), bool(header.get("json")),
                    started=float(header["started"]))
        call.lost = True
        self._restore_identity(call, header)
        call.on_finish = self._on_finish
        self.calls[call.call_id] = call
        call.add(p.ERROR, lost_error(call).to_wire(), b"")

    def close(self) -> None:
        """Delete every call's shared-memory files and close the journal (the daemon stops)."""
        for call in self.calls.values():
            call.delete_files_now()
        for call in self._finished:
            call.delete_files_now()
        _unlink_all(list(_doomed))
        if self.journal is not None:
            self.journal.close()


def lost_error(call: Call) -> WorkerDied:
    """The typed, retryable error of a call that was running when its daemon died."""
    return WorkerDied(f"call {call.call_id!r} was lost in a daemon restart: it was running when the daemon "
                      "stopped, and its worker was stopped with it",
                      hint="retry it with the same call id: it runs again, once",
                      details={"call_id": call.call_id, "lost_in": "daemon_restart", "service": call.service,
                               "method": call.method, "started": call.started})


def retention_seconds() -> float:
    """How long a finished call's result is kept for re-attach (``TETHER_CALL_RETENTION_SECONDS``, an hour)."""
    try:
        return float(os.environ.get("TETHER_CALL_RETENTION_SECONDS") or 3600.0)
    except ValueError:
        return 3600.0


def result_gone_error(call: Call) -> NotFound:
    """What a finished call answers once its result is gone: let go after its retention (only its tombstone is
    left), or its large result's ``/dev/shm`` file was removed (a reboot, another daemon's sweep). The call id
    is not run again."""
    finished = call.finished or time.time()
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(finished))
    return NotFound(f"call {call.call_id!r} ({call.service}.{call.method or '__call__'}) finished at {when}, but "
                    "its result is no longer kept", hint="a call id runs once: it is not run again under this id; "
                    "start it under a new call id (or force_rerun=True in an orchestrator) to run it again",
                    details={"reason": "result_gone", "call_id": call.call_id, "finished_at": finished,
                             "result_gone": True, "service": call.service, "method": call.method,
                             "started": call.started})
