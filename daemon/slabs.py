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

from collections import OrderedDict
from typing import Any

from tether.daemon.protocol import Spill
from tether.errors import NotFound
from tether.protocol.headers import RESULT_SLAB, SHM_LENT
from tether.protocol.shm import MappedFile, SlabWriter, is_slab_path, keep_freed_memory

__all__ = ["ARGS_HEADER", "RESULT_HEADER", "MappedFile", "ResultSpill", "SlabCache", "SlabWriter", "is_slab_path",
           "keep_freed_memory", "not_kept", "not_kept_error"]

ARGS_HEADER = SHM_LENT
RESULT_HEADER = RESULT_SLAB


def not_kept_error(call_id: str | None = None) -> NotFound:
    """What anyone but the lender of a result slab gets for that result."""
    what = f"call {call_id}" if call_id else "this call"
    return NotFound(f"the result of {what} was handed to its caller and not kept",
                    hint="to fetch a call's result again later, start it with .spawn() or an explicit call id")


def not_kept(call_id: str) -> dict[str, Any]:
    """:func:`not_kept_error` as an ERROR frame's meta."""
    return not_kept_error(call_id).to_wire()


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
        self._chunks: list[Any] = []  # the slab stays the client's: nothing to remove


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
