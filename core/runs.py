"""What orchestrator providers share: call ids and retries, clusters from settings, labels, logs, cancellation.

Providers (Airflow, Prefect, Dagster) map their idioms onto these and nothing else, so no behaviour is written
twice across them:

- ids: :func:`call_id_for` (deterministic, from the orchestrator's names), :class:`CallCounter` (the n-th call of
  an attempt), :func:`attempt_call_id` (the one retry scheme: re-attach to a running or succeeded call, run again
  under ``<id>-r<n>`` after a failure);
- where: :func:`cluster_config` / :func:`cluster_from_config` (a cluster from a name, JSON, a spec dict or an
  endpoint and token);
- what: :func:`target_label`, :func:`resolve_target`;
- running: :func:`run_remote` (blocking) and :class:`CallWatch` (async polling, logs read with ``since``);
- logs: :func:`log_event_line` (one format), :func:`log_sink`, :func:`labelled_log`;
- stopping: :func:`cancel`, :func:`cancel_quietly` (for interrupt handlers).

``runs`` is the top layer of ``tether``: it imports the API, escalation, errors and protocol; nothing in
``tether`` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeAlias

from tether.api.calls import call as attach
from tether.api.clusters import Cluster
from tether.api.loading import cluster as make_cluster
from tether.api.loading import function
from tether.api.services import Function, RemoteClass, RemoteInstance
from tether.errors import ConfigError, NotFound, TetherError
from tether.escalation import run_with_escalation
from tether.protocol import CallState

__all__ = [
    "CallCounter",
    "CallWatch",
    "ClusterRef",
    "LogEvent",
    "RunResult",
    "attempt_call_id",
    "call_id_for",
    "call_state",
    "cancel",
    "cancel_quietly",
    "choose_call_id",
    "cluster_config",
    "cluster_from_config",
    "is_retryable",
    "labelled_log",
    "log_event_line",
    "log_sink",
    "resolve_target",
    "run_remote",
    "target_label",
]

LogEvent: TypeAlias = dict[str, Any]
"""One remote log event as the daemon sends it: ``{"text": ...}`` (printed) or ``{"name", "msg", ...}`` (logging)."""

ClusterRef: TypeAlias = Cluster | Mapping[str, Any] | str | None
"""A cluster as providers get it from settings: a ``Cluster``, a spec dict, a saved name or JSON text, or None."""


# -- call ids --------------------------------------------------------------------------------------------------------
def call_id_for(*parts: Any) -> str:
    """A deterministic call id from e.g. (dag_id, task_id, run_id, map_index): a retry re-attaches to it."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return "run-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


class CallCounter:
    """Counts the calls each attempt of an orchestrator step has made, so a retry's n-th call gets the n-th id.

    A step may call tether several times; each call's id includes its index within the attempt. Keys name the
    attempt (e.g. task run and retry count); a retry has a new key and counts from 0 again, so its calls get
    the same ids as the previous attempt's and re-attach to them. Thread-safe; only the ``max_keys`` most
    recently used keys are kept.
    """

    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._counts: OrderedDict[Hashable, int] = OrderedDict()
        self._lock = threading.Lock()

    def next(self, key: Hashable) -> int:
        """The index of the next call made under ``key``: 0, 1, 2, ..."""
        with self._lock:
            index = self._counts.get(key, 0)
            self._counts[key] = index + 1
            self._counts.move_to_end(key)
            while len(self._counts) > self.max_keys:
                self._counts.popitem(last=False)
            return index


def choose_call_id(base_id: str, state_of: Callable[[str], CallState | None], *, limit: int = 100) -> str:
    """The retry scheme, given ``state_of(call_id)`` (the daemon's state of a call, None when it has none).

    ``base_id`` unless its call failed or was cancelled; then the first of ``<base_id>-r1``, ``-r2``, ... that is
    running, succeeded or unknown. Re-attaching to a running or succeeded call means a retry after a lost worker
    does not pay twice; running again after a failure means a retry is not just a replay of the recorded error.
    """
    candidate = base_id
    for n in range(1, limit + 1):
        state = state_of(candidate)
        if state is None or state in CallState.reattachable():
            return candidate
        candidate = f"{base_id}-r{n}"
    return candidate


def call_state(call_id: str, cluster: Cluster) -> CallState | None:
    """The state of ``call_id`` on ``cluster``'s daemon (which must be reachable); None if it has no such call."""
    try:
        return CallState(attach(call_id, cluster, on_log=None).status()["state"])
    except NotFound:
        return None


