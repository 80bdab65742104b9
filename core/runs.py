"""What orchestrator providers share: deterministic call ids, one way to run a remote call, cancellation.

Providers (Airflow, Prefect, Dagster) map their idioms onto these and nothing else, so no behaviour is written
twice across them.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tether.api.clusters import Cluster
from tether.errors import ConfigError, TetherError

__all__ = ["RunResult", "call_id_for", "cancel", "is_retryable", "live_call_id", "resolve_target", "run_remote"]


def call_id_for(*parts: Any) -> str:
    """A deterministic call id from e.g. (dag_id, task_id, run_id, map_index): a retry re-attaches to it."""
    raw = "\x1f".join("" if p is None else str(p) for p in parts)
    return "run-" + hashlib.sha256(raw.encode()).hexdigest()[:32]


def is_retryable(exc: BaseException) -> bool:
    """Whether trying again can help (a tether error marked retryable)."""
    return isinstance(exc, TetherError) and exc.retryable


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


def resolve_target(target: Any, cluster: Cluster | dict | str | None = None, *, env: Any = None) -> Any:
    """A deployed service from a saved name, a ``Function``, a callable, or an import path ``"pkg.mod:fn"``."""
    from tether.api.services import Function, _Service, function

    if isinstance(target, _Service):
        return target if target.spec is not None else target.to(_cluster(cluster), env=env)
    if isinstance(target, str) and ":" in target:
        module, _, attr = target.partition(":")
        try:
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"cannot import {target!r}: {exc}", hint="use 'package.module:function'") from exc
        return Function(obj).to(_cluster(cluster), env=env)
    if isinstance(target, str):
        return function(name=target)
    if callable(target):
        return Function(target).to(_cluster(cluster), env=env)
    raise ConfigError(f"cannot call {target!r}", hint="pass a saved name, a Function, a callable or 'pkg.mod:fn'")


def _cluster(cluster: Cluster | dict | str | None) -> Cluster:
    from tether.api.clusters import cluster as make_cluster

    if isinstance(cluster, Cluster):
        return cluster
    if isinstance(cluster, dict):
        return Cluster.from_config({"kind": "cluster", **cluster})
    if isinstance(cluster, str):
        return make_cluster(cluster)
    return make_cluster()


def run_remote(target: Any, args: tuple | list = (), kwargs: dict | None = None, *, call_id: str,
               log: Callable[[str], None] | None = None, escalation: Any = None,
               cluster: Cluster | dict | str | None = None, env: Any = None, run_id: str | None = None,
               retry_failed: bool = True) -> RunResult:
    """Run ``target`` remotely under ``call_id``; remote logs go to ``log`` one line at a time.

    The same ``call_id`` again re-attaches to the running or finished call (the work runs once). With
    ``retry_failed`` a call under that id that failed or was cancelled is not re-attached: its successor id
    ``<call_id>-r<n>`` runs it again, so an orchestrator retry can succeed. ``RunResult.call_id`` is the id used.
    """
    svc = resolve_target(target, cluster, env=env)
    svc.caller = run_id
    if retry_failed and svc.cluster is not None:
        call_id = live_call_id(call_id, svc.cluster)
    sink = _line_sink(log) if log is not None else None
    started = time.perf_counter()
    if escalation is not None:
        from tether.escalation import run_with_escalation

        value = run_with_escalation(svc, tuple(args), dict(kwargs or {}), escalation, base_cluster=svc.cluster,
                                    call_id=call_id, on_log=sink)
    else:
        value = svc.call(tuple(args), dict(kwargs or {}), call_id=call_id, on_log=sink)
    handle = svc.cluster._handle if svc.cluster is not None else None
    return RunResult(value=value, call_id=call_id, service=svc.name or "", version=svc.spec.version if svc.spec else None,
                     instance_type=getattr(handle, "instance_type", None), seconds=time.perf_counter() - started,
                     attempts=list(svc.attempts))


def _line_sink(log: Callable[[str], None]) -> Callable[[dict[str, Any]], None]:
    def sink(event: dict[str, Any]) -> None:
        text = event.get("text")
        if text is None:
            text = f"{event.get('name', 'remote')}: {event.get('msg', '')}"
        for line in str(text).rstrip("\n").splitlines():
            log(line)

    return sink


def live_call_id(call_id: str, cluster: Cluster, *, limit: int = 100) -> str:
    """``call_id`` unless the call under it failed or was cancelled; then the first successor that did not."""
    from tether.api.calls import CallHandle
    from tether.errors import NotFound

    c = cluster.up_if_not()
    candidate = call_id
    for n in range(1, limit + 1):
        try:
            state = CallHandle(c.client, candidate).status()["state"]
        except NotFound:
            return candidate
        if state not in ("failed", "cancelled"):
            return candidate
        candidate = f"{call_id}-r{n}"
    return candidate


def cancel(call_id: str, cluster: Cluster | dict | str | None = None) -> list[str]:
    """Cancel a remote call by id, with its running successors (``-r<n>`` retries, ``-oom<n>`` escalation rungs).

    No error if nothing runs under it; returns the ids cancelled.
    """
    from tether.api.calls import CallHandle
    from tether.errors import NotFound

    c = _cluster(cluster).connected()
    running = [r["call_id"] for r in c.daemon_status().get("running_calls", [])]
    ids = [i for i in running if i == call_id or i.startswith(call_id + "-")] or [call_id]
    done = []
    for i in ids:
        with contextlib.suppress(NotFound):
            CallHandle(c.client, i).cancel()
            done.append(i)
    return done
