"""Remote output of plain ``tether`` calls made inside a Prefect run with ``log_prints=True`` goes to the run's
logs: a call made without ``on_log`` (``remote(x)``) in such a run sends what the remote code printed (INFO) and
logged (its level) to the Prefect run logger instead of this process's stdout. Registered when
``tether.providers.prefect`` is imported; elsewhere calls re-emit remote output as usual."""

from __future__ import annotations

from typing import Any

from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging import get_run_logger

import tether.runs

__all__ = ["RESOLVER_NAME", "install", "run_log_sink"]

RESOLVER_NAME = "prefect"


def _printing_context() -> Any:
    """The run whose ``log_prints`` decides, as Prefect's own ``print`` patch chooses it (a subflow inside a task
    is the flow's)."""
    flow_ctx, task_ctx = FlowRunContext.get(), TaskRunContext.get()
    if flow_ctx is not None and task_ctx is not None:
        if flow_ctx.flow_run is not None and flow_ctx.flow_run.id != task_ctx.task_run.flow_run_id:
            return flow_ctx
        return task_ctx
    return flow_ctx or task_ctx


def run_log_sink() -> Any:
    """The sink for a call made here: remote output into the run's logs when the run has ``log_prints``, else
    None (the call's default applies)."""
    ctx = _printing_context()
    if ctx is None or not getattr(ctx, "log_prints", False):
        return None
    logger = get_run_logger()
    return tether.runs.level_sink(lambda level, line: logger.log(level, "%s", line))


def install() -> None:
    """Register :func:`run_log_sink` with tether (idempotent)."""
    tether.runs.register_sink_resolver(RESOLVER_NAME, run_log_sink)
