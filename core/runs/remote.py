"""Running a provider's call: :func:`run_remote` (blocking), :class:`CallWatch` (async polling with ``since``),
one log format, and cancellation for interrupt handlers."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from tether.api.calls import call as attach
from tether.api.clusters import Cluster
from tether.api.report import Report, split_reports
from tether.errors import NotFound, TetherError
from tether.escalation import run_with_escalation
from tether.protocol import CallState
from tether.protocol.reports import is_report
from tether.runs.cursor import LogCursor
from tether.runs.facts import call_url, estimated_cost, price_per_hour, reported_checks, reported_metadata
from tether.runs.ids import CallChoice, choose_attempt
from tether.runs.where import ClusterRef, LogEvent, resolve_target, to_cluster


def log_event_line(event: Mapping[str, Any]) -> str:
    """One remote log event as text: what was printed (without its final newline), or ``"logger: message"``.

    The one format every provider shows remote logs in; it may hold several lines (see :func:`log_sink`).
    """
    text = event.get("text")
    if text is None:
        return f"{event.get('name', 'remote')}: {event.get('msg', '')}"
    return str(text).rstrip("\n")


def log_sink(log: Callable[[str], None]) -> Callable[[LogEvent], None]:
    """An ``on_log`` callback that passes each line of each event (:func:`log_event_line`) to ``log``; report
    events (``tether.report``) are not log lines and are dropped."""

    return level_sink(lambda _level, line: log(line))


def level_sink(log: Callable[[int, str], None]) -> Callable[[LogEvent], None]:
    """An ``on_log`` callback that passes each line of each event to ``log(level, line)``, keeping the level of
    remote logging records (printed text is INFO); report events are not log lines and are dropped."""

    def sink(event: LogEvent) -> None:
        if is_report(event):
            return
        level = event.get("level") if "text" not in event else logging.INFO
        for line in log_event_line(event).splitlines():
            log(int(level) if isinstance(level, int) else logging.INFO, line)

    return sink


def labelled_log(log: Callable[[str], None], label: str) -> Callable[[str], None]:
    """A ``log=`` callback for :func:`run_remote` that writes ``"[label] line"``; blank lines are dropped."""

    def emit(line: str) -> None:
        text = line.rstrip("\n")
        if text:
            log(f"[{label}] {text}")

    return emit


_RETRY_ID = re.compile(r"(.+)-r(\d+)")


def describe_call(label: str, choice: CallChoice) -> str:
    """The line a provider logs before it waits: a new call, or the call it re-attaches to (and its state).

    Both end with ``(call id <id>)``, which is what a reader (or a test) takes the id from. A new call whose id
    is a retry's successor (``<id>-r<n>``) says so.
    """
    if choice.reattached:
        how = "running" if choice.state is CallState.RUNNING else "finished"
        return f"tether: re-attaching {label} to its {how} call (call id {choice.call_id})"
    retry = _RETRY_ID.fullmatch(choice.call_id)
    if retry is not None:
        return (f"tether: calling {label} again: call {retry.group(1)} failed or was cancelled "
                f"(call id {choice.call_id})")
    return f"tether: calling {label} (call id {choice.call_id})"


def describe_finish(label: str, result: RunResult) -> str:
    """The line a provider logs when the call finished: how long it ran where, what it cost, its call id (last,
    as ``call id <id>``: only :func:`describe_call`'s line ends with ``(call id <id>)``)."""
    cost = f", about ${result.cost:.6f}" if result.cost is not None else ""
    again = " (re-attached)" if result.reattached else ""
    return (f"tether: {label} finished: ran {result.seconds:.2f}s on {result.instance_type or 'an unknown machine'}"
            f"{cost}{again}, call id {result.call_id}")


# -- running ---------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """The outcome of a provider's remote call, with what to show in the orchestrator's UI.

    ``seconds`` is the remote call's own duration as its daemon recorded it (from start to finish), not how long
    this caller waited: a re-attach to a call that ran for a minute records a minute.
    """

    value: Any
    call_id: str
    service: str
    version: int | None
    instance_type: str | None
    seconds: float
    attempts: list[Any] = field(default_factory=list)
    reattached: bool = False
    """The call was already running or finished under ``call_id`` when this caller attached to it."""
    reports: list[Report] = field(default_factory=list)
    """What the remote code reported (``tether.report``, ``tether.api.report.emit``), in order; a re-attach gets
    the reports of the whole call again."""
    price_per_hour: float | None = None
    """What the machine the call ran on costs per hour (the backend's price, else the catalog's), when known."""
    url: str | None = None
    """The call's page on its daemon (state and log lines), when the daemon's address is known."""

    @property
    def cost(self) -> float | None:
        """Estimated cost in dollars: ``price_per_hour`` × the remote seconds (escalation: every rung's)."""
        if self.attempts and all(getattr(a, "est_cost", None) is not None for a in self.attempts):
            return round(sum(a.est_cost for a in self.attempts), 6)
        return estimated_cost(self.price_per_hour, self.seconds)

    @property
    def reported_metadata(self) -> dict[str, Any]:
        """The metadata the remote code reported (later reports win)."""
        return reported_metadata(self.reports)

    @property
    def reported_checks(self) -> list[dict[str, Any]]:
        """The asset check results the remote code reported."""
        return reported_checks(self.reports)

    def metadata(self) -> dict[str, Any]:
        """The call's facts as JSON data (an XCom, an artifact): service, version, call id, instance type,
        remote seconds, price per hour and estimated cost, the call's URL, re-attached, attempts, reports."""
        return {"service": self.service, "version": self.version, "call_id": self.call_id,
                "instance_type": self.instance_type, "seconds": round(self.seconds, 3),
                "price_per_hour": self.price_per_hour, "cost": self.cost, "url": self.url,
                "reattached": self.reattached,
                "attempts": [a.model_dump(mode="json") if hasattr(a, "model_dump") else a for a in self.attempts],
                "reports": [r.as_dict() for r in self.reports]}


def run_remote(target: Any, args: tuple | list = (), kwargs: dict | None = None, *, call_id: str,
               log: Callable[[str], None] | None = None, escalation: Any = None,
               cluster: ClusterRef = None, env: Any = None, run_id: str | None = None,
               retry_failed: bool = True, reattached: bool | None = None,
               on_log: Callable[[LogEvent], None] | None = None,
               on_report: Callable[[Report], None] | None = None) -> RunResult:
    """Run ``target`` remotely under ``call_id``; remote logs go to ``log`` one line at a time.

    The same ``call_id`` again re-attaches to the running or finished call (the work runs once). With
    ``retry_failed`` the id first goes through :func:`choose_attempt`: a call under it that failed or was
    cancelled is not re-attached, its successor ``<call_id>-r<n>`` runs it again. Pass ``retry_failed=False``
    with an id :func:`choose_attempt` already chose, and its ``reattached``. ``RunResult.call_id`` is the id used,
    ``RunResult.seconds`` the remote call's duration.

    ``on_log`` takes the log events themselves instead of ``log`` (e.g. :func:`level_sink`). Reports of the remote
    code are in ``RunResult.reports`` and go to ``on_report`` as they arrive.
    """
    attempts: list[Any] = []
    # a new handle for this run: the resolved one may be cached and shared by the orchestrator's threads
    svc = resolve_target(target, cluster, env=env).with_options(caller=run_id, on_attempt=attempts.append)
    if retry_failed and svc.cluster is not None:
        choice = choose_attempt(call_id, svc.cluster)
        call_id, reattached = choice.call_id, choice.reattached
    reports: list[Report] = []

    def took(report: Report) -> None:
        reports.append(report)
        if on_report is not None:
            on_report(report)

    sink = split_reports(on_log if on_log is not None else log_sink(log) if log is not None else None, took)
    started = time.perf_counter()
    if escalation is not None:
        value = run_with_escalation(svc.with_options(on_oom=None), tuple(args), dict(kwargs or {}), escalation,
                                    base_cluster=svc.cluster, call_id=call_id, on_log=sink,
                                    on_attempt=attempts.append)
    else:
        value = svc.call(tuple(args), dict(kwargs or {}), call_id=call_id, on_log=sink)
    waited = time.perf_counter() - started
    where = svc.current_cluster
    handle = where._handle if where is not None else None
    instance_type = attempts[-1].instance_type if attempts else getattr(handle, "instance_type", None)
    if attempts:  # escalated: each rung ran its own call; their time inside the calls adds up
        seconds = sum(a.call_seconds if a.call_seconds is not None else a.seconds for a in attempts)
    else:
        seconds = remote_seconds(call_id, where)
    price = attempts[-1].price_per_hour if attempts else price_per_hour(instance_type, handle)
    return RunResult(value=value, call_id=call_id, service=svc.name or "", version=svc.spec.version if svc.spec else None,
                     instance_type=instance_type, seconds=waited if seconds is None else seconds, attempts=attempts,
                     reattached=bool(reattached), reports=reports, price_per_hour=price,
                     url=call_url(where, call_id))


def attach_result(call_id: str, cluster: ClusterRef = None, *, log: Callable[[str], None] | None = None,
                  timeout: float | None = None) -> RunResult:
    """Re-attach to the call ``call_id`` (e.g. after an async trigger saw it finish) and wait for its value: a
    :class:`RunResult` with its reports, duration, instance type, price and URL. ``log``: its log lines (the
    whole call's, from the start; None: not shown again). Raises the call's error."""
    c = to_cluster(cluster).connected()
    reports: list[Report] = []
    handle = attach(call_id, c, on_log=split_reports(log_sink(log) if log is not None else None, reports.append))
    value = handle.result(timeout)
    summary = handle.status()
    where = c._handle
    instance_type = getattr(where, "instance_type", None)
    seconds = _summary_seconds(summary)
    return RunResult(value=value, call_id=call_id, service=str(summary.get("service") or ""), version=None,
                     instance_type=instance_type, seconds=seconds or 0.0, reattached=True, reports=reports,
                     price_per_hour=price_per_hour(instance_type, where), url=call_url(c, call_id))


def _summary_seconds(summary: Mapping[str, Any]) -> float | None:
    started, finished = summary.get("started"), summary.get("finished")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        return max(0.0, float(finished) - float(started))
    seconds = summary.get("seconds")
    return float(seconds) if isinstance(seconds, int | float) else None


def remote_seconds(call_id: str, cluster: Cluster | None) -> float | None:
    """How long the call ran on its daemon (started to finished, from ``GET /calls/{id}``); None if unknown."""
    if cluster is None:
        return None
    try:
        summary = attach(call_id, cluster, on_log=None).status()
    except TetherError:
        return None
    return _summary_seconds(summary)


class CallWatch:
    """Follows one call from async code (an orchestrator's trigger) through one client of the cluster's daemon.

    Each :meth:`poll` is one request, ``GET /calls/{id}/logs?since=<logs_seen>``: the call's state and only the
    log events not seen yet. ``logs_seen`` can be stored and given to a new watch (a restarted triggerer), which
    then shows no event twice. Build it with :meth:`open` (finding the cluster's daemon reads local state files,
    which is done off the event loop).
    """

    def __init__(self, call_id: str, cluster: Cluster, *, logs_seen: int = 0, cursor: str | None = None) -> None:
        self.call_id = call_id
        self.cluster = cluster
        self.cursor = LogCursor(cursor) if cursor else None
        self.logs_seen = max(logs_seen, self.cursor.read() if self.cursor is not None else 0)
        self._client = cluster.connected().client

    @classmethod
    async def open(cls, call_id: str, cluster: ClusterRef = None, *, logs_seen: int = 0,
                   cursor: str | None = None) -> CallWatch:
        """A watch of ``call_id`` on ``cluster`` (None: the embedded local cluster), which must be running.

        ``cursor``: a key under which the count of events seen is kept on disk (:class:`LogCursor`), so a watch
        opened again with the same key after a restart starts after the events an earlier one returned.
        """
        return await asyncio.to_thread(cls, call_id, to_cluster(cluster), logs_seen=logs_seen, cursor=cursor)

    async def poll(self) -> tuple[CallState, list[LogEvent]]:
        """The call's state and its log events since the last poll (raises a typed tether error)."""
        out = await self._client.request("GET", f"/calls/{self.call_id}/logs", params={"since": str(self.logs_seen)})
        events = list(out["logs"])
        self.logs_seen = max(self.logs_seen + len(events), int(out.get("next", 0)))
        return CallState(out["state"]), events

    def shown(self) -> None:
        """The events of the last poll were shown: store the count under the cursor (when there is one)."""
        if self.cursor is not None:
            self.cursor.write(self.logs_seen)

    def done(self) -> None:
        """The watch is over: forget the stored count."""
        if self.cursor is not None:
            self.cursor.clear()

    async def cancel(self) -> bool:
        """Cancel the call; False if the daemon has no such call (never started, or already forgotten)."""
        try:
            await self._client.request("POST", f"/calls/{self.call_id}/cancel")
        except NotFound:
            return False
        return True


# -- stopping --------------------------------------------------------------------------------------------------------
def cancel(call_id: str, cluster: ClusterRef = None) -> list[str]:
    """Cancel a remote call by id, with its running successors (``-r<n>`` retries, ``-oom<n>`` escalation rungs).

    No error if nothing runs under it; returns the ids cancelled.
    """
    c = to_cluster(cluster).connected()
    running = [r["call_id"] for r in c.daemon_status().get("running_calls", [])]
    ids = [i for i in running if i == call_id or i.startswith(call_id + "-")] or [call_id]
    done = []
    for i in ids:
        with contextlib.suppress(NotFound):
            attach(i, c, on_log=None).cancel()
            done.append(i)
    return done


class ProviderLog(Protocol):
    """What :func:`cancel_quietly` reports to: a ``logging.Logger``, a Prefect run logger, Dagster's ``context.log``."""

    def warning(self, msg: str, /) -> Any: ...

    def error(self, msg: str, /) -> Any: ...


def cancel_quietly(call_id: str, cluster: ClusterRef = None, *, log: ProviderLog | None = None) -> list[str]:
    """:func:`cancel` for interrupt handlers (a kill, a timeout, a run cancelled): never raises.

    The interrupt that got the caller here matters more than a failed cancel, so a failure is reported to ``log``
    (``"tether: could not cancel remote call <id>: <error>"``) and ``[]`` returned; a success is reported as
    ``"tether: cancelled remote call <id>"`` (the id last, for whoever reads it back from a log).
    """
    try:
        done = cancel(call_id, cluster)
    except Exception as exc:  # noqa: BLE001 - reported, never raised (see above)
        if log is not None:
            log.error(f"tether: could not cancel remote call {call_id}: {exc}")
        return []
    if log is not None:
        log.warning(f"tether: cancelled remote call {call_id}")
    return done
