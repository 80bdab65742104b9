"""Call records are written off the caller's path: a background thread batches them into the store or server,
and completes each first when it was queued with a ``resolve`` (the remote call's own duration, asked of its
daemon off the caller's path)."""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tether.errors import TetherError
from tether.logging import get_logger

if TYPE_CHECKING:
    from tether.registry.models import CallRecord
    from tether.registry.plain import PlainCall

__all__ = ["CallWriter", "Resolve"]

Resolve = Callable[["CallRecord | PlainCall"], "CallRecord | PlainCall"]
"""Completes a queued record on the writer's thread (e.g. its remote duration), giving back the same kind (a
``CallRecord``, or a ``PlainCall``); the record as queued on failure."""

log = get_logger("tether.registry.usage")
_WRITERS: weakref.WeakSet[CallWriter] = weakref.WeakSet()


def _worth_retrying(exc: BaseException) -> bool:
    """Storage hiccups are retried; a refusal (no access, bad record) will not change on retry."""
    return not isinstance(exc, TetherError) or exc.retryable


class CallWriter:
    """``put`` appends to an in-memory queue and returns at once; a thread writes batches to ``sink``.

    A full queue drops the record (counted in ``dropped``) rather than slow a call down; a batch the sink keeps
    refusing after retries is counted in ``failed``. ``flush`` waits until everything queued so far is written.
    """

    def __init__(
        self,
        sink: Callable[[list[CallRecord | PlainCall]], Any],
        *,
        batch_size: int = 200,
        interval: float = 0.2,
        max_queue: int = 100_000,
    ) -> None:
        self._sink = sink
        self._batch_size = batch_size
        self._interval = interval
        self._max_queue = max_queue
        self._queue: deque[tuple[CallRecord | PlainCall, Resolve | None]] = deque()
        self._cond = threading.Condition()
        self._pending = 0  # queued + in flight
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self.written = 0
        self.dropped = 0
        self.failed = 0
        _WRITERS.add(self)

    def put(self, record: CallRecord | PlainCall, resolve: Resolve | None = None) -> None:
        """Queue one record; never blocks on I/O and never raises for a full queue. ``resolve`` completes it on
        the writer's thread before it is written."""
        with self._cond:
            if os.getpid() != self._pid:  # forked (Airflow, multiprocessing): the parent's thread is not here
                self._queue.clear()
                self._pending, self._thread, self._pid = 0, None, os.getpid()
            if self._closed or len(self._queue) >= self._max_queue:
                self.dropped += 1
                return
            self._queue.append((record, resolve))
            self._pending += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tether-call-writer", daemon=True)
                self._thread.start()
            if len(self._queue) >= self._batch_size:
                self._cond.notify_all()

    def flush(self, timeout: float | None = 30.0) -> bool:
        """Wait until every record queued before this call is written (or given up); False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._pending and (self._thread is not None and self._thread.is_alive()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.05 if left is None else min(left, 0.05))
            return self._pending == 0

    def close(self, timeout: float | None = 10.0) -> None:
        """Flush and stop taking records."""
        self.flush(timeout)
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def _take(self) -> list[CallRecord | PlainCall]:
        with self._cond:
            if not self._queue and not self._closed:
                self._cond.wait(self._interval)
            taken: list[tuple[CallRecord | PlainCall, Resolve | None]] = []
            while self._queue and len(taken) < self._batch_size:
                taken.append(self._queue.popleft())
        return [_resolved(record, resolve) for record, resolve in taken]

    def _run(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                if self._closed:
                    return
                continue
            try:
                self._write(batch)
                self.written += len(batch)
            except Exception as exc:  # noqa: BLE001 - a lost usage record must never break a call
                self.failed += len(batch)
                log.warning("call_records_lost", count=len(batch), error=repr(exc))
            finally:
                with self._cond:
                    self._pending -= len(batch)
                    self._cond.notify_all()


    def _write(self, batch: list[CallRecord | PlainCall]) -> None:
        """Hand ``batch`` to the sink; a storage hiccup is retried, with backoff, up to five tries in all."""
        try:
            self._sink(batch)
            return
        except Exception as exc:  # noqa: BLE001 - decided below
            if not _worth_retrying(exc):
                raise
        from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

        for attempt in Retrying(
            retry=retry_if_exception(_worth_retrying),
            stop=stop_after_attempt(4),
            wait=wait_random_exponential(multiplier=0.05, max=1),
            reraise=True,
        ):
            with attempt:
                self._sink(batch)


def _resolved(record: CallRecord | PlainCall, resolve: Resolve | None) -> CallRecord | PlainCall:
    if resolve is None:
        return record
    try:
        return resolve(record)
    except Exception as exc:  # noqa: BLE001 - the record as queued is better than none
        log.debug("call_record_unresolved", call_id=record.call_id, error=repr(exc))
        return record


@atexit.register
def _flush_all() -> None:
    for writer in list(_WRITERS):
        writer.flush(timeout=5.0)
