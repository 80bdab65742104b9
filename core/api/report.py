"""Reports from remote code to its caller: ``tether.report(metadata=..., asset_check=...)`` and :func:`emit`.

Inside a remote function (running in a tether worker)::

    import tether

    def train(rows):
        ...
        tether.report(metadata={"rows": len(rows), "model": {"raw_value": "s3://m/1", "type": "path"}},
                      asset_check={"name": "no_nulls", "passed": nulls == 0, "metadata": {"nulls": nulls}})
        tether.api.report.emit("lineage.output", {"uri": "s3://m/1"})   # any kind, for integrations

The events travel with the call's log stream (see :mod:`tether.protocol.reports`), so a caller that re-attaches
gets them again; the caller receives them as :class:`Report` (``tether.runs.run_remote(...).reports``, or
:func:`split_reports` around an ``on_log`` sink). The Dagster provider turns ``metadata`` reports into
materialization metadata and ``asset_check`` reports into asset check results; other kinds are for whoever
knows them (lineage). Metadata values are JSON data; ``{"raw_value": v, "type": "url" | "path" | "md" | "json" |
"int" | "float" | "text" | "bool"}`` types one, as Dagster Pipes does.

Run outside a call, a report goes to the innermost :func:`collecting` block, else nowhere (``False``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tether.client import LogSink
from tether.errors import ConfigError
from tether.protocol import reports as wire

__all__ = ["ASSET_CHECK", "METADATA", "Report", "collecting", "emit", "report", "split_reports"]

METADATA = "metadata"
"""The kind of a ``tether.report(metadata=...)`` report: payload ``{"metadata": {key: value}}``."""
ASSET_CHECK = "asset_check"
"""The kind of a ``tether.report(asset_check=...)`` report: payload ``{"name", "passed", "severity", ...}``."""

_SEVERITIES = ("ERROR", "WARN")
_collectors: contextvars.ContextVar[list[Report] | None] = contextvars.ContextVar("tether_reports", default=None)


@dataclass(frozen=True)
class Report:
    """One report a remote call sent its caller: what kind it is, and its JSON payload."""

    kind: str
    payload: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """``{"kind", "payload"}`` (JSON data: what an orchestrator may store)."""
        return {"kind": self.kind, "payload": self.payload}


def emit(kind: str, payload: Mapping[str, Any]) -> bool:
    """Send a report of ``kind`` with the JSON ``payload`` to the caller of the current remote call.

    True once it is on its way (a worker waits until it is on the daemon's socket); False when no call is
    running here and no :func:`collecting` block takes it. A payload that is not JSON data raises a
    ``SerializationError``.
    """
    event = wire.report_event(kind, payload)
    local = _collectors.get()
    if local is not None:
        local.append(Report(kind, event[wire.REPORT_KEY]["payload"]))
        return True
    return wire.emit(event)


def report(*, metadata: Mapping[str, Any] | None = None,
           asset_check: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None) -> bool:
    """Report ``metadata`` (key → JSON value) and/or asset check results to the caller (see the module doc).

    An asset check is ``{"name": str, "passed": bool}`` plus optional ``"severity"`` (``"ERROR"`` or ``"WARN"``),
    ``"metadata"``, ``"description"`` and ``"asset_key"`` (when the step materializes several assets); a list
    reports several. Checked here (a ``ConfigError`` names what is wrong); returns what :func:`emit` returned.
    """
    sent = True
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
            raise ConfigError("tether.report(metadata=...) takes a dict with string keys",
                              details={"field": "metadata"})
        sent = emit(METADATA, {"metadata": dict(metadata)}) and sent
    checks = [asset_check] if isinstance(asset_check, Mapping) else list(asset_check or [])
    for check in checks:
        sent = emit(ASSET_CHECK, _check(check)) and sent
    return sent


def _check(check: Any) -> dict[str, Any]:
    if not isinstance(check, Mapping) or not isinstance(check.get("name"), str) or not check.get("name"):
        raise ConfigError("an asset check report needs a 'name' (the check's name) and 'passed'",
                          hint='tether.report(asset_check={"name": "no_nulls", "passed": True})',
                          details={"field": "asset_check"})
    if not isinstance(check.get("passed"), bool):
        raise ConfigError(f"asset check {check['name']!r}: 'passed' must be True or False",
                          details={"field": "asset_check.passed"})
    severity = str(check.get("severity") or "ERROR").upper()
    if severity not in _SEVERITIES:
        raise ConfigError(f"asset check {check['name']!r}: severity {severity!r} is not ERROR or WARN",
                          details={"field": "asset_check.severity"})
    unknown = set(check) - {"name", "passed", "severity", "metadata", "description", "asset_key"}
    if unknown:
        raise ConfigError(f"asset check {check['name']!r}: unknown field(s) {sorted(unknown)}",
                          details={"field": "asset_check"})
    out = {"name": check["name"], "passed": check["passed"], "severity": severity,
           "metadata": dict(check.get("metadata") or {})}
    for key in ("description", "asset_key"):
        if check.get(key) is not None:
            out[key] = check[key]
    return out


@contextlib.contextmanager
def collecting() -> Iterator[list[Report]]:
    """Collect the reports made in this block (and this context) into a list, instead of sending them:
    for code that runs a remote function locally (a unit test, a local fallback)."""
    reports: list[Report] = []
    token = _collectors.set(reports)
    try:
        yield reports
    finally:
        _collectors.reset(token)


def split_reports(on_log: LogSink | None, on_report: Callable[[Report], Any]) -> LogSink:
    """An ``on_log`` sink that passes report events to ``on_report`` (as :class:`Report`) and the others to
    ``on_log`` (None: dropped)."""

    def sink(event: dict[str, Any]) -> None:
        found = wire.report_of(event)
        if found is not None:
            on_report(Report(*found))
        elif on_log is not None:
            on_log(event)

    return sink
