"""How a service handle's calls are made: :class:`ServiceOptions` (``handle.with_options(...)``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tether.client import LogSink, default_log_sink

if TYPE_CHECKING:
    from tether.escalation import Attempt, Escalation

__all__ = ["ServiceOptions"]


@dataclass(frozen=True)
class ServiceOptions:
    """How a handle's calls are made (see :meth:`_Service.with_options`)."""

    caller: str | None = None
    """Who calls (an orchestrator run id), for lineage and usage records."""
    on_oom: Escalation | None = None
    """Escalate to the next rung of this ladder when a call runs out of memory."""
    cancel_on_interrupt: bool = True
    """Cancel the remote call when the caller is interrupted while it waits (Ctrl-C, a timeout, a kill)."""
    on_log: LogSink | None = default_log_sink
    """Where remote ``print``/``logging`` output goes (default: re-emitted locally)."""
    on_attempt: Callable[[Attempt], Any] | None = None
    """Called with every escalation attempt (rung, outcome, time, cost)."""
    replayable: bool = False
    """A re-run of a stream yields the same items: a stream whose call was lost in a daemon restart and re-run
    skips the items it already gave (without it, that stream raises ``WorkerDied`` naming them)."""
