"""Forward Prefect flow-run cancellation to a running remote call.

Two paths reach the call: an interrupt of the waiting thread (the runner's SIGTERM becomes Prefect's
``TerminationSignal``, a task timeout, Ctrl-C) is caught around the wait; and a watcher thread polls the flow
run's state, so a cancellation requested in the UI/API also stops calls of flows that no runner manages.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext, TaskRunContext

__all__ = [
    "DEFAULT_POLL_SECONDS",
    "FlowCancellationWatcher",
    "current_flow_run_id",
    "watch_flow_cancellation",
]

DEFAULT_POLL_SECONDS = 2.0
_CANCELLED = (StateType.CANCELLING, StateType.CANCELLED)


class FlowCancellationWatcher:
    """Calls ``on_cancel`` once when the flow run ``flow_run_id`` is being cancelled; stops on ``close()``."""

    def __init__(self, flow_run_id: UUID, on_cancel: Callable[[], None], poll_seconds: float) -> None:
        self.flow_run_id = flow_run_id
        self.on_cancel = on_cancel
        self.poll_seconds = poll_seconds
        self.fired = False
        self._stop = threading.Event()
        ctx = contextvars.copy_context()  # Prefect settings (API URL, test profile) live in context vars
        self._thread = threading.Thread(
            target=ctx.run, args=(self._run,), name=f"tether-cancel-watch-{flow_run_id}", daemon=True
        )

    def start(self) -> FlowCancellationWatcher:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.poll_seconds + 5)

    def __enter__(self) -> FlowCancellationWatcher:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _run(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._stop.wait(self.poll_seconds):
                try:
                    state = client.read_flow_run(self.flow_run_id).state
                except Exception:  # noqa: BLE001 - an API hiccup must not kill the call; try again next tick
                    continue
                if state is not None and state.type in _CANCELLED:
                    self.fired = True
                    self.on_cancel()
                    return


@contextmanager
def watch_flow_cancellation(
    on_cancel: Callable[[], None], poll_seconds: float | None = DEFAULT_POLL_SECONDS
) -> Iterator[FlowCancellationWatcher | None]:
    """Watch the current flow run (if any, and if ``poll_seconds``) for cancellation while the block runs."""
    flow_run_id = current_flow_run_id()
    if flow_run_id is None or not poll_seconds:
        yield None
        return
    with FlowCancellationWatcher(flow_run_id, on_cancel, poll_seconds) as watcher:
        yield watcher


def current_flow_run_id() -> UUID | None:
    """The flow run the calling code belongs to: the current task run's, else the current flow run's."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None and task_ctx.task_run.flow_run_id is not None:
        return task_ctx.task_run.flow_run_id
    flow_ctx = FlowRunContext.get()
    return flow_ctx.flow_run.id if flow_ctx is not None and flow_ctx.flow_run is not None else None
