"""Call ids derived from the Prefect task run, so a retry of the task re-attaches to its remote call.

The id is made of (flow run id, task key, dynamic key, n-th tether call of the task, generation) — never the
retry count. The generation only moves on when the previous attempt's call is *over* on the daemon (it
failed, or this side cancelled it): the daemon keeps finished calls, so re-attaching to a failed one would only
repeat its error.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from prefect.context import FlowRunContext, TaskRunContext

from tether.errors import CallTimeout, ClusterUnavailable
from tether.runs import call_id_for

__all__ = ["CallIdentity", "next_call_identity"]

_MAX_TRACKED = 10_000
_lock = threading.Lock()
# (task run, attempt) -> tether calls made so far; base id -> calls of that slot already over on the daemon
_sequence: OrderedDict[tuple[str, int], int] = OrderedDict()
_generation: OrderedDict[str, int] = OrderedDict()


def _bounded_put(table: OrderedDict, key: object, value: int) -> None:
    table[key] = value
    table.move_to_end(key)
    while len(table) > _MAX_TRACKED:
        table.popitem(last=False)


@dataclass(frozen=True)
class CallIdentity:
    """Which remote call a ``run_remote`` inside a Prefect run stands for."""

    base: str
    generation: int
    label: str

    @property
    def call_id(self) -> str:
        return self.base if self.generation == 0 else call_id_for(self.base, "gen", str(self.generation))

    def settle(self, exc: BaseException | None) -> None:
        """Record how this attempt ended: a call that is over on the daemon makes the next attempt a new call.

        A lost connection or a local give-up (``ClusterUnavailable``, ``CallTimeout``) leaves the call running,
        so the retry re-attaches to it.
        """
        with _lock:
            if exc is None:
                _generation.pop(self.base, None)
            elif not isinstance(exc, ClusterUnavailable | CallTimeout):
                _bounded_put(_generation, self.base, self.generation + 1)


def next_call_identity(label: str) -> CallIdentity:
    """The identity of the next tether call made by the current task run (or flow run, or plain script)."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        run = task_ctx.task_run
        attempt_key = (str(run.id), int(run.run_count))
        with _lock:
            index = _sequence.get(attempt_key, 0)
            _bounded_put(_sequence, attempt_key, index + 1)
        owner = str(run.flow_run_id) if run.flow_run_id is not None else f"task-run:{run.id}"
        base = call_id_for("prefect", owner, run.task_key, str(run.dynamic_key), label, str(index))
    else:
        flow_ctx = FlowRunContext.get()
        flow_run = flow_ctx.flow_run if flow_ctx is not None else None
        # outside a task nothing is retried by Prefect: a fresh id per call
        owner = str(flow_run.id) if flow_run is not None else "script"
        base = call_id_for("prefect", owner, label, uuid.uuid4().hex)
    with _lock:
        generation = _generation.get(base, 0)
    return CallIdentity(base=base, generation=generation, label=label)