def attempt_call_id(base_id: str, cluster: ClusterRef = None, *, limit: int = 100) -> str:
    """The call id one attempt (a first try or an orchestrator retry) of the call ``base_id`` uses.

    The one retry scheme of every provider (see :func:`choose_call_id`); the daemon of ``cluster`` (brought up if
    needed; None: the embedded local cluster) decides, so any process on any worker picks the same id.
    """
    c = _cluster(cluster).up_if_not()
    return choose_call_id(base_id, lambda call_id: call_state(call_id, c), limit=limit)


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again can help (a tether error marked retryable)."""
    return isinstance(exc, TetherError) and exc.retryable


# -- clusters from settings ------------------------------------------------------------------------------------------
def cluster_config(value: Any) -> dict[str, Any] | None:
    """A cluster given as a name, JSON text, a spec dict or a ``Cluster`` as a plain config dict (no ``kind``).

    None or ``""``: None. A name becomes ``{"name": name}``. The result is JSON data (an orchestrator may store
    it); a ``Cluster``'s config never holds its token.
    """
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return {k: v for k, v in value.items() if k != "kind"}
    if isinstance(value, str):
        text = value.strip()
        if not text.startswith("{"):
            return {"name": text}
        try:
            parsed = json.loads(text)  # text starting with "{" is an object or not JSON at all
        except ValueError as exc:
            raise ConfigError(f"cluster is not valid JSON: {exc}",
                              hint="give a name or a JSON object of ClusterSpec fields") from None
        return cluster_config(parsed)
    if isinstance(value, Cluster):
        return cluster_config(value.config())
    raise ConfigError(f"cannot use {type(value).__name__} as a cluster",
                      hint="pass a name, a dict of ClusterSpec fields or tether.cluster(...)")


def cluster_from_config(config: Any = None, *, name: str | None = None, endpoint: str | None = None,
                        token: str | None = None, default_name: str = "tether") -> Cluster | None:
    """The ``Cluster`` a provider's settings describe, or None when they describe none.

    ``config``: a ``Cluster`` (returned as is), a saved cluster's name, or ClusterSpec fields as a dict or JSON
    text. ``name`` overrides its name. ``endpoint``: the address of a daemon someone else runs; the spec's other
    fields then do not apply. ``token`` is the bearer token of such a daemon, used when the config carries none
    (configs never do). ``default_name`` names an endpoint cluster given without a name.

    A bare name loads the saved cluster of that name (else a local one of that name). None means "no cluster
    given": a saved service then runs where it was saved, a function on the embedded local cluster.
    """
    if isinstance(config, Cluster):
        return config
    data = cluster_config(config) or {}
    if endpoint is not None:
        data = {"name": name or data.get("name") or default_name, "endpoint": endpoint}
    elif name is not None:
        data["name"] = name
    if not data:
        return None
    if set(data) == {"name"}:
        return make_cluster(name=data["name"])
    if data.get("endpoint"):
        data["name"] = data.get("name") or default_name
        if not data.get("token") and token:
            data["token"] = token
    return make_cluster(**data)


def _cluster(cluster: ClusterRef) -> Cluster:
    """A cluster reference as a ``Cluster``; None (or an empty reference) is the embedded local cluster."""
    return cluster_from_config(cluster) or make_cluster()


# -- targets ---------------------------------------------------------------------------------------------------------
def target_label(target: Any) -> str:
    """A short, stable name of what a provider calls, for logs, task names and call ids.

    A string (saved name, ``"pkg.mod:fn"``) is itself; else the service's or function's name; else its type's.
    """
    if isinstance(target, str):
        return target
    for attr in ("name", "__name__"):
        value = getattr(target, attr, None)
        if isinstance(value, str) and value:
            return value
    return type(target).__name__


def resolve_target(target: Any, cluster: ClusterRef = None, *, env: Any = None) -> Any:
    """A deployed service from a saved name, a ``Function``, a callable, or an import path ``"pkg.mod:fn"``."""
    if isinstance(target, Function | RemoteClass | RemoteInstance):
        return target if target.spec is not None else target.to(_cluster(cluster), env=env)
    if isinstance(target, str) and ":" in target:
        module, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import {target!r}: {exc}", hint="use 'package.module:function'") from exc
        return function(obj).to(_cluster(cluster), env=env)
    if isinstance(target, str):
        return function(name=target)
    if callable(target):
        return function(target).to(_cluster(cluster), env=env)
    raise ConfigError(f"cannot call {target!r}", hint="pass a saved name, a Function, a callable or 'pkg.mod:fn'")


# -- logs ------------------------------------------------------------------------------------------------------------
def log_event_line(event: Mapping[str, Any]) -> str:
    """One remote log event as text: what was printed (without its final newline), or ``"logger: message"``.

    The one format every provider shows remote logs in; it may hold several lines (see :func:`log_sink`).
    """
    text = event.get("text")
    if text is None:
        return f"{event.get('name', 'remote')}: {event.get('msg', '')}"
    return str(text).rstrip("\n")


def log_sink(log: Callable[[str], None]) -> Callable[[LogEvent], None]:
    """An ``on_log`` callback that passes each line of each event (:func:`log_event_line`) to ``log``."""

    def sink(event: LogEvent) -> None:
        for line in log_event_line(event).splitlines():
            log(line)

    return sink


def labelled_log(log: Callable[[str], None], label: str) -> Callable[[str], None]:
    """A ``log=`` callback for :func:`run_remote` that writes ``"[label] line"``; blank lines are dropped."""

    def emit(line: str) -> None:
        text = line.rstrip("\n")
        if text:
            log(f"[{label}] {text}")

    return emit


# -- running ---------------------------------------------------------------------------------------------------------
@dataclass
class RunResult:
    """The outcome of a provider's remote call, with what to show in the orchestrator's UI."""

    value: Any
    call_id: str
    service: str
    version: int | None
    instance_type: str | None
    seconds: float
    attempts: list[Any] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {"service": self.service, "version": self.version, "call_id": self.call_id,
                "instance_type": self.instance_type, "seconds": round(self.seconds, 3),
                "attempts": [a.model_dump(mode="json") if hasattr(a, "model_dump") else a for a in self.attempts]}


def run_remote(target: Any, args: tuple | list = (), kwargs: dict | None = None, *, call_id: str,
               log: Callable[[str], None] | None = None, escalation: Any = None,
               cluster: ClusterRef = None, env: Any = None, run_id: str | None = None,
               retry_failed: bool = True) -> RunResult:
    """Run ``target`` remotely under ``call_id``; remote logs go to ``log`` one line at a time.

    The same ``call_id`` again re-attaches to the running or finished call (the work runs once). With
    ``retry_failed`` the id first goes through :func:`attempt_call_id`: a call under it that failed or was
    cancelled is not re-attached, its successor ``<call_id>-r<n>`` runs it again. Pass ``retry_failed=False``
    with an id :func:`attempt_call_id` already chose. ``RunResult.call_id`` is the id used.
    """
    attempts: list[Any] = []
    # a new handle for this run: the resolved one may be cached and shared by the orchestrator's threads
    svc = resolve_target(target, cluster, env=env).with_options(caller=run_id, on_attempt=attempts.append)
    if retry_failed and svc.cluster is not None:
        call_id = attempt_call_id(call_id, svc.cluster)
    sink = log_sink(log) if log is not None else None
    started = time.perf_counter()
    if escalation is not None:
        value = run_with_escalation(svc.with_options(on_oom=None), tuple(args), dict(kwargs or {}), escalation,
                                    base_cluster=svc.cluster, call_id=call_id, on_log=sink,
                                    on_attempt=attempts.append)
    else:
        value = svc.call(tuple(args), dict(kwargs or {}), call_id=call_id, on_log=sink)
    where = svc.current_cluster
    handle = where._handle if where is not None else None
    instance_type = attempts[-1].instance_type if attempts else getattr(handle, "instance_type", None)
    return RunResult(value=value, call_id=call_id, service=svc.name or "", version=svc.spec.version if svc.spec else None,
                     instance_type=instance_type, seconds=time.perf_counter() - started, attempts=attempts)


class CallWatch:
    """Follows one call from async code (an orchestrator's trigger) through one client of the cluster's daemon.

    Each :meth:`poll` is one request, ``GET /calls/{id}/logs?since=<logs_seen>``: the call's state and only the
    log events not seen yet. ``logs_seen`` can be stored and given to a new watch (a restarted triggerer), which
    then shows no event twice. Build it with :meth:`open` (finding the cluster's daemon reads local state files,
    which is done off the event loop).
    """

    def __init__(self, call_id: str, cluster: Cluster, *, logs_seen: int = 0) -> None:
        self.call_id = call_id
        self.cluster = cluster
        self.logs_seen = logs_seen
        self._client = cluster.connected().client

    @classmethod
    async def open(cls, call_id: str, cluster: ClusterRef = None, *, logs_seen: int = 0) -> CallWatch:
        """A watch of ``call_id`` on ``cluster`` (None: the embedded local cluster), which must be running."""
        return await asyncio.to_thread(cls, call_id, _cluster(cluster), logs_seen=logs_seen)

    async def poll(self) -> tuple[CallState, list[LogEvent]]:
        """The call's state and its log events since the last poll (raises a typed tether error)."""
        out = await self._client.request("GET", f"/calls/{self.call_id}/logs", params={"since": str(self.logs_seen)})
        events = list(out["logs"])
        self.logs_seen = max(self.logs_seen + len(events), int(out.get("next", 0)))
        return CallState(out["state"]), events

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
    c = _cluster(cluster).connected()
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
