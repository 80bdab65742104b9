"""Reports: structured events a remote function sends its caller while it runs (metadata, asset checks, lineage).

A report travels as a log event (frame ``L``) with a ``"report"`` key: ``{"report": {"kind", "payload"}, "level":
10, "name": "tether.report", "msg": "<kind> <json>"}``. So it takes every path log events take — the live stream,
a re-attach's replay from the start, ``GET /calls/{id}/logs?since=N`` (an Airflow trigger) and the JSON mode —
without anything new in the daemon, and a caller that knows nothing of reports sees one DEBUG log record of the
logger ``tether.report``.

Inside a worker the daemon's worker registers the :func:`set_emitter` that puts the event on its call's stream;
code outside any call has no emitter (:func:`emit` returns False).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from typing import Any

from tether.errors import SerializationError

__all__ = ["LOGGER_NAME", "REPORT_KEY", "emit", "is_report", "report_event", "report_of", "set_emitter"]

REPORT_KEY = "report"
"""The key of a log event that makes it a report."""
LOGGER_NAME = "tether.report"
"""The logger name a report event carries (what a caller that ignores reports logs it under, at DEBUG)."""

Emitter = Callable[[dict[str, Any]], bool]
"""Puts a report event on the current call's stream; False when there is no current call."""

_emitter: Emitter | None = None


def report_event(kind: str, payload: Mapping[str, Any]) -> dict[str, Any]:
    """The log event that carries one report; ``payload`` must be JSON data (else a ``SerializationError``)."""
    if not isinstance(kind, str) or not kind:
        raise SerializationError(f"a report's kind must be a non-empty string, not {kind!r}")
    try:
        data = json.loads(json.dumps(dict(payload), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"report {kind!r} is not JSON data: {exc}",
                                 hint="report plain values (str, int, float, bool, None, lists and dicts)") from None
    text = json.dumps(data, sort_keys=True)
    return {REPORT_KEY: {"kind": kind, "payload": data}, "level": logging.DEBUG, "name": LOGGER_NAME,
            "msg": f"{kind} {text[:2000]}"}


def is_report(event: Mapping[str, Any]) -> bool:
    """Whether a log event is a report."""
    return isinstance(event.get(REPORT_KEY), Mapping)


def report_of(event: Mapping[str, Any]) -> tuple[str, dict[str, Any]] | None:
    """``(kind, payload)`` of a report event, or None for an ordinary log event."""
    body = event.get(REPORT_KEY)
    if not isinstance(body, Mapping) or not isinstance(body.get("kind"), str):
        return None
    payload = body.get("payload")
    return body["kind"], dict(payload) if isinstance(payload, Mapping) else {}


def set_emitter(emitter: Emitter | None) -> None:
    """Register how report events reach the current call's caller (the daemon's worker does, at start)."""
    global _emitter
    _emitter = emitter


def emit(event: dict[str, Any]) -> bool:
    """Send a report event (:func:`report_event`) to the current call's caller; False outside a call."""
    emitter = _emitter
    return bool(emitter is not None and emitter(event))
