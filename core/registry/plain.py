"""A call record in plain form: what a call of a saved service records, without building the pydantic model.

A fresh process (an orchestrator task) that loads a service by name, calls it once and records that call would
otherwise import pydantic for the record alone. :class:`PlainCall` holds the fields such a call fills (no lineage
edges), checks them against :class:`~tether.registry.models.CallRecord`'s bounds (:meth:`PlainCall.valid`; a test
holds the two to the same answers), and becomes that model where one is needed (:meth:`PlainCall.to_record`: a
team server, the OpenLineage exporter, the ORM store). The local store writes it as it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.registry.models import CallRecord

__all__ = ["OUTCOMES", "PlainCall", "as_records", "call_outcome"]

#: what a call can end as; any other outcome is an exception's type name (see :func:`call_outcome`)
OUTCOMES = ("ok", "error", "cancelled", "oom", "timeout")
_BY_EXCEPTION = {"OutOfMemory": "oom", "CallCancelled": "cancelled", "CallTimeout": "timeout"}
MAX_INT = 2**31 - 1


def call_outcome(outcome: str, error_type: str | None = None) -> tuple[str, str | None]:
    """``(outcome, error_type)`` of a call that ended with ``outcome``: an exception's type name becomes
    ``error`` (``oom`` / ``cancelled`` / ``timeout`` when it says so) with that name as the error type."""
    if outcome in OUTCOMES:
        return outcome, error_type
    return _BY_EXCEPTION.get(outcome, "error"), error_type if error_type is not None else outcome


def _now() -> datetime:
    return datetime.now(UTC)


def _short(value: str | None, most: int, *, least: int = 0) -> bool:
    return value is None or (isinstance(value, str) and least <= len(value) <= most)


@dataclass(frozen=True)
class PlainCall:
    """One call of a saved service as :class:`~tether.registry.models.CallRecord` has it, without inputs or
    outputs. ``PlainCall.of(outcome=...)`` takes an exception's type name as the model does."""

    name: str
    call_id: str
    version: int | None = None
    method: str | None = None
    caller: str | None = None
    run_id: str | None = None
    duration_s: float = 0.0
    outcome: str = "ok"
    error_type: str | None = None
    instance_type: str | None = None
    started_at: datetime = field(default_factory=_now)
    cluster: str | None = None
    inputs: tuple[()] = ()
    outputs: tuple[()] = ()

    @classmethod
    def of(cls, *, outcome: str = "ok", error_type: str | None = None, **fields: Any) -> PlainCall:
        outcome, error_type = call_outcome(outcome, error_type)
        return cls(outcome=outcome, error_type=error_type, **fields)

    def valid(self) -> bool:
        """Whether :meth:`to_record` accepts it as it is (CallRecord's bounds, checked without pydantic). Stricter
        than the model for what it would coerce (a bool or a numeric string as a number): not valid here, such a
        record is made the model instead (see ``tether.api.records.record_call``)."""
        return (isinstance(self.name, str) and isinstance(self.call_id, str)
                and (self.version is None or (type(self.version) is int and 1 <= self.version <= MAX_INT))
                and _short(self.call_id, 256, least=1) and _short(self.method, 128) and _short(self.caller, 256)
                and _short(self.run_id, 512) and _short(self.error_type, 256) and _short(self.instance_type, 128)
                and _short(self.cluster, 256) and self.outcome in OUTCOMES
                and isinstance(self.duration_s, int | float) and not isinstance(self.duration_s, bool)
                and math.isfinite(self.duration_s) and self.duration_s >= 0
                and isinstance(self.started_at, datetime))

    def model_copy(self, *, update: dict[str, Any]) -> PlainCall:
        """A copy with ``update`` applied: the model's spelling, so a writer or resolver treats both alike."""
        return replace(self, **update)

    def to_record(self) -> CallRecord:
        """The validated model (raises pydantic's ValidationError where :meth:`valid` says no)."""
        from tether.registry.models import CallRecord

        return CallRecord(**{f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("inputs", "outputs")})


def as_records(records: list[Any]) -> list[CallRecord]:
    """``records`` with every :class:`PlainCall` made the model (for a sink that needs models)."""
    return [r.to_record() if isinstance(r, PlainCall) else r for r in records]
