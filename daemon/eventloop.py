"""The event loop the daemon and its workers run on: uvloop when installed, else the stdlib loop."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

__all__ = ["loop_factory", "loop_name", "run"]


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when installed (``tether[fast]``) and ``TETHER_LOOP`` is not ``asyncio``."""
    if os.environ.get("TETHER_LOOP", "auto") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run a server process's main coroutine on :func:`loop_factory`'s loop (roughly half the CPU per request
    of the stdlib loop under uvloop)."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_name() -> str:
    """The running loop's kind, for the status page and benchmarks: ``uvloop`` or ``asyncio``."""
    return "uvloop" if type(asyncio.get_running_loop()).__module__.startswith("uvloop") else "asyncio"
