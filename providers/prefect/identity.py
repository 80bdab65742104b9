"""Call ids derived from the Prefect task run, so a retry of the task re-attaches to its remote call.

The base id is made of (flow run id, task key, dynamic key, target, n-th tether call of the attempt) — never the
retry count, so a retry's n-th call has the same base id as the failed attempt's n-th call. Whether the retry
re-attaches to that call (it runs or succeeded) or runs again under a successor id (it failed or was cancelled)
is ``tether.runs.attempt_call_id``'s decision, made from the daemon's state.
"""

from __future__ import annotations

import uuid

from prefect.context import FlowRunContext, TaskRunContext

import tether.runs

__all__ = ["next_base_call_id"]

_calls = tether.runs.CallCounter()  # (task run, attempt) -> tether calls made so far


def next_base_call_id(label: str) -> str:
    """The base id of the next tether call made by the current task run (or flow run, or plain script)."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        run = task_ctx.task_run
        index = _calls.next((str(run.id), int(run.run_count)))
        owner = str(run.flow_run_id) if run.flow_run_id is not None else f"task-run:{run.id}"
        return tether.runs.call_id_for("prefect", owner, run.task_key, str(run.dynamic_key), label, str(index))
    flow_ctx = FlowRunContext.get()
    flow_run = flow_ctx.flow_run if flow_ctx is not None else None
    # outside a task nothing is retried by Prefect: a fresh id per call
    owner = str(flow_run.id) if flow_run is not None else "script"
    return tether.runs.call_id_for("prefect", owner, label, uuid.uuid4().hex)
