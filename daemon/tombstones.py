"""Tombstones: the ids of finished calls whose results the call table let go, kept much longer than the results
(7 days by default), so a retry with such an id never runs the call again — it answers ``NotFound`` with
``details["reason"] == "result_gone"`` instead (a paid GPU job is not paid twice because a retry came late).

One file, ``<state dir>/calls/tombstones.log``: a JSON object per line (``id``, ``service``, ``method``,
``json``, ``state``, ``started``, ``finished`` and, when the call had one, ``starter``: the token hash of who
started it). Appended with one ``write`` each (in the page cache at once: it survives the daemon process dying);
the call journal fsyncs it with its own records. A torn last line (a crash mid-write) is skipped. The file is
compacted — rewritten with only the live entries (temp file, fsync, rename) — when it holds more than twice as
many lines as live entries; entries older than ``keep_seconds`` are dropped, and past ``max_count`` the oldest
go first (bounded in memory and on disk whatever the call rate).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import structlog

from tether.daemon.store import sync_dir

log = structlog.get_logger("tether.daemon.tombstones")

KEEP_SECONDS = 7 * 24 * 3600.0
MAX_COUNT = 50_000
_encode = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps with options builds an encoder per call


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        log.warning("setting_ignored", name=name, value=os.environ.get(name), using=default)
        return default


class Tombstones:
    """Finished call ids by id (insertion order = finish order), with their file (None: kept in memory only)."""

    def __init__(self, path: Path | None, *, keep_seconds: float | None = None, max_count: int | None = None) -> None:
        self.path = path
        self.keep_seconds = keep_seconds if keep_seconds is not None else _env_float(
            "TETHER_CALL_TOMBSTONE_SECONDS", KEEP_SECONDS)
        self.max_count = max_count if max_count is not None else int(_env_float("TETHER_CALL_TOMBSTONES", MAX_COUNT))
        # id -> (finished, its line), oldest first (an OrderedDict: a dict's first key is slow to find after many
        # deletions at its front)
        self._entries: OrderedDict[str, tuple[float, bytes]] = OrderedDict()
        self._lines = 0  # lines in the file (live or not)
        self._fd = -1

    def __len__(self) -> int:
        return len(self._entries)

    def load(self) -> None:
        """Read the file (dropping expired and torn entries), compact it, and open it for appending."""
        if self.path is None:
            return
        with contextlib.suppress(FileNotFoundError), open(self.path, "rb") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    call_id, finished = str(entry["id"]), float(entry["finished"])
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue  # torn by a crash mid-write
                self._entries.pop(call_id, None)
                self._entries[call_id] = (finished, line if line.endswith(b"\n") else line + b"\n")
        self._expire(time.time())
        self._compact()

    def add(self, call_id: str, entry: dict[str, Any]) -> None:
        """Keep ``entry`` (service, method, json, state, started, finished, starter) for ``call_id``."""
        line = _encode({"id": call_id, **entry}).encode() + b"\n"
        self._entries.pop(call_id, None)
        self._entries[call_id] = (float(entry["finished"]), line)
        self._expire(time.time())
        if self._fd >= 0:
            try:
                os.write(self._fd, line)
                self._lines += 1
            except OSError as exc:  # a full disk: kept in memory, and in the file at the next compaction
                log.warning("tombstone_write_failed", error=str(exc))
            if self._lines > 2 * len(self._entries) + 64:
                self._compact()

    def get(self, call_id: str) -> dict[str, Any] | None:
        kept = self._entries.get(call_id)
        if kept is None or time.time() - kept[0] > self.keep_seconds:
            return None
        entry: dict[str, Any] = json.loads(kept[1])
        return entry

    def starters(self) -> dict[str, str]:
        """Who started each kept call (those that had a starter)."""
        out = {}
        for call_id, (_, line) in self._entries.items():
            if b'"starter"' in line:
                out[call_id] = str(json.loads(line)["starter"])
        return out

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            oldest, (finished, _) = next(iter(entries.items()))
            if len(entries) > self.max_count or now - finished > self.keep_seconds:
                entries.popitem(last=False)
            else:
                break

    def _compact(self) -> None:
        """Rewrite the file with the live entries only (atomically), and append to the new one."""
        assert self.path is not None
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                data = b"".join(line for _, line in self._entries.values())
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            sync_dir(self.path.parent)
            new = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        except OSError as exc:  # a full disk: the old file stays, appends go on to it
            log.warning("tombstones_compaction_failed", error=str(exc))
            with contextlib.suppress(OSError):
                tmp.unlink()
            if self._fd < 0:
                with contextlib.suppress(OSError):
                    self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            return
        old, self._fd, self._lines = self._fd, new, len(self._entries)
        if old >= 0:
            os.close(old)

    def fileno(self) -> int:
        """The appended file's descriptor (-1: none), for the journal's fsyncs."""
        return self._fd

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(fd)
            os.close(fd)


__all__ = ["KEEP_SECONDS", "MAX_COUNT", "Tombstones"]
