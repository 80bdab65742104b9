"""``TetherCallTrigger``: waits for a remote call in the triggerer, streaming its log lines into the task log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

import tether
from tether.errors import NotFound, TetherError

__all__ = ["MAX_POLL_FAILURES", "TetherCallTrigger", "format_log_event"]

MAX_POLL_FAILURES = 5
"""Consecutive failed polls (daemon unreachable) after which the trigger reports the error to the task."""


class TetherCallTrigger(BaseTrigger):
    """Polls the daemon for one call id until it finishes; fires ``{"status", "call_id", "state", "cluster"}``.

    Everything it needs is in :meth:`serialize` (call id, the cluster's config, the connection id, how many
    log lines it already showed), so a trigger rebuilt by a restarted triggerer picks the call up where the
    daemon has it. No secret is carried: a token comes from the Airflow connection or the cluster's local state.
    """

    def __init__(
        self,
        *,
        call_id: str,
        cluster: dict[str, Any] | None = None,
        tether_conn_id: str = "tether_default",
        poll_interval: float = 2.0,
        logs_seen: int = 0,
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.cluster = cluster
        self.tether_conn_id = tether_conn_id
        self.poll_interval = poll_interval
        self.logs_seen = logs_seen

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_id": self.call_id,
                "cluster": self.cluster,
                "tether_conn_id": self.tether_conn_id,
                "poll_interval": self.poll_interval,
                "logs_seen": self.logs_seen,
            },
        )

    async def _handle(self) -> Any:
        """A handle on the call (finding the cluster reads local state files: done off the event loop)."""
        from tether.providers.airflow.hook import TetherHook, make_cluster

        conn = await TetherHook(self.tether_conn_id).aget_conn()

        def connect() -> Any:
            return tether.call(self.call_id, make_cluster(self.cluster, conn), on_log=None)

        return await asyncio.to_thread(connect)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        while True:
            try:
                handle = await self._handle()
                state = (await asyncio.to_thread(handle.status)).get("state", "running")
                logs = await asyncio.to_thread(handle.logs)
                failures = 0
            except TetherError as exc:  # a daemon that is briefly unreachable is polled again, a few times
                failures += 1
                if not exc.retryable or failures >= MAX_POLL_FAILURES:
                    error = exc.to_wire()["error"]
                    yield TriggerEvent(
                        {"status": "error", "call_id": self.call_id, "state": "unknown", "error": error}
                    )
                    return
                await asyncio.sleep(self.poll_interval)
                continue
            for event in logs[self.logs_seen :]:
                self.log.info("%s", format_log_event(event))
            self.logs_seen = max(self.logs_seen, len(logs))
            if state != "running":
                yield TriggerEvent(
                    {"status": "done", "call_id": self.call_id, "state": state, "cluster": self.cluster}
                )
                return
            await asyncio.sleep(self.poll_interval)

    async def on_kill(self) -> None:
        """The user killed the deferred task (mark failed / clear): cancel the remote call."""
        handle = await self._handle()
        with contextlib.suppress(NotFound):  # never started or already forgotten: nothing to cancel
            await asyncio.to_thread(handle.cancel)
        self.log.info("tether: cancelled remote call %s", self.call_id)


def format_log_event(event: dict[str, Any]) -> str:
    """One remote log event as task-log text, as the blocking path shows it: printed text, or "logger: msg"."""
    text = event.get("text")
    return (
        str(text).rstrip("\n")
        if text is not None
        else f"{event.get('name', 'remote')}: {event.get('msg', '')}"
    )
