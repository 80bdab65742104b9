"""Calls the daemon knows about: running or finished, by call id, so a second request with the same id
attaches to the first instead of running again."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from tether.daemon import protocol as p

FINAL = (p.RESULT, p.ERROR)


@dataclass
class Call:
    """One remote call: the frames it produced (logs, items, then a result or an error)."""

    call_id: str
    service: str
    method: str | None
    json_mode: bool
    started: float = field(default_factory=time.time)
    finished: float | None = None
    frames: list[tuple[int, dict[str, Any], bytes]] = field(default_factory=list)
    nbytes: int = 0
    worker_tag: int | None = None
    worker: Any = None
    on_finish: Any = None
    _waiters: list[asyncio.Future[bool | None]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.finished is not None

    @property
    def state(self) -> str:
        if not self.done:
            return "running"
        kind, meta, _ = self.frames[-1]
        if kind == p.RESULT:
            return "succeeded"
        return "cancelled" if meta.get("error", {}).get("type") == "CallCancelled" else "failed"

    def add(self, kind: int, meta: dict[str, Any], body: bytes) -> None:
        self.frames.append((kind, meta, body))
        self.nbytes += len(body)
        if kind in FINAL:
            self.finished = time.time()
            if self.on_finish is not None:
                self.on_finish(self)
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(True)

    async def follow(self, timeout: float | None = None) -> AsyncIterator[tuple[int, dict[str, Any], bytes] | None]:
        """Yield every frame from the first; ``None`` when ``timeout`` passes with nothing new (a heartbeat)."""
        loop = asyncio.get_running_loop()
        i = 0
        while True:
            while i < len(self.frames):
                frame = self.frames[i]
                i += 1
                yield frame
                if frame[0] in FINAL:
                    return
            fut: asyncio.Future[bool | None] = loop.create_future()
            self._waiters.append(fut)
            timer = loop.call_later(timeout, _expire, fut) if timeout else None
            try:
                got = await fut
            finally:
                if timer is not None:
                    timer.cancel()
            if got is None:
                yield None

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
        import json

        return [json.loads(body) for kind, _, body in self.frames if kind == p.LOG]


def _expire(fut: asyncio.Future[bool | None]) -> None:
    if not fut.done():
        fut.set_result(None)


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
