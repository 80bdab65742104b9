"""The states of a call, as ``GET /calls/{id}`` reports them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["CallState"]


class CallState(StrEnum):
    """Where a call stands; compares equal to its wire string (``CallState.RUNNING == "running"``)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self is not CallState.RUNNING

    @classmethod
    def reattachable(cls) -> frozenset[CallState]:
        """States whose call a retry re-attaches to instead of running it again."""
        return frozenset({cls.RUNNING, cls.SUCCEEDED})
