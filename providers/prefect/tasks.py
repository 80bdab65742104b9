"""Prefect task helpers: call a tether service from a task, with Prefect doing the scheduling, logs and retries.

``run_remote`` is the one call a task body makes; ``tether_task`` builds a whole ``@task`` from a typed stub;
``retry_on_tether_errors`` is a ``retry_condition_fn`` that retries only failures tether marks retryable.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.client.schemas.objects import State, TaskRun
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

import tether.runs
from tether.errors import ConfigError

from .blocks import TetherCluster
from .cancellation import DEFAULT_POLL_SECONDS, watch_flow_cancellation
from .identity import next_base_call_id

__all__ = ["retry_on_tether_errors", "run_remote", "run_remote_result", "tether_task"]

P = ParamSpec("P")
R = TypeVar("R")

ClusterRef = TetherCluster | str | Any
"""Where calls go: a ``TetherCluster`` block, the name of a saved one, a ``tether`` cluster, or None."""


def retry_on_tether_errors(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> bool:
    """``retry_condition_fn`` for ``@task``: retry only when the failure is a tether error marked retryable
    (cluster unreachable, worker died, out of memory, ...) — never a bug in the remote code or a bad request."""
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and tether.runs.is_retryable(exc)


def run_remote(
    target: Any, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None, **options: Any
) -> Any:
    """Call ``target`` (a saved service name, a deployed ``tether`` function, a callable or ``"pkg.mod:fn"``)
    and return its value; ``options`` and behaviour as in :func:`run_remote_result`."""
    return run_remote_result(target, args, kwargs, **options).value


def run_remote_result(
    target: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    cluster: ClusterRef = None,
    escalation: Any = None,
    call_id: str | None = None,
    cancel_poll_seconds: float | None = DEFAULT_POLL_SECONDS,
) -> tether.runs.RunResult:
    """Call ``target`` from inside a Prefect task (or flow) and return the whole ``RunResult``.

    The call id comes from the task run, so a retry of the task re-attaches to the running or finished call
    instead of running it twice. Remote logs go to the Prefect run logger. An interrupt of the task (timeout,
    the runner's SIGTERM on cancellation, Ctrl-C) or a cancellation of the flow run cancels the remote call.
    """
    logger = _run_logger()
    label = tether.runs.target_label(target)
    the_cluster = resolve_cluster(cluster)
    service = tether.runs.resolve_target(target, the_cluster)  # deployed now: cancel knows where it runs
    where = getattr(service, "cluster", None) or the_cluster
    base_id = call_id if call_id is not None else next_base_call_id(label)
    the_call_id = tether.runs.attempt_call_id(base_id, where)  # a retry re-attaches, or reruns after a failure
    cancel_remote = functools.partial(tether.runs.cancel_quietly, the_call_id, where, log=logger)

    logger.info("tether: calling %s (call id %s)", label, the_call_id)
    try:
        with watch_flow_cancellation(cancel_remote, cancel_poll_seconds):
            result = tether.runs.run_remote(
                service,
                tuple(args),
                dict(kwargs or {}),
                call_id=the_call_id,
                log=tether.runs.labelled_log(logger.info, label),
                escalation=escalation,
                cluster=the_cluster,
                retry_failed=False,  # attempt_call_id chose the id
            )
    except BaseException as exc:
        if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
            cancel_remote()  # interrupted here (timeout, termination, Ctrl-C): stop paying for the call
        raise
    logger.info(
        "tether: %s done: service %s v%s on %s in %.2f s, call id %s%s",
        label,
        result.service,
        result.version,
        result.instance_type,
        result.seconds,
        result.call_id,
        _describe_attempts(result.attempts),
    )
    return result


def tether_task(
    service: Any,
    *,
    cluster: ClusterRef = None,
    escalation: Any = None,
    **task_options: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Decorator turning a typed stub into a Prefect task that calls ``service`` remotely.

    ``service`` is what to call: a saved service name (``"embed"``), an import path (``"pkg.mod:fn"``), a
    ``tether`` Function or a plain callable. The stub's body never runs; its parameters become the task's
    parameters and are passed on. ``task_options`` go to ``@task``; ``retry_condition_fn`` defaults to
    :func:`retry_on_tether_errors` and ``name`` to the service's name.
    """

    def decorate(stub: Callable[P, R]) -> Task[P, R]:
        if service is stub:
            raise ConfigError(
                f"{tether.runs.target_label(stub)!r} would call itself",
                hint="decorate a stub and pass the real function or its 'pkg.mod:fn' path as service=",
            )

        @functools.wraps(stub)
        def remote_body(*args: P.args, **kwargs: P.kwargs) -> R:
            return run_remote(service, args, kwargs, cluster=cluster, escalation=escalation)  # type: ignore[no-any-return]

        options = {"name": tether.runs.target_label(service), "retry_condition_fn": retry_on_tether_errors, **task_options}
        return task(remote_body, **options)

    return decorate


def resolve_cluster(cluster: ClusterRef) -> Any:
    """A ``tether`` cluster (or None) from what the user passed; a string names a saved ``TetherCluster``."""
    if isinstance(cluster, str):
        cluster = TetherCluster.load(cluster.removeprefix(f"{TetherCluster.get_block_type_slug()}/"))
    if isinstance(cluster, TetherCluster):
        return cluster.get_cluster()
    return cluster


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except MissingContextError:  # called outside a flow/task run: still say what happens
        return logging.getLogger("tether.providers.prefect")


def _describe_attempts(attempts: Sequence[Any]) -> str:
    """``"; attempts: local:256MB OutOfMemory, local:1GB ok"`` when the call was escalated, else ``""``."""
    if len(attempts) < 2:
        return ""
    return "; attempts: " + ", ".join(f"{a.instance_type} {a.outcome}" for a in attempts)
