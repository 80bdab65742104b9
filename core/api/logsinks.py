"""Where a call's remote log lines go when its caller chose nothing: an integration may say, per context.

A call made without ``on_log`` (a plain ``remote(x)``) re-emits remote output locally (``default_log_sink``:
printed text to stdout, records to the same logger). An orchestrator integration can register a resolver that,
in the context it knows (a Prefect task run with ``log_prints=True``), returns a sink of its own (the run's
logger); outside such a context it returns None and the default applies. One resolver at a time per name.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from tether.client import LogSink, default_log_sink

__all__ = ["SinkResolver", "ambient_sink", "register_sink_resolver", "unregister_sink_resolver"]

SinkResolver = Callable[[], LogSink | None]
"""Returns the sink for calls made in the current context, or None (the default applies)."""

_resolvers: dict[str, SinkResolver] = {}
_lock = threading.Lock()


def register_sink_resolver(name: str, resolver: SinkResolver) -> None:
    """Register (or replace) the resolver called ``name``; resolvers are asked in registration order."""
    global _ordered
    with _lock:
        _resolvers[name] = resolver
        _ordered = tuple(_resolvers.values())


def unregister_sink_resolver(name: str) -> None:
    """Remove the resolver called ``name`` (no error if there is none)."""
    global _ordered
    with _lock:
        _resolvers.pop(name, None)
        _ordered = tuple(_resolvers.values())


_ordered: tuple[SinkResolver, ...] = ()


def ambient_sink(chosen: LogSink | None) -> LogSink | None:
    """The sink a call uses: ``chosen`` unless it is the default sink and a resolver has one for this context.

    Costs one tuple check when no resolver is registered (the common case). A failing resolver is skipped.
    """
    if not _ordered or chosen is not default_log_sink:
        return chosen
    for resolver in _ordered:
        try:
            sink = resolver()
        except Exception:  # noqa: BLE001 - where log lines go must never fail the call
            continue
        if sink is not None:
            return sink
    return chosen
