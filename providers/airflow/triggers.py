"""``TetherCallTrigger``: waits for a remote call in the triggerer, streaming its log lines into the task log."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import tether
from airflow.triggers.base import BaseTrigger, TriggerEvent
from tether.errors import NotFound, TetherError

__all__ = ["TetherCallTrigger", "format_log_event"]


class TetherCallTrigger(BaseTrigger):
    """Polls the daemon for one call id until it finishes; fires ``{"status", "call_id", "state", "error"}``.

    Everything it needs is in :meth:`serialize` (call id, the cluster's config, how many log lines it already
    showed), so a trigger rebuilt by a restarted triggerer picks the call up where the daemon has it. No
    secret is carried: the daemon's token is found from the cluster's local state, as for any tether client.
    """

    def __init__(
        self,
        *,
        call_id: str,
        cluster: dict[str, Any] | None = None,
        poll_interval: float = 2.0,
        logs_seen: int = 0,
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.cluster = cluster
        self.poll_interval = poll_interval
        self.logs_seen = logs_seen

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "call_id": self.call_id,
                "cluster": self.cluster,
                "poll_interval": self.poll_interval,
                "logs_seen": self.logs_seen,
            },
        )

    async def _handle(self) -> Any:
        """A handle on the call (finding the cluster reads local state files: done off the event loop)."""
        from tether.providers.airflow.hook import TetherConnection, make_cluster

        def connect() -> Any:
            return tether.call(self.call_id, make_cluster(self.cluster, TetherConnection()), on_log=None)

        return await asyncio.to_thread(connect)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            handle = await self._handle()
            while True:
                status = await asyncio.to_thread(handle.status)
                logs = await asyncio.to_thread(handle.logs)
                for event in logs[self.logs_seen :]:
                    self.log.info("%s", format_log_event(event))
                self.logs_seen = max(self.logs_seen, len(logs))
                state = status.get("state", "running")
                if state != "running":
                    yield TriggerEvent({"status": "done", "call_id": self.call_id, "state": state})
                    return
                await asyncio.sleep(self.poll_interval)
        except TetherError as exc:
            yield TriggerEvent(
                {
                    "status": "error",
                    "call_id": self.call_id,
                    "state": "unknown",
                    "error": exc.to_wire()["error"],
                }
            )

    async def on_kill(self) -> None:
        """The user killed the deferred task (mark failed / clear): cancel the remote call."""
        handle = await self._handle()
        with contextlib.suppress(NotFound):  # never started or already forgotten: nothing to cancel
            await asyncio.to_thread(handle.cancel)
        self.log.info("tether: cancelled remote call %s", self.call_id)


def format_log_event(event: dict[str, Any] | str) -> str:
    """One remote log event as a task-log line: printed text as is, a logging record with its level and logger."""
    if isinstance(event, str):
        return event.rstrip("\n")
    if "text" in event:
        return str(event["text"]).rstrip("\n")
    level = event.get("level", 20)
    name = logging.getLevelName(level) if isinstance(level, int) else str(level)
    return f"[remote {name} {event.get('name') or 'root'}] {event.get('msg', '')}"
