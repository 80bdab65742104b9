"""``TetherCallTrigger``: waits for a remote call in the triggerer, streaming its log lines into the task log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

import tether.runs
from tether.errors import TetherError
from tether.providers.airflow.hook import TetherHook, make_cluster

__all__ = ["MAX_POLL_FAILURES", "TetherCallTrigger"]

MAX_POLL_FAILURES = 5
"""Consecutive failed polls (daemon unreachable) after which the trigger reports the error to the task."""


class TetherCallTrigger(BaseTrigger):
    """Polls the daemon for one call id until it finishes; fires ``{"status", "call_id", "state", "cluster"}``.

    One client serves every poll, and each poll is one request that returns the call's state and only the log
    lines not shown yet (``tether.runs.CallWatch``); lines look as on the blocking path (``log_event_line``).

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
        self._watch: tether.runs.CallWatch | None = None

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

    async def _watching(self) -> tether.runs.CallWatch:
        """The watch of the call: made once (one client for every poll), again only after a failed poll."""
        if self._watch is None:
            conn = await TetherHook(self.tether_conn_id).aget_conn()
            cluster = await asyncio.to_thread(make_cluster, self.cluster, conn)  # may read saved clusters
            self._watch = await tether.runs.CallWatch.open(self.call_id, cluster, logs_seen=self.logs_seen)
        return self._watch

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        show = tether.runs.log_sink(self._show)
        while True:
            try:
                watch = await self._watching()
                state, events = await watch.poll()  # the state and the log events not shown yet, one request
                failures = 0
            except TetherError as exc:  # a daemon that is briefly unreachable is polled again, a few times
                self._watch = None  # connect afresh: the daemon may have come back elsewhere
                failures += 1
                if not exc.retryable or failures >= MAX_POLL_FAILURES:
                    error = exc.to_wire()["error"]
                    yield TriggerEvent(
                        {"status": "error", "call_id": self.call_id, "state": "unknown", "error": error}
                    )
                    return
                await asyncio.sleep(self.poll_interval)
                continue
            for event in events:
                show(event)
            self.logs_seen = watch.logs_seen
            if state.finished:
                yield TriggerEvent(
                    {"status": "done", "call_id": self.call_id, "state": str(state), "cluster": self.cluster}
                )
                return
            await asyncio.sleep(self.poll_interval)

    def _show(self, line: str) -> None:
        self.log.info("%s", line)

    async def on_kill(self) -> None:
        """The user killed the deferred task (mark failed / clear): cancel the remote call."""
        watch = await self._watching()
        if await watch.cancel():  # False: never started or already forgotten, nothing to cancel
            self.log.info("tether: cancelled remote call %s", self.call_id)
