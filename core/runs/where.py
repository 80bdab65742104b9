"""Where a provider's call runs: clusters from the orchestrator's settings (never a daemon started on the worker
implicitly), and what it calls (a saved name, a handle, a callable or an import path)."""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

from tether.api.clusters import Cluster
from tether.api.loading import cluster as make_cluster
from tether.api.loading import function
from tether.api.services import Function, RemoteClass, RemoteInstance
from tether.errors import ConfigError

LogEvent: TypeAlias = dict[str, Any]
"""One remote log event as the daemon sends it: ``{"text": ...}`` (printed) or ``{"name", "msg", ...}`` (logging)."""

ClusterRef: TypeAlias = "Where | Cluster | Mapping[str, Any] | str | None"
"""A cluster as providers get it: a :class:`Where` (from :func:`where`), a ``Cluster``, a spec dict, a saved name
or JSON text, or None."""

ALLOW_LOCAL_DAEMON_ENV = "TETHER_ALLOW_LOCAL_DAEMON"
"""Set to ``1`` to let providers start a local daemon on the orchestrator's worker (see :func:`where`)."""


# -- call ids --------------------------------------------------------------------------------------------------------
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


def to_cluster(cluster: ClusterRef) -> Cluster:
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
