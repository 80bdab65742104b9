"""Call ids for Airflow task instances: one per (dag, task, run, map index); retries re-attach or run again.

Try 1 uses the base id. A later try re-attaches to the most recent earlier try's call when that call is still
running or succeeded (a lost worker must not pay twice), and runs again under an id of its own when that call
failed or was cancelled (otherwise every retry would just replay the recorded failure).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tether
import tether.runs
from tether.errors import ClusterUnavailable, NotFound

__all__ = ["REATTACHABLE", "base_call_id", "call_id_for_try", "daemon_state"]

REATTACHABLE = ("running", "succeeded")


def base_call_id(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """The call id of a task instance's first try (never involves the try number)."""
    return tether.runs.call_id_for("airflow", dag_id, task_id, run_id, map_index)


def call_id_for_try(base: str, try_number: int, state_of: Callable[[str], str | None]) -> str:
    """The call id try ``try_number`` uses; ``state_of(call_id)`` is the daemon's state, None if unknown."""
    ids = [base] + [f"{base}-try{n}" for n in range(2, try_number + 1)]
    for earlier in reversed(ids[:-1]):  # the latest earlier try that reached the daemon decides
        state = state_of(earlier)
        if state is None:
            continue
        if state in REATTACHABLE:
            return earlier
        break
    return ids[-1]


def daemon_state(cluster: Any) -> Callable[[str], str | None]:
    """``state_of`` for :func:`call_id_for_try`, asking the daemon of ``cluster``."""

    def state_of(call_id: str) -> str | None:
        try:
            return str(tether.call(call_id, cluster, on_log=None).status()["state"])
        except (
            NotFound,
            ClusterUnavailable,
        ):  # never reached the daemon, or the daemon (and its calls) is gone
            return None

    return state_of
