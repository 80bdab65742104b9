"""What orchestrator providers share: call ids and retries, clusters from settings, labels, logs, cancellation.

Providers (Airflow, Prefect, Dagster) map their idioms onto these and nothing else, so no behaviour is written
twice across them:

- ids: :func:`call_id_for` (deterministic, from the orchestrator's names), :func:`call_identity` (what a call
  runs: the service's version or code and a digest of its arguments), :class:`CallCounter` (the n-th call of an
  attempt), :func:`choose_attempt` / :func:`attempt_call_id` (the one retry scheme: re-attach to a running or
  succeeded call, run again under ``<id>-r<n>`` after a failure), :func:`check_reattach` (the users' choice);
- where: :func:`where` (the orchestrator's settings decide the cluster; no daemon is started on the worker
  implicitly), :func:`cluster_config` / :func:`cluster_from_config` (a cluster from a name, JSON, a spec dict or
  an endpoint and token);
- what: :func:`target_label`, :func:`resolve_target`;
- running: :func:`run_remote` (blocking) and :class:`CallWatch` (async polling, logs read with ``since``);
- logs: :func:`log_event_line` (one format), :func:`log_sink`, :func:`labelled_log`, :func:`describe_call`;
- stopping: :func:`cancel`, :func:`cancel_quietly` (for interrupt handlers).

``runs`` is the top layer of ``tether``: it imports the API, escalation, errors and protocol; nothing in
``tether`` imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib
import inspect
import json
import os
import pickle
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeAlias

import cloudpickle

from tether.api.calls import call as attach
from tether.api.clusters import Cluster
from tether.api.loading import cluster as make_cluster
from tether.api.loading import function
from tether.api.services import Function, RemoteClass, RemoteInstance
from tether.errors import ConfigError, NotFound, TetherError
from tether.escalation import run_with_escalation
from tether.protocol import CallState

__all__ = [
    "ALLOW_LOCAL_DAEMON_ENV",
    "REATTACH_SCOPES",
    "CallChoice",
    "CallCounter",
    "CallWatch",
    "ClusterRef",
    "LogEvent",
    "RunResult",
    "Where",
    "args_digest",
    "attempt_call_id",
    "call_id_for",
    "call_identity",
    "call_state",
    "cancel",
    "cancel_quietly",
    "check_reattach",
    "choose_attempt",
    "choose_call_id",
    "cluster_config",
    "cluster_from_config",
    "describe_call",
    "is_retryable",
    "labelled_log",
    "local_daemon_allowed",
    "log_event_line",
    "log_sink",
    "remote_seconds",
    "resolve_target",
    "run_remote",
    "service_version",
    "target_label",
    "where",
]

LogEvent: TypeAlias = dict[str, Any]
"""One remote log event as the daemon sends it: ``{"text": ...}`` (printed) or ``{"name", "msg", ...}`` (logging)."""

ClusterRef: TypeAlias = "Where | Cluster | Mapping[str, Any] | str | None"
"""A cluster as providers get it: a :class:`Where` (from :func:`where`), a ``Cluster``, a spec dict, a saved name
or JSON text, or None."""

REATTACH_SCOPES = ("retries", "run")
"""What a try may re-attach to (``reattach=`` of every provider): ``"retries"`` (default) the call an earlier try
of the same attempt started; ``"run"`` also a call of an earlier attempt in the same run with the same service
version and arguments (an Airflow Clear, a Dagster re-execution of the same root run)."""

ALLOW_LOCAL_DAEMON_ENV = "TETHER_ALLOW_LOCAL_DAEMON"
"""Set to ``1`` to let providers start a local daemon on the orchestrator's worker (see :func:`where`)."""


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
    return choose_attempt(base_id, cluster, limit=limit).call_id


@dataclass(frozen=True)
class CallChoice:
    """The call id one try uses, and the daemon's state of that call when it was chosen."""

    call_id: str
    state: CallState | None = None
    """RUNNING or SUCCEEDED: the try re-attaches to that call; None: the daemon has no such call, a new one starts."""

    @property
    def reattached(self) -> bool:
        return self.state is not None and self.state in CallState.reattachable()


