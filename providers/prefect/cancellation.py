"""Forward Prefect flow-run cancellation to running remote calls.

Two paths reach a call: an interrupt of the waiting thread (the runner's SIGTERM becomes Prefect's
``TerminationSignal``, a task timeout, Ctrl-C) is caught around the wait; and a watcher polls the flow run's
state, so a cancellation requested in the UI/API also stops calls of flows that no runner manages. One watcher
thread serves all calls of a flow run in this process (a mapped task with a thousand runs polls once).
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext, TaskRunContext

__all__ = ["DEFAULT_POLL_SECONDS", "FlowRunWatcher", "current_flow_run_id", "watch_flow_cancellation"]

DEFAULT_POLL_SECONDS = 2.0
_CANCELLED = (StateType.CANCELLING, StateType.CANCELLED)
_lock = threading.Lock()
_watchers: dict[UUID, FlowRunWatcher] = {}


class FlowRunWatcher:
    """Polls one flow run's state; when it is being cancelled, calls every registered callback once."""

    def __init__(self, flow_run_id: UUID, poll_seconds: float) -> None:
        self.flow_run_id = flow_run_id
        self.poll_seconds = poll_seconds
        self.callbacks: dict[int, Callable[[], None]] = {}
        self.cancelled = False
        self._stop = threading.Event()
        ctx = contextvars.copy_context()  # Prefect settings (API URL, test profile) live in context vars
        self._thread = threading.Thread(target=ctx.run, args=(self._run,), name=f"tether-watch-{flow_run_id}")
        self._thread.daemon = True

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.poll_seconds):
                try:
                    state = client.read_flow_run(self.flow_run_id).state
                except Exception:  # noqa: BLE001 - an API hiccup must not end the watch; try again next tick
                    continue
                if state is not None and state.type in _CANCELLED:
                    with _lock:
                        self.cancelled = True
                        callbacks = list(self.callbacks.values())
                    for callback in callbacks:
                        callback()
                    return


@contextmanager
def watch_flow_cancellation(
    on_cancel: Callable[[], None], poll_seconds: float | None = DEFAULT_POLL_SECONDS
) -> Iterator[FlowRunWatcher | None]:
    """Run ``on_cancel`` if the current flow run (if any, and if ``poll_seconds``) is cancelled meanwhile."""
    flow_run_id = current_flow_run_id()
    if flow_run_id is None or not poll_seconds:
        yield None
        return
    key = id(on_cancel)
    with _lock:
        watcher = _watchers.get(flow_run_id)
        fire_now = watcher is not None and watcher.cancelled
        if watcher is None:
            watcher = _watchers[flow_run_id] = FlowRunWatcher(flow_run_id, poll_seconds)
            watcher.start()
        watcher.callbacks[key] = on_cancel
    if fire_now:
        on_cancel()
    try:
        yield watcher
    finally:
        with _lock:
            watcher.callbacks.pop(key, None)
            if not watcher.callbacks and _watchers.get(flow_run_id) is watcher:
                del _watchers[flow_run_id]
                watcher.stop()


def current_flow_run_id() -> UUID | None:
    """The flow run the calling code belongs to: the current task run's, else the current flow run's."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return task_ctx.task_run.flow_run_id
    flow_ctx = FlowRunContext.get()
    return flow_ctx.flow_run.id if flow_ctx is not None and flow_ctx.flow_run is not None else None
