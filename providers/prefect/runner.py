"""``TetherTaskRunner``: a flow's ``@task`` bodies run on a tether cluster, unchanged (as ``RayTaskRunner`` and
``DaskTaskRunner`` run them on Ray and Dask).

Prefect's task engine stays in the flow's process — states, retries, caching, concurrency limits, futures and
``.map()`` work as with the thread pool it extends — while each task's own function is deployed to the cluster
(by import path, or by value for a function of a script) and called there with the task's parameters, through
:func:`run_remote_result`: call ids from the run (a retry re-attaches to a call still running), remote output in
the run's logs, a link artifact, cancellation of the remote call when the task is interrupted, times out or the
flow run is cancelled, and when the runner shuts down with calls still running.

    @flow(task_runner=TetherTaskRunner(cluster="gpu-block"))
    def pipeline(texts: list[str]) -> list[list[float]]:
        return embed.map(texts).result()
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from prefect.futures import PrefectConcurrentFuture, PrefectFuture
from prefect.task_runners import ThreadPoolTaskRunner

import tether.runs

from .tasks import ClusterRef, resolve_cluster, run_remote_result

__all__ = ["TetherTaskRunner"]


def _importable_body(fn: Callable[..., Any]) -> Callable[..., Any]:
    """What the worker imports to get a task's own function: a module-level ``@task`` leaves the ``Task`` under the
    function's name (calling it there would start a Prefect task run), so the path goes on to its ``.fn``."""
    module = sys.modules.get(getattr(fn, "__module__", "") or "")
    top = getattr(module, fn.__qualname__, None) if module is not None and "." not in fn.__qualname__ else None
    if top is None or top is fn or getattr(top, "fn", None) is not fn:
        return fn

    @functools.wraps(fn)
    def body(*args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    body.__qualname__ = f"{fn.__qualname__}.fn"
    return body


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    out = dict(config)
    for key in ("cluster", "env", "escalation"):
        value = out[key]
        if hasattr(value, "config") and callable(value.config):
            out[key] = value.config()
        elif hasattr(value, "model_dump"):
            out[key] = value.model_dump()
    return out


class TetherTaskRunner(ThreadPoolTaskRunner):  # type: ignore[type-arg]
    """Runs each submitted task's function on a tether cluster; the Prefect engine runs locally in a thread pool.

    :param cluster: a ``TetherCluster`` block (or its name), or a ``tether`` cluster: where the task bodies run.
    :param env: a ``tether.env(...)`` the functions are deployed into (default: the cluster's default env).
    :param escalation: a ``tether.Escalation``: on out-of-memory, run again on the next rung.
    :param max_workers: how many tasks wait on remote calls at once (Prefect's thread pool setting).
    :param reattach: / ``force_rerun``: as :func:`run_remote_result` (what a retry may re-attach to).
    :param allow_local_daemon: let the flow start the embedded local cluster on this machine.
    :param artifact: attach a link artifact to each task run (the call's page, duration, instance type, cost).
    """

    def __init__(self, cluster: ClusterRef = None, *, env: Any = None, escalation: Any = None,
                 max_workers: int | None = None, reattach: str = "retries", force_rerun: bool = False,
                 allow_local_daemon: bool | None = None, artifact: bool = True) -> None:
        super().__init__(max_workers=max_workers)
        self.cluster = cluster
        self.env = env
        self.escalation = escalation
        self.reattach = tether.runs.check_reattach(reattach)
        self.force_rerun = force_rerun
        self.allow_local_daemon = allow_local_daemon
        self.artifact = artifact
        self._tether_state()

    def _tether_state(self) -> None:
        self._deployed: dict[Any, Any] = {}  # task function -> its deployed tether Function
        self._running: dict[int, tuple[str, Any]] = {}  # thread -> (call id, cluster) of the call it waits on
        self._tether_lock = threading.Lock()

    def _config(self) -> dict[str, Any]:
        return {"cluster": self.cluster, "env": self.env, "escalation": self.escalation,
                "max_workers": self._max_workers, "reattach": self.reattach, "force_rerun": self.force_rerun,
                "allow_local_daemon": self.allow_local_daemon, "artifact": self.artifact}

    def duplicate(self) -> TetherTaskRunner:
        return type(self)(**self._config())

    def __eq__(self, value: object) -> bool:
        """Equal settings (clusters and envs compared by their configs: a copy unpickled in a flow run's process
        equals the original)."""
        return isinstance(value, TetherTaskRunner) and _comparable(self._config()) == _comparable(value._config())

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in ("_deployed", "_running", "_tether_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._tether_state()

    # -- submitting ---------------------------------------------------------------------------------------------
    def submit(self, task: Any, parameters: dict[str, Any], wait_for: Iterable[PrefectFuture[Any]] | None = None,
               dependencies: dict[str, set[Any]] | None = None) -> PrefectConcurrentFuture[Any]:
        """Submit ``task`` to Prefect's engine with its function swapped for a call of it on the cluster."""
        return super().submit(self._remote(task), parameters, wait_for, dependencies)

    def _remote(self, task: Any) -> Any:
        """A copy of ``task`` whose function calls the original on the cluster (same name, key and signature)."""
        fn: Callable[..., Any] = task.fn
        label = tether.runs.target_label(fn)

        @functools.wraps(fn)
        def on_cluster(*args: Any, **kwargs: Any) -> Any:
            return self._call(fn, label, args, kwargs)

        remote = copy.copy(task)
        remote.fn = on_cluster
        remote.isasync = False  # the engine waits in its thread; an async body runs on the worker's loop
        return remote

    def _call(self, fn: Callable[..., Any], label: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        me = threading.get_ident()

        def started(call_id: str, cluster: Any) -> None:
            with self._tether_lock:
                self._running[me] = (call_id, cluster)

        try:
            return run_remote_result(
                self._service(fn), args, kwargs, cluster=self.cluster, escalation=self.escalation,
                reattach=self.reattach, force_rerun=self.force_rerun, allow_local_daemon=self.allow_local_daemon,
                artifact=self.artifact, on_call=started,
            ).value
        finally:
            with self._tether_lock:
                self._running.pop(me, None)

    def _service(self, fn: Callable[..., Any]) -> Any:
        """``fn`` deployed on the runner's cluster, once per runner (a flow run)."""
        with self._tether_lock:
            deployed = self._deployed.get(fn)
        if deployed is not None:
            return deployed

        place = resolve_cluster(self.cluster, allow_local_daemon=self.allow_local_daemon)
        deployed = tether.runs.resolve_target(_importable_body(fn), place, env=self.env)
        with self._tether_lock:
            return self._deployed.setdefault(fn, deployed)

    # -- stopping -----------------------------------------------------------------------------------------------
    def cancel_all(self) -> None:
        """Cancel what has not started (Prefect's thread pool) and every remote call still running (unless the
        flow's body ended normally: then, as with the thread pool, running tasks are waited for)."""
        if getattr(self, "_cancel_remote", True):
            with self._tether_lock:
                running = list(self._running.values())
            for call_id, cluster in running:
                tether.runs.cancel_quietly(call_id, cluster, log=self.logger)
        super().cancel_all()

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        self._cancel_remote = exc_type is not None  # the flow failed, was cancelled or interrupted
        try:
            super().__exit__(exc_type, exc_value, traceback)
        finally:
            self._cancel_remote = True
