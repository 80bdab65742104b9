"""Call handles: a call started with ``.spawn()``, or re-attached from anywhere with ``tether.call(call_id)``."""

from __future__ import annotations

import concurrent.futures
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from tether.client import AsyncClient, LogSink, default_log_sink
from tether.errors import CallTimeout, ClusterUnavailable, NotFound
from tether.protocol.states import CallState

if TYPE_CHECKING:
    from tether.api.clusters import Cluster

__all__ = ["CallHandle", "call"]


class CallHandle:
    """A running or finished remote call: ``.result(timeout)``, ``.cancel()``, ``.logs()``, ``.call_id``."""

    def __init__(self, client: AsyncClient, call_id: str, future: concurrent.futures.Future[Any] | None = None,
                 on_log: LogSink | None = default_log_sink, *, attempts: list[Any] | None = None,
                 cluster: Cluster | None = None, on_outcome: Callable[[str], None] | None = None,
                 node: int | str | None = None) -> None:
        self._client = client
        self._node = node  # the node of the service's env (None: the head)
        self._on_outcome = on_outcome  # told the call's outcome once this handle has it (a spawn's usage record)
        self._cluster = cluster  # when known, its current client is used (a relaunched daemon has a new one)
        self.call_id = call_id
        self.attempts: list[Any] = attempts if attempts is not None else []
        """The escalation attempts of a spawned call with an ``on_oom`` policy (filled in as they end)."""
        self._future = future
        self._on_log = on_log

    @property
    def client(self) -> AsyncClient:
        if self._cluster is not None and self._cluster._handle is not None:
            return self._cluster.node_client(self._node)
        return self._client

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the result (raises the remote error, or ``CallTimeout`` after ``timeout`` seconds)."""
        if self._future is None:
            from tether.client.loop import run_threadsafe  # the background loop (asyncio): only to re-attach

            self._future = run_threadsafe(self.client.attach(self.call_id, on_log=self._on_log))
        try:
            value = self._future.result(timeout)
        except concurrent.futures.TimeoutError:
            raise CallTimeout(f"call {self.call_id} not finished after {timeout}s",
                              hint="it keeps running; wait again or cancel()", details={"call_id": self.call_id}
                              ) from None
        except Exception as exc:
            self._outcome(type(exc).__name__)
            raise
        self._outcome("ok")
        return value

    async def result_async(self) -> Any:
        try:
            value = await self.client.attach(self.call_id, on_log=self._on_log)
        except Exception as exc:
            self._outcome(type(exc).__name__)
            raise
        self._outcome("ok")
        return value

    def _outcome(self, outcome: str) -> None:
        """Say the call's outcome once (errors of the recorder never reach the caller)."""
        tell, self._on_outcome = self._on_outcome, None
        if tell is not None:
            with contextlib.suppress(Exception):
                tell(outcome)

    def status(self) -> dict[str, Any]:
        """``{"state": ..., ...}``: the state is a :class:`~tether.protocol.CallState` value."""
        return dict(self.client.sync.status(self.call_id))

    def done(self) -> bool:
        return CallState(self.status()["state"]).finished

    def cancel(self) -> None:
        """Cancel the remote call (a no-op when it already finished)."""
        self.client.sync.cancel(self.call_id)

    def logs(self) -> list[dict[str, Any]]:
        """The call's log events so far."""
        return list(self.client.sync.logs(self.call_id))

    def wait_started(self, timeout: float = 10.0) -> CallHandle:
        """Block until the daemon knows the call (so cancel and re-attach work from anywhere)."""
        deadline = time.monotonic() + timeout
        while True:
            if self._future is not None and self._future.done():
                return self
            try:
                self.status()
                return self
            except (NotFound, ClusterUnavailable):  # not there yet, or its daemon is being relaunched
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.005)

    def __repr__(self) -> str:
        return f"CallHandle({self.call_id!r})"


def call(call_id: str, cluster: Cluster | None = None, *, on_log: LogSink | None = default_log_sink) -> CallHandle:
    """Re-attach to a call by id, from any process (default cluster: the local one)."""
    if cluster is None:
        # the cluster models: only re-attaching with no cluster given needs them
        from tether.api.clusters import new_cluster

        cluster = new_cluster()
    c = cluster.connected()
    return CallHandle(c.client, call_id, on_log=on_log)