def choose_attempt(base_id: str, cluster: ClusterRef = None, *, limit: int = 100) -> CallChoice:
    """:func:`attempt_call_id` with the state it found: whether the try re-attaches, and to what."""
    c = _cluster(cluster).up_if_not()
    seen: dict[str, CallState | None] = {}

    def state_of(call_id: str) -> CallState | None:
        seen[call_id] = call_state(call_id, c)
        return seen[call_id]

    chosen = choose_call_id(base_id, state_of, limit=limit)
    return CallChoice(chosen, seen.get(chosen))


def check_reattach(value: Any) -> str:
    """A provider's ``reattach=`` argument, checked (one of :data:`REATTACH_SCOPES`)."""
    if value not in REATTACH_SCOPES:
        raise ConfigError(f"reattach={value!r} is not one of {', '.join(map(repr, REATTACH_SCOPES))}",
                          hint="'retries': only retries of a try re-attach; 'run': a Clear or re-execution with "
                               "the same version and arguments does too; force_rerun=True: never",
                          details={"field": "reattach"})
    return str(value)


def call_identity(service: Any, args: tuple | list = (), kwargs: Mapping[str, Any] | None = None) -> str:
    """What one call runs, as a digest: the service's version (or its code) and its arguments.

    Part of every provider's call id, so a call with other arguments, or of another version of the service,
    never re-attaches to an earlier one's result.
    """
    raw = "\x1f".join((service_version(service), args_digest(args, kwargs)))
    return hashlib.sha256(raw.encode()).hexdigest()[:32]


def service_version(service: Any) -> str:
    """What identifies the code a call of ``service`` runs: a saved service's name and registry version; else the
    name, import path and a digest of its module's source (or of the pickled code shipped by value)."""
    spec = getattr(service, "spec", None)
    name = getattr(service, "registry_name", None) or target_label(service)
    if spec is not None and spec.version is not None:
        return f"{name}@{spec.version}"
    code = spec.code if spec is not None else None
    where = f"{code.import_path}:{code.qualname}" if code is not None else ""
    source = _source_digest(getattr(service, "obj", None))
    if source is None and code is not None and code.pickled_b64:
        source = hashlib.sha256(code.pickled_b64.encode()).hexdigest()[:32]
    return f"{name}:{where}:{source or (code.code_hash if code is not None else '')}"


def _source_digest(obj: Any) -> str | None:
    """A digest of the source file ``obj`` is defined in (edited code is other code), or None."""
    if obj is None:
        return None
    try:
        path = inspect.getsourcefile(obj)
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:32] if path else None
    except (TypeError, OSError):
        return None


def args_digest(args: tuple | list = (), kwargs: Mapping[str, Any] | None = None) -> str:
    """A digest of a call's arguments: equal arguments give equal digests, in any process.

    Plain containers are put in a canonical order first (dict items and set members sorted), so neither
    insertion order nor string-hash randomisation changes the digest; the rest is pickled (protocol 5, big
    buffers hashed in place). Arguments that cannot be pickled get a digest of their own every time (such a call
    is never mistaken for another; it cannot be sent anyway).
    """
    h = hashlib.blake2b(digest_size=16)
    buffers: list[pickle.PickleBuffer] = []
    try:
        h.update(cloudpickle.dumps(_canonical((tuple(args), dict(kwargs or {}))), protocol=5,
                                   buffer_callback=buffers.append))
    except Exception:  # noqa: BLE001 - see the docstring: unique, never equal to another call's
        return os.urandom(16).hex()
    for buf in buffers:
        h.update(buf.raw())
    return h.hexdigest()


def _canonical(obj: Any) -> Any:
    kind = type(obj)
    if kind in (list, tuple):
        return (kind.__name__, [_canonical(x) for x in obj])
    if kind is dict:
        return ("dict", sorted(((_canonical(k), _canonical(v)) for k, v in obj.items()), key=_order))
    if kind in (set, frozenset):
        return (kind.__name__, sorted((_canonical(x) for x in obj), key=_order))
    return obj


def _order(item: Any) -> bytes:
    try:
        return pickle.dumps(item, protocol=5)
    except Exception:  # noqa: BLE001 - an order for things pickle refuses (cloudpickle takes them later)
        return repr(item).encode()


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


