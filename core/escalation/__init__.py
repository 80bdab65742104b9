"""Out-of-memory escalation: the policy (an instance ladder), its runner, and OOM classification.

Names load on first use: the daemon's workers import only ``tether.escalation.oom`` (classification), not the
policy and runner with their catalog and pydantic models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.escalation.oom import classify_exception
    from tether.escalation.policy import Attempt, Escalation
    from tether.escalation.runner import Ladder, Step, run_with_escalation

__all__ = ["Attempt", "Escalation", "Ladder", "Step", "classify_exception", "run_with_escalation"]

_LAZY = {"classify_exception": "oom", "Attempt": "policy", "Escalation": "policy", "Ladder": "runner",
         "Step": "runner", "run_with_escalation": "runner"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"tether.escalation.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tether.escalation' has no attribute {name!r}")
