"""What a call writes reaches its caller: the call's context (its partial lines), the ``sys.stdout`` /
``sys.stderr`` router and the log handler a worker installs, and the emitter of ``tether.report()``.

Text and records written while a call runs (in its thread, or its task on the worker's loop: :data:`current`) go to
that call's caller as LOG frames; anything written outside a call goes where it went before.
"""

from __future__ import annotations

import contextvars
import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether.daemon import protocol as p

if TYPE_CHECKING:
    from tether.daemon.worker import Worker

__all__ = ["CallCtx", "LogForwarder", "Router", "TetherLogForwarder", "current", "emit_report"]

current: contextvars.ContextVar[CallCtx | None] = contextvars.ContextVar("tether_call", default=None)


@dataclass
class CallCtx:
    """One running call of a worker: its frame tag, the partial lines of its output, and its result slab."""

    tag: int
    worker: Worker
    name: str = ""
    buffers: dict[str, str] = field(default_factory=dict)
    thread_id: int | None = None
    slab: str | None = None  # the result slab the caller lent (see tether.daemon.slabs)
    fill: bool = False  # that slab is the daemon's pool file: the result may go while it is written

    def emit(self, payload: dict[str, Any]) -> None:
        """Send a log event; from a call's thread, wait until it is on the socket (it survives a kill right after)."""
        self.worker.send_threadsafe(p.LOG, self.tag, None, json.dumps(payload).encode(), wait=True)

    def write(self, stream: str, text: str) -> None:
        buf = self.buffers.get(stream, "") + text
        cut = max(buf.rfind("\n"), buf.rfind("\r"))  # "\r": progress bars redraw in place
        if cut >= 0:
            self.emit({"stream": stream, "text": buf[: cut + 1]})
            buf = buf[cut + 1 :]
        self.buffers[stream] = buf

    def flush(self) -> None:
        for stream, buf in self.buffers.items():
            if buf:
                self.emit({"stream": stream, "text": buf})
        self.buffers.clear()


class Router:
    """Replaces sys.stdout/err: text written during a call goes to that call's caller, the rest to the log."""

    def __init__(self, original: Any, stream: str) -> None:
        self._original = original
        self._stream = stream

    def write(self, text: str) -> int:
        ctx = current.get()
        if ctx is None:
            return self._original.write(text)
        ctx.write(self._stream, text)
        return len(text)

    def flush(self) -> None:
        self._original.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._original, name)


class LogForwarder(logging.Handler):
    """Sends log records emitted during a call to its caller."""

    def emit(self, record: logging.LogRecord) -> None:
        ctx = current.get()
        if ctx is None:
            return
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            msg = str(record.msg)
        ctx.emit({"level": record.levelno, "name": record.name, "msg": msg})


class TetherLogForwarder(LogForwarder):
    """The forwarder on the worker's root logger. Public and with a formatter, so libraries that configure logging
    when imported and keep a root logger that has user handlers (Prefect's ``setup_logging`` does) leave it, and
    its level, alone: their records still reach the caller."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))


def emit_report(event: dict[str, Any]) -> bool:
    """``tether.report()`` inside a call: the report event goes to the call's caller like a log event."""
    ctx = current.get()
    if ctx is None:
        return False
    ctx.emit(event)
    return True