def local_daemon_allowed(value: bool | None = None) -> bool:
    """Whether a provider may start a local daemon on this machine: ``value`` if given, else
    ``$TETHER_ALLOW_LOCAL_DAEMON`` (``1``/``true``/``yes``)."""
    if value is not None:
        return bool(value)
    return os.environ.get(ALLOW_LOCAL_DAEMON_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Where:
    """Where an orchestrator's calls go, as its settings (a connection, a block, a resource) say.

    ``cluster`` runs every target, saved services included; None: a saved service runs on the cluster it was
    saved with, anything else has nowhere to run. No daemon is started on the orchestrator's worker without
    being asked: a local cluster that is not running is started only when the settings describe it themselves
    (``described``: a ``Cluster`` object or spec fields, not just a name) or the user opted in
    (``allow_local_daemon``); otherwise :meth:`check` raises a ``ConfigError`` that names ``setting``.
    """

    cluster: Cluster | None = None
    setting: str = "the orchestrator's tether cluster setting"
    """What the user sets to choose the cluster, as error messages name it."""
    described: bool = False
    allow_local_daemon: bool = False
    opt_in: str = f"{ALLOW_LOCAL_DAEMON_ENV}=1"
    """How the user opts in to a local daemon on the worker, as error messages name it."""

    def check(self, cluster: Cluster, label: str = "the call") -> Cluster:
        """``cluster``, unless running on it would start a daemon on this machine unasked (a ``ConfigError``)."""
        if self.allow_local_daemon or cluster.spec.backend != "local":
            return cluster
        if self.described and cluster is self.cluster:
            return cluster
        if cluster.is_up():
            return cluster
        raise ConfigError(
            f"{label} would start a tether daemon inside this orchestrator worker: cluster {cluster.name!r} is a "
            "local cluster that is not running",
            hint=f"set {self.setting} to the cluster to run on (a saved cluster, a spec or an endpoint), start "
                 f"{cluster.name!r} yourself, or opt in to a daemon on this worker with {self.opt_in}",
            details={"cluster": cluster.name, "setting": self.setting})

    def deploy_target(self, label: str = "the call") -> Cluster:
        """The cluster a target without one (a function, an import path) is deployed to."""
        if self.cluster is not None:
            return self.check(self.cluster, label)
        if self.allow_local_daemon:
            return make_cluster()
        raise ConfigError(
            f"no cluster to run {label} on",
            hint=f"set {self.setting}, or opt in to the embedded local cluster on this worker with {self.opt_in}",
            details={"setting": self.setting})


def where(config: Any = None, *, setting: str, name: str | None = None, endpoint: str | None = None,
          token: str | None = None, default_name: str = "tether", allow_local_daemon: bool | None = None,
          opt_in: str | None = None) -> Where:
    """Where a provider's calls go: its cluster settings (as :func:`cluster_from_config` takes them), what the
    user sets to change them (``setting``, for error messages) and whether a local daemon may be started here
    (:func:`local_daemon_allowed`; ``opt_in`` says how, for error messages)."""
    cluster = cluster_from_config(config, name=name, endpoint=endpoint, token=token, default_name=default_name)
    data = cluster_config(config) if not isinstance(config, Cluster) else None
    described = isinstance(config, Cluster) or bool(data and set(data) - {"name"})
    allowed = local_daemon_allowed(allow_local_daemon)
    hint = f"{opt_in} or {ALLOW_LOCAL_DAEMON_ENV}=1" if opt_in else f"{ALLOW_LOCAL_DAEMON_ENV}=1"
    return Where(cluster, setting, described=described, allow_local_daemon=allowed, opt_in=hint)


def _where(cluster: ClusterRef) -> Where:
    """A cluster reference as a :class:`Where`; a plain one (not from :func:`where`) is used as given, and without
    one the embedded local cluster is used (callers outside an orchestrator)."""
    if isinstance(cluster, Where):
        return cluster
    return Where(cluster_from_config(cluster), "cluster=", described=True, allow_local_daemon=True)


def _cluster(cluster: ClusterRef) -> Cluster:
    """A cluster reference as a ``Cluster``; None (or an empty reference) is the embedded local cluster."""
    if isinstance(cluster, Where):
        return cluster.cluster or make_cluster()
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
    """A deployed service from a saved name, a ``Function``, a callable, or an import path ``"pkg.mod:fn"``.

    The given cluster decides where it runs, saved services included: a saved name (or a handle loaded from the
    registry) is deployed there at its saved version (``with_cluster``). Without one, a saved service runs where
    it was saved and a deployed handle where it is. With a :class:`Where` (what providers pass), nothing is
    deployed to or run on a cluster whose use would start a daemon on this machine unasked (``Where.check``).
    """
    place = _where(cluster)
    label = target_label(target)
    if isinstance(target, Function | RemoteClass | RemoteInstance):
        if target.spec is None:
            return target.to(place.deploy_target(label), env=env)
        if target.loaded:
            return _on(target, place, label, env)
        return target  # deployed in code: where its caller put it
    if isinstance(target, str) and ":" in target:
        module, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import {target!r}: {exc}", hint="use 'package.module:function'") from exc
        return function(obj).to(place.deploy_target(label), env=env)
    if isinstance(target, str):
        return _on(function(name=target), place, label, env)
    if callable(target):
        return function(target).to(place.deploy_target(label), env=env)
    raise ConfigError(f"cannot call {target!r}", hint="pass a saved name, a Function, a callable or 'pkg.mod:fn'")


def _on(saved: Any, place: Where, label: str, env: Any) -> Any:
    """A saved service on the cluster ``place`` names (deployed there at its version), else on its own."""
    given = place.cluster
    if given is None:
        if saved.cluster is not None:
            place.check(saved.cluster, label)
        return saved
    place.check(given, label)
    if saved.cluster is given:
        return saved  # resolved here before
    same = saved.cluster is not None and given.config() == saved.cluster.config()
    if same and env is None and given.spec.backend != "endpoint":  # an endpoint's token is in `given` only
        return saved  # saved on this very cluster: nothing to move
    return saved.with_cluster(given, env=env)


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


def describe_call(label: str, choice: CallChoice) -> str:
    """The line a provider logs before it waits: a new call, or the call it re-attaches to (and its state).

    Both end with ``(call id <id>)``, which is what a reader (or a test) takes the id from.
    """
    if choice.reattached:
        how = "running" if choice.state is CallState.RUNNING else "finished"
        return f"tether: re-attaching {label} to its {how} call (call id {choice.call_id})"
    return f"tether: calling {label} (call id {choice.call_id})"


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

    def metadata(self) -> dict[str, Any]:
        return {"service": self.service, "version": self.version, "call_id": self.call_id,
                "instance_type": self.instance_type, "seconds": round(self.seconds, 3),
                "reattached": self.reattached,
                "attempts": [a.model_dump(mode="json") if hasattr(a, "model_dump") else a for a in self.attempts]}


def run_remote(target: Any, args: tuple | list = (), kwargs: dict | None = None, *, call_id: str,
               log: Callable[[str], None] | None = None, escalation: Any = None,
               cluster: ClusterRef = None, env: Any = None, run_id: str | None = None,
               retry_failed: bool = True, reattached: bool | None = None) -> RunResult:
    """Run ``target`` remotely under ``call_id``; remote logs go to ``log`` one line at a time.

    The same ``call_id`` again re-attaches to the running or finished call (the work runs once). With
    ``retry_failed`` the id first goes through :func:`choose_attempt`: a call under it that failed or was
    cancelled is not re-attached, its successor ``<call_id>-r<n>`` runs it again. Pass ``retry_failed=False``
    with an id :func:`choose_attempt` already chose, and its ``reattached``. ``RunResult.call_id`` is the id used,
    ``RunResult.seconds`` the remote call's duration.
    """
    attempts: list[Any] = []
    # a new handle for this run: the resolved one may be cached and shared by the orchestrator's threads
    svc = resolve_target(target, cluster, env=env).with_options(caller=run_id, on_attempt=attempts.append)
    if retry_failed and svc.cluster is not None:
        choice = choose_attempt(call_id, svc.cluster)
        call_id, reattached = choice.call_id, choice.reattached
    sink = log_sink(log) if log is not None else None
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
    return RunResult(value=value, call_id=call_id, service=svc.name or "", version=svc.spec.version if svc.spec else None,
                     instance_type=instance_type, seconds=waited if seconds is None else seconds, attempts=attempts,
                     reattached=bool(reattached))


def remote_seconds(call_id: str, cluster: Cluster | None) -> float | None:
    """How long the call ran on its daemon (started to finished, from ``GET /calls/{id}``); None if unknown."""
    if cluster is None:
        return None
    try:
        summary = attach(call_id, cluster, on_log=None).status()
    except TetherError:
        return None
    started, finished = summary.get("started"), summary.get("finished")
    if isinstance(started, int | float) and isinstance(finished, int | float):
        return max(0.0, float(finished) - float(started))
    seconds = summary.get("seconds")
    return float(seconds) if isinstance(seconds, int | float) else None


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
