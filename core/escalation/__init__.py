"""Out-of-memory escalation: the policy (an instance ladder), its runner, and OOM classification."""

from tether.escalation.oom import classify_exception
from tether.escalation.policy import Attempt, Escalation
from tether.escalation.runner import run_with_escalation

__all__ = ["Attempt", "Escalation", "classify_exception", "run_with_escalation"]
