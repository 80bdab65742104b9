"""Call ids derived from the Prefect run, so a retry — of the task, or of the whole flow run — re-attaches.

A call's base id is made of (flow run id, task key, the task run's index, the n-th tether call of the attempt,
the call's identity: service version and arguments). Nothing random goes in: not the task run id nor its
dynamic key (a fresh uuid for every sync task run), not the retry count. The task run's index is the n-th task
run of that task key with the same parameters in this attempt of the flow run, counted as they first call
tether; a flow run that ``prefect flow-run retry`` runs again in a new process counts the same way and gets the
same ids. Whether a try re-attaches to the call (it runs or succeeded) or runs again under a successor id (it
failed or was cancelled) is ``tether.runs.choose_attempt``'s decision, made from the daemon's state.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from typing import Any

from prefect.context import FlowRunContext, TaskRunContext

import tether.runs

__all__ = ["next_base_call_id"]

_calls = tether.runs.CallCounter()  # (task run, attempt) -> tether calls made so far
_task_runs = tether.runs.CallCounter()  # (flow run, its attempt, task key, parameters) -> task runs seen so far
_index_of: OrderedDict[Any, int] = OrderedDict()  # task run id -> its index among those
_lock = threading.Lock()
_MAX_TASK_RUNS = 10_000


def next_base_call_id(
    label: str, identity: str = "", *, reattach: str = "retries", force_rerun: bool = False
) -> str:
    """The base id of the next tether call made by the current task run (or flow run, or plain script).

    ``identity`` is the call's :func:`tether.runs.call_identity`. ``reattach="run"``: every call with the same
    task key and identity in the flow run is one call; ``force_rerun``: this attempt's calls are its own.
    """
    tether.runs.check_reattach(reattach)
    flow_ctx = FlowRunContext.get()
    flow_run = flow_ctx.flow_run if flow_ctx is not None else None
    flow_attempt = int(getattr(flow_run, "run_count", 0) or 0)
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        run = task_ctx.task_run
        owner = str(run.flow_run_id) if run.flow_run_id is not None else f"task-run:{run.id}"
        if reattach == "run" and not force_rerun:
            return tether.runs.call_id_for("prefect", owner, run.task_key, label, identity)
        index = _task_run_index(run, flow_attempt, task_ctx.parameters)
        call = _calls.next((str(run.id), int(run.run_count)))
        nonce = f"{run.id}:{run.run_count}" if force_rerun else ""
        return tether.runs.call_id_for("prefect", owner, run.task_key, index, call, label, identity, nonce)
    if flow_run is not None:  # in the flow's body: a retry of the flow run re-runs it, call by call
        call = _calls.next((str(flow_run.id), "flow", flow_attempt))
        nonce = f"{flow_attempt}" if force_rerun else ""
        return tether.runs.call_id_for("prefect", str(flow_run.id), "<flow>", call, label, identity, nonce)
    # outside any run nothing is retried by Prefect: a fresh id per call
    return tether.runs.call_id_for("prefect", "script", label, uuid.uuid4().hex)


def _task_run_index(run: Any, flow_attempt: int, parameters: Any) -> int:
    """The n-th task run of ``run``'s task key with these parameters in this attempt of its flow run."""
    with _lock:
        if run.id in _index_of:
            _index_of.move_to_end(run.id)
            return _index_of[run.id]
        params = tether.runs.args_digest((), dict(parameters or {}))
        index = _task_runs.next((str(run.flow_run_id), flow_attempt, run.task_key, params))
        _index_of[run.id] = index
        while len(_index_of) > _MAX_TASK_RUNS:
            _index_of.popitem(last=False)
        return index
