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

    Everything it needs is in :meth:`serialize` (call id, the cluster's config, the connection id, the cursor
    key), so a trigger rebuilt by a restarted triggerer picks the call up where the daemon has it. The kwargs
    stored at deferral never change, so how many log events were shown is kept under ``cursor`` on the
    triggerer's disk (``tether.runs.LogCursor``, ``$TETHER_HOME/watches``): a restarted triggerer on the same
    machine (or sharing ``TETHER_HOME``) shows no line twice. Remote logging records keep their level. No secret
    is carried: a token comes from the Airflow connection or the cluster's local state.
    """

    def __init__(
        self,
        *,
        call_id: str,
        cluster: dict[str, Any] | None = None,
        tether_conn_id: str = "tether_default",
        poll_interval: float = 2.0,
        logs_seen: int = 0,
        cursor: str | None = None,
        cancel_on_kill: bool = True,
    ) -> None:
        super().__init__()
        self.call_id = call_id
        self.cluster = cluster
        self.tether_conn_id = tether_conn_id
        self.poll_interval = poll_interval
        self.logs_seen = logs_seen
        self.cursor = cursor or f"airflow-trigger:{call_id}"
        self.cancel_on_kill = cancel_on_kill
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
                "cursor": self.cursor,
                "cancel_on_kill": self.cancel_on_kill,
            },
        )

    async def _watching(self) -> tether.runs.CallWatch:
        """The watch of the call: made once (one client for every poll), again only after a failed poll."""
        if self._watch is None:
            conn = await TetherHook(self.tether_conn_id).aget_conn()
            cluster = await asyncio.to_thread(make_cluster, self.cluster, conn)  # may read saved clusters
            self._watch = await tether.runs.CallWatch.open(
                self.call_id, cluster, logs_seen=self.logs_seen, cursor=self.cursor
            )
        return self._watch

    async def run(self) -> AsyncIterator[TriggerEvent]:
        failures = 0
        show = tether.runs.level_sink(self._emit)
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
            watch.shown()
            if state.finished:
                watch.done()
                yield TriggerEvent(
                    {"status": "done", "call_id": self.call_id, "state": str(state), "cluster": self.cluster}
                )
                return
            await asyncio.sleep(self.poll_interval)

    def _emit(self, level: int, line: str) -> None:
        self.log.log(level, "%s", line)

    async def on_kill(self) -> None:
        """The user killed the deferred task (mark failed / clear): cancel the remote call, unless the task said
        ``cancel_on_kill=False``."""
        if not self.cancel_on_kill:
            self.log.warning("tether: task killed; the remote call keeps running (call id %s)", self.call_id)
            return
        watch = await self._watching()
        if await watch.cancel():  # False: never started or already forgotten, nothing to cancel
            self.log.info("tether: cancelled remote call %s", self.call_id)
