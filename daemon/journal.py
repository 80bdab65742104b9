"""The call journal: every call id the daemon had, so a daemon restarted after a crash (SIGKILL, an OOM kill, a
power cut) still knows each of them, and the worker processes a dead daemon may have left running.

Append-only segments ``<state dir>/calls/journal-<n>.log``; a record is ``!IIB`` (payload length, CRC-32 of the
payload, kind) and its payload:

- ``S`` a call started: ``!dB`` (started, flags: 1 = a JSON call, 4 = a starter follows, 8 = an attempt follows)
  and its id, service and method (each ``!H`` length + UTF-8; length 0xFFFF for no method), then the starter (the
  token hash of the principal that started it: who may read, attach to and cancel it) and the attempt (``!H``:
  2 and up for a re-run of a call lost in a daemon restart); written before its worker is sent the call;
- ``F`` a call finished: ``!ddBI`` (started, finished, flags: 1 = JSON, 2 = lost, 4 and 8 as for ``S``; frame
  count), the id, service and method, the starter and attempt when flagged, ``!BII`` (kind, meta length, body
  length) per frame, the frames' JSON metas, then their bodies;
  written before anyone is answered. A body of 1 MiB or more is not in it but in its ``/dev/shm`` file (meta
  ``_shm``), which the next daemon adopts;
- ``D`` a call was dropped before any worker saw it: its id;
- ``W`` a worker started: ``{"env", "pids": [[pid, start time in clock ticks], ...]}``; ``X`` it exited: ``{"pid"}``.

A restarted daemon replays the segments in order (the last record of an id wins; a torn or corrupt tail ends its
segment), kills the workers still running under a recorded pid and start time, and starts a new segment. A new
segment begins when the current one passes ``SEGMENT_BYTES``, with the running calls and live workers written
again at its start; a segment is deleted once none of the finished calls it holds is kept by the call table
(count, byte and age budget, as before the journal).

A finished call the table lets go leaves a tombstone (``tombstones.py``, its own compacted file beside the
segments, kept 7 days): a later request with its id answers that its result is gone, and never runs it again.

Durability (``TETHER_CALL_JOURNAL``, see docs/RELIABILITY.md for the measured costs):

- ``batched`` (default): each record is one ``writev`` straight to the file, no user-space buffer, so it is in the
  kernel's page cache and survives the daemon *process* dying at any point after; an fsync follows within
  ``SYNC_SECONDS``, in a thread (a power cut loses at most that last second of records — and kills the workers
  and empties ``/dev/shm`` anyway).
- ``fsync``: each finished call's record is fsynced before its caller is answered (on the event loop).
- ``off``: no journal (a restarted daemon knows no call ids).

A write that fails (a full disk) is cut back off the file and logged; calls go on without their record. The
journal holds ``calls/lock`` (flock) while the daemon runs: a second daemon started on the same state dir keeps
no journal and kills no worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import json
import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from tether.daemon.orphans import kill_orphans, start_ticks
from tether.daemon.store import sync_dir
from tether.daemon.tombstones import Tombstones

log = structlog.get_logger("tether.daemon.journal")

RECORD = struct.Struct("!IIB")
_START = struct.Struct("!dB")
_FINISH = struct.Struct("!ddBI")
_FRAME = struct.Struct("!BII")
_STR = struct.Struct("!H")
_NONE = 0xFFFF
JSON_CALL, LOST, STARTER, ATTEMPT = 1, 2, 4, 8
_ATTEMPT = struct.Struct("!H")
START, FINISH, DROP, WORKER, WORKER_GONE = (ord(c) for c in "SFDWX")
SEGMENT_BYTES = 64 * 1024 * 1024
SYNC_SECONDS = 1.0
MODES = ("batched", "fsync", "off")
_SEGMENT = re.compile(r"journal-(\d{8})\.log")
_MAX_PARTS = 64  # more bodies than this are joined into one buffer (writev takes at most IOV_MAX of them)

Frame = tuple[int, dict[str, Any], bytes]


@dataclass
class Replayed:
    """What the journal held: calls that were running (lost), finished calls in finish order (their segment,
    header and frames) and workers that may still run (``[[pid, ticks], ...]`` each)."""

    running: list[dict[str, Any]] = field(default_factory=list)
    finished: list[tuple[int, dict[str, Any], list[Frame]]] = field(default_factory=list)
    workers: list[list[list[int]]] = field(default_factory=list)


class Journal:
    """The daemon's call journal in ``directory`` (see the module docstring). All methods but the fsyncs run on
    the daemon's event loop thread."""

    def __init__(self, directory: Path, *, mode: str | None = None, segment_bytes: int = SEGMENT_BYTES) -> None:
        self.dir = directory
        mode = mode or os.environ.get("TETHER_CALL_JOURNAL") or "batched"
        if mode not in MODES:
            log.warning("journal_mode_unknown", mode=mode, using="batched")
            mode = "batched"
        self.mode = mode
        self.segment_bytes = segment_bytes
        self.failures = 0  # records that could not be written (a full disk)
        self._fd = -1
        self._seq = 0
        self._size = 0
        self._segments: set[int] = set()
        self._live: dict[int, int] = {}  # segment -> finished calls of it the call table keeps
        self._running: dict[str, bytes] = {}  # call id -> its S payload (written again into each new segment)
        self._workers: dict[int, bytes] = {}  # first pid -> its W payload (likewise)
        self._sync_due = False
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock_fd = -1
        self._targets: dict[tuple[str, str | None], bytes] = {}
        self.tombstones = Tombstones(None)  # in memory until replay() holds the lock (then in its file)

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    def _path(self, seq: int) -> Path:
        return self.dir / f"journal-{seq:08d}.log"

    # -- start -------------------------------------------------------------------------------------------------
    def replay(self) -> Replayed:
        """Read every segment, then start a new one. Nothing to replay when the journal is off."""
        out = Replayed()
        if not self.enabled:
            return out
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self._lock():
            return out
        segments = sorted(int(m.group(1)) for name in os.listdir(self.dir) if (m := _SEGMENT.fullmatch(name)))
        entries: dict[str, tuple[int, dict[str, Any], list[Frame] | None]] = {}
        workers: dict[int, list[list[int]]] = {}
        for seq in segments:
            try:
                data = self._path(seq).read_bytes()
            except OSError as exc:
                log.warning("journal_unreadable", segment=seq, error=str(exc))
                continue
            for kind, payload in _records(data, seq):
                try:
                    _apply(kind, payload, seq, entries, workers)
                except (ValueError, KeyError, TypeError, IndexError, struct.error) as exc:
                    log.warning("journal_record_skipped", segment=seq, kind=chr(kind), error=str(exc))
        for seq_, header, frames in entries.values():
            if frames is None:
                out.running.append(header)
            else:
                out.finished.append((seq_, header, frames))
                self._live[seq_] = self._live.get(seq_, 0) + 1
        out.workers = list(workers.values())
        self._segments = set(segments)
        self._seq = max(segments, default=0)
        self.tombstones = Tombstones(self.dir / "tombstones.log")
        self.tombstones.load()
        self._open(self._seq + 1)
        return out

    def _lock(self) -> bool:
        """Hold the journal's lock (released by the kernel when this process dies, however it dies). A daemon
        that runs on this state dir already holds it: this one then keeps no journal and kills no worker."""
        try:
            self._lock_fd = os.open(self.dir / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            log.warning("journal_locked", error=str(exc), consequence="another daemon runs on this state dir: "
                        "no call journal, no orphaned worker killed")
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            self.mode = "off"
            return False

    def _open(self, seq: int) -> None:
        try:
            fd = os.open(self._path(seq), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self._failed(exc)
            return
        old, self._fd, self._seq, self._size = self._fd, fd, seq, 0
        self._segments.add(seq)
        self._submit(sync_dir, self.dir)  # the new file's name, durable with the next sync
        if old >= 0:
            self._submit(_sync_close, old)

    # -- records -----------------------------------------------------------------------------------------------
    def started(self, call_id: str, service: str, method: str | None, json_mode: bool, started: float, *,
                starter: str | None = None, attempt: int = 1) -> None:
        if not self.enabled:
            return
        flags, extra = _extra(starter, attempt)
        payload = b"".join((_START.pack(started, flags | (JSON_CALL if json_mode else 0)), _strings(call_id),
                            self._target(service, method), extra))
        self._running[call_id] = payload
        self._append(START, [payload])

    def _target(self, service: str, method: str | None) -> bytes:
        """The encoded service and method, once per target (the small-call path's cost is mostly Python)."""
        key = (service, method)
        target = self._targets.get(key)
        if target is None:
            if len(self._targets) >= 1024:
                self._targets.clear()
            target = self._targets[key] = _strings(service, method)
        return target

    def finished(self, call_id: str, service: str, method: str | None, json_mode: bool, started: float,
                 finished: float, frames: list[Frame], *, lost: bool = False, starter: str | None = None,
                 attempt: int = 1) -> int | None:
        """Record a finished call with its frames; returns the segment holding it (None: not recorded)."""
        if not self.enabled:
            return None
        self._running.pop(call_id, None)
        flags, extra = _extra(starter, attempt)
        flags |= (JSON_CALL if json_mode else 0) | (LOST if lost else 0)
        head = [_FINISH.pack(started, finished, flags, len(frames)), _strings(call_id), self._target(service, method),
                extra]
        if len(frames) == 1 and not frames[0][1]:  # the common case: one RESULT or ERROR frame, no meta
            kind, _, body = frames[0]
            head.append(_FRAME.pack(kind, 0, len(body)))
            parts = [b"".join(head), body]
        else:
            metas = [json.dumps(m, separators=(",", ":")).encode() if m else b"" for _, m, _ in frames]
            head += [_FRAME.pack(k, len(m), len(b)) for (k, _, b), m in zip(frames, metas, strict=True)]
            parts = [b"".join(head + metas), *(b for _, _, b in frames if b)]
            if len(parts) > _MAX_PARTS:
                parts = [b"".join(parts)]
        seq = self._append(FINISH, parts)
        if seq is not None:
            self._live[seq] = self._live.get(seq, 0) + 1
            if self.mode == "fsync":
                with contextlib.suppress(OSError):
                    os.fsync(self._fd)
        return seq

    def dropped(self, call_id: str) -> None:
        """A started call that never reached a worker (it is forgotten, not lost)."""
        if self.enabled and self._running.pop(call_id, None) is not None:
            self._append(DROP, [_strings(call_id)])

    def evicted(self, seq: int | None) -> None:
        """The call table let go of a finished call recorded in segment ``seq``."""
        if seq is None or seq not in self._live:
            return
        self._live[seq] -= 1
        if self._live[seq] <= 0 and seq < self._seq:
            self.collect()

    def worker_started(self, env: str, pids: list[int | None]) -> None:
        """A worker process started (``pids``: the process the daemon started, and the worker itself when a
        launcher started it)."""
        if not self.enabled:
            return
        known = [[pid, ticks] for pid in dict.fromkeys(p for p in pids if p)
                 if (ticks := start_ticks(pid)) is not None]
        if known:
            payload = json.dumps({"env": env, "pids": known}).encode()
            self._workers[known[0][0]] = payload
            self._append(WORKER, [payload])

    def worker_stopped(self, pid: int | None) -> None:
        if self.enabled and pid is not None and self._workers.pop(pid, None) is not None:
            self._append(WORKER_GONE, [json.dumps({"pid": pid}).encode()])

    def _append(self, kind: int, parts: list[bytes]) -> int | None:
        if self._fd < 0:
            return None
        if self._size >= self.segment_bytes:
            self._rotate()
        crc = 0
        size = 0
        for part in parts:
            crc = zlib.crc32(part, crc)
            size += len(part)
        total = RECORD.size + size
        try:
            if os.writev(self._fd, [RECORD.pack(size, crc, kind), *parts]) != total:
                raise OSError(errno.ENOSPC, "short write to the call journal")
        except OSError as exc:
            self._failed(exc)
            return None
        self._size += total
        if not self._sync_due and self.mode == "batched":
            self._schedule_sync()
        return self._seq

    def _failed(self, exc: OSError) -> None:
        """A write failed (a full disk): cut the partial record off, so the segment still replays."""
        with contextlib.suppress(OSError):
            if self._fd >= 0:
                os.ftruncate(self._fd, self._size)
        self.failures += 1
        if self.failures == 1 or self.failures % 1000 == 0:
            log.warning("journal_write_failed", error=str(exc), failures=self.failures,
                        consequence="calls run, but a daemon restarted now would not know these call ids")

    def _rotate(self) -> None:
        self._open(self._seq + 1)
        for payload in list(self._workers.values()):
            self._append(WORKER, [payload])
        for payload in list(self._running.values()):
            self._append(START, [payload])
        self.collect()

    def collect(self) -> None:
        """Delete the segments before the current one that hold no finished call the table keeps (their
        running calls and workers were written again into a later segment)."""
        for seq in sorted(self._segments):
            if seq < self._seq and self._live.get(seq, 0) <= 0:
                self._segments.discard(seq)
                self._live.pop(seq, None)
                with contextlib.suppress(OSError):
                    self._path(seq).unlink()

    # -- durability --------------------------------------------------------------------------------------------
    def _schedule_sync(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not serving yet (the daemon starting): synced by the next scheduled sync or close
            return
        self._sync_due = True
        loop.call_later(SYNC_SECONDS, self._sync)

    def _sync(self) -> None:
        self._sync_due = False
        if self._fd >= 0:
            self._submit(_fsync, self._fd)
        if self.tombstones.fileno() >= 0:
            self._submit(_fsync, self.tombstones.fileno())

    def _submit(self, fn: Any, arg: Any) -> None:
        """Run ``fn(arg)`` on the journal's one I/O thread (fsyncs and closes, in order)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="tether-journal")
        self._executor.submit(fn, arg)

    def close(self) -> None:
        """Sync and close (the daemon stops)."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            self._submit(_sync_close, fd)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self.tombstones.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def _records(data: bytes, seq: int) -> list[tuple[int, bytes]]:
    """The whole records of a segment; a torn or corrupt one ends it (a crash mid-write, a full disk)."""
    out = []
    pos, end = 0, len(data)
    view = memoryview(data)
    while pos + RECORD.size <= end:
        size, crc, kind = RECORD.unpack_from(data, pos)
        start, stop = pos + RECORD.size, pos + RECORD.size + size
        if stop > end or zlib.crc32(view[start:stop]) != crc:
            log.warning("journal_torn", segment=seq, offset=pos, dropped_bytes=end - pos)
            break
        out.append((kind, data[start:stop]))
        pos = stop
    return out


def _apply(kind: int, payload: bytes, seq: int, entries: dict[str, tuple[int, dict[str, Any], list[Frame] | None]],
           workers: dict[int, list[list[int]]]) -> None:
    if kind == START:
        started, flags = _START.unpack_from(payload)
        (cid, service, method), pos = _read_strings(payload, _START.size, 3)
        call_id = str(cid)
        starter, attempt, _ = _read_extra(payload, pos, flags)
        entries.pop(call_id, None)  # re-inserted: the last record of an id decides its place
        entries[call_id] = (seq, {"id": call_id, "service": service, "method": method,
                                  "json": bool(flags & JSON_CALL), "started": started, "starter": starter,
                                  "attempt": attempt}, None)
    elif kind == FINISH:
        started, finished, flags, count = _FINISH.unpack_from(payload)
        (cid, service, method), pos = _read_strings(payload, _FINISH.size, 3)
        call_id = str(cid)
        starter, attempt, pos = _read_extra(payload, pos, flags)
        table = [_FRAME.unpack_from(payload, pos + i * _FRAME.size) for i in range(count)]
        pos += count * _FRAME.size
        metas = []
        for _, mlen, _ in table:
            metas.append(json.loads(payload[pos:pos + mlen]) if mlen else {})
            pos += mlen
        frames: list[Frame] = []
        for (k, _, blen), meta in zip(table, metas, strict=True):
            frames.append((k, meta, payload[pos:pos + blen]))
            pos += blen
        if pos != len(payload):
            raise ValueError("frame lengths do not add up")
        entries.pop(call_id, None)
        entries[call_id] = (seq, {"id": call_id, "service": service, "method": method, "json": bool(flags & JSON_CALL),
                                  "lost": bool(flags & LOST), "started": started, "finished": finished,
                                  "starter": starter, "attempt": attempt}, frames)
    elif kind == DROP:
        entries.pop(_read_strings(payload, 0, 1)[0][0] or "", None)
    elif kind == WORKER:
        pids = json.loads(payload)["pids"]
        workers[int(pids[0][0])] = [[int(p), int(t)] for p, t in pids]
    elif kind == WORKER_GONE:
        workers.pop(int(json.loads(payload)["pid"]), None)


def _extra(starter: str | None, attempt: int) -> tuple[int, bytes]:
    """The flags and bytes of a record's optional starter and attempt."""
    flags, parts = 0, []
    if starter:
        flags |= STARTER
        parts.append(_strings(starter))
    if attempt != 1:
        flags |= ATTEMPT
        parts.append(_ATTEMPT.pack(min(attempt, 0xFFFF)))
    return flags, b"".join(parts)


def _read_extra(data: bytes, pos: int, flags: int) -> tuple[str | None, int, int]:
    """A record's starter (None) and attempt (1) as its flags say, and the position after them."""
    starter: str | None = None
    attempt = 1
    if flags & STARTER:
        (starter,), pos = _read_strings(data, pos, 1)
    if flags & ATTEMPT:
        (attempt,) = _ATTEMPT.unpack_from(data, pos)
        pos += _ATTEMPT.size
    return starter, attempt, pos


def _strings(*values: str | None) -> bytes:
    out = []
    for value in values:
        if value is None:
            out.append(_STR.pack(_NONE))
        else:
            raw = value.encode()
            out.append(_STR.pack(len(raw)) + raw)
    return b"".join(out)


def _read_strings(data: bytes, pos: int, count: int) -> tuple[list[str | None], int]:
    out: list[str | None] = []
    for _ in range(count):
        (size,) = _STR.unpack_from(data, pos)
        pos += _STR.size
        if size == _NONE:
            out.append(None)
        else:
            out.append(data[pos:pos + size].decode())
            pos += size
    return out, pos


def _fsync(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.fsync(fd)


def _sync_close(fd: int) -> None:
    _fsync(fd)
    with contextlib.suppress(OSError):
        os.close(fd)


__all__ = ["Journal", "Replayed", "kill_orphans", "start_ticks"]
