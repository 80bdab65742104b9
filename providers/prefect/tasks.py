"""Prefect task helpers: call a tether service from a task, with Prefect doing the scheduling, logs and retries.

``run_remote`` is the one call a task body makes; ``tether_task`` builds a whole ``@task`` from a typed stub
(its ``retries=`` retry every failure, remote errors of the user's code included, as any Prefect task's do);
``retry_on_tether_errors`` is a ``retry_condition_fn`` to opt into that retries only failures tether marks
retryable, and logs why it skipped a retry.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.artifacts import create_link_artifact
from prefect.client.schemas.objects import State, TaskRun
from prefect.context import FlowRunContext, TaskRunContext
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger
from prefect.logging.loggers import task_run_logger

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
    (cluster unreachable, worker died, out of memory, ...) — never a bug in the remote code or a bad request.

    A retry it skips is logged in the task run's log, with the reason (Prefect itself says nothing).
    """
    exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    if isinstance(exc, BaseException) and tether.runs.is_retryable(exc):
        return True
    why = (
        f"{type(exc).__name__} is not a tether error marked retryable"
        if isinstance(exc, BaseException)
        else "the failure carries no exception"
    )
    _retry_logger(task, task_run).warning(
        "tether: not retrying %s: %s (retry_condition_fn=retry_on_tether_errors retries only what tether marks "
        "retryable; leave retry_condition_fn unset to retry every failure)",
        getattr(task, "name", "the task"),
        why,
    )
    return False


def _retry_logger(task: Any, task_run: Any) -> logging.Logger | logging.LoggerAdapter[Any]:
    if task_run is None:
        return logging.getLogger("tether.providers.prefect")
    try:
        return task_run_logger(task_run, task=task)
    except Exception:  # noqa: BLE001 - a retry decision must not fail over where its log line goes
        return logging.getLogger("tether.providers.prefect")


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
    reattach: str = "retries",
    force_rerun: bool = False,
    allow_local_daemon: bool | None = None,
    artifact: bool = True,
    on_call: Callable[[str, Any], Any] | None = None,
) -> tether.runs.RunResult:
    """Call ``target`` from inside a Prefect task (or flow) and return the whole ``RunResult``.

    ``cluster`` (a ``TetherCluster`` block, its name, or a ``tether`` cluster) decides where the call runs, a
    saved service included; without one a saved service runs where it was saved. A daemon is never started on
    this machine unasked: no cluster for a function, or a local cluster that is not running, is a
    ``ConfigError`` unless ``allow_local_daemon=True`` (or ``TETHER_ALLOW_LOCAL_DAEMON=1``).

    The call id comes from the flow run, the task key, the call's place in the run, the service version and the
    arguments (``identity.next_base_call_id``), so a retry of the task — or of the flow run, in a new process —
    re-attaches to the running or finished call instead of running it twice; a call that failed runs again.
    ``reattach="run"``: calls with the same task key, version and arguments anywhere in the flow run are one
    call; ``force_rerun=True``: never re-attach. Remote logs go to the Prefect run logger. An interrupt of the
    task (timeout, the runner's SIGTERM on cancellation, Ctrl-C) or a cancellation of the flow run cancels the
    remote call. ``RunResult.seconds`` is the remote call's own duration.

    The Prefect run (``prefect:<flow run id>/<task run id>``) is recorded as the call's caller (usage records of
    saved services), and with ``artifact`` a link artifact to the call's page (its duration, instance type and
    estimated cost in the description) is attached to the run. ``on_call(call_id, cluster)`` is told the call id
    once it is chosen (before waiting).
    """
    logger = _run_logger()
    label = tether.runs.target_label(target)
    place = resolve_cluster(cluster, allow_local_daemon=allow_local_daemon)
    service = tether.runs.resolve_target(target, place)  # deployed now: cancel knows where it runs
    where = getattr(service, "cluster", None) or place.cluster
    if call_id is None:
        identity = tether.runs.call_identity(service, tuple(args), dict(kwargs or {}))
        call_id = next_base_call_id(label, identity, reattach=reattach, force_rerun=force_rerun)
    choice = tether.runs.choose_attempt(call_id, where)  # a retry re-attaches, or reruns after a failure
    cancel_remote = functools.partial(tether.runs.cancel_quietly, choice.call_id, where, log=logger)
    if on_call is not None:
        on_call(choice.call_id, where)

    logger.info("%s", tether.runs.describe_call(label, choice))
    try:
        with watch_flow_cancellation(cancel_remote, cancel_poll_seconds):
            result = tether.runs.run_remote(
                service,
                tuple(args),
                dict(kwargs or {}),
                call_id=choice.call_id,
                log=tether.runs.labelled_log(logger.info, label),
                escalation=escalation,
                cluster=place,
                run_id=prefect_run_id(),
                retry_failed=False,  # choose_attempt chose the id
                reattached=choice.reattached,
            )
    except BaseException as exc:
        if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
            cancel_remote()  # interrupted here (timeout, termination, Ctrl-C): stop paying for the call
        raise
    logger.info(
        "tether: %s done: service %s v%s on %s in %.2f s%s, call id %s%s%s",
        label,
        result.service,
        result.version,
        result.instance_type,
        result.seconds,
        f", about ${result.cost:.6f}" if result.cost is not None else "",
        result.call_id,
        " (re-attached)" if result.reattached else "",
        _describe_attempts(result.attempts),
    )
    if artifact:
        _link_artifact(label, result, logger)
    return result


def prefect_run_id() -> str | None:
    """The Prefect run calls are made from, as tether records their caller: ``prefect:<flow run>/<task run>``,
    ``prefect:<flow run>`` in a flow's body; None outside any run."""
    task_ctx = TaskRunContext.get()
    if task_ctx is not None:
        run = task_ctx.task_run
        return f"prefect:{run.flow_run_id or '-'}/{run.id}"
    flow_ctx = FlowRunContext.get()
    if flow_ctx is not None and flow_ctx.flow_run is not None:
        return f"prefect:{flow_ctx.flow_run.id}"
    return None


def _link_artifact(label: str, result: tether.runs.RunResult, logger: Any) -> None:
    """A link artifact to the call's page, its facts in the description (never fails the task)."""
    if result.url is None or (TaskRunContext.get() is None and FlowRunContext.get() is None):
        return
    cost = f"${result.cost:.6f}" if result.cost is not None else "unknown"
    price = f"${result.price_per_hour:.4f}/h" if result.price_per_hour is not None else "unknown"
    description = (
        f"tether call `{result.call_id}` of **{result.service or label}** (version {result.version}): ran "
        f"{result.seconds:.2f} s on `{result.instance_type}` ({price}), estimated cost {cost}"
        f"{', re-attached' if result.reattached else ''}."
    )
    try:
        create_link_artifact(link=result.url, link_text=f"tether call {result.call_id}", description=description)
    except Exception as exc:  # noqa: BLE001 - an artifact is a nicety; the call's result matters
        logger.warning("tether: could not create the call's link artifact: %s (call id %s)", exc, result.call_id)


def tether_task(
    service: Any,
    *,
    cluster: ClusterRef = None,
    escalation: Any = None,
    reattach: str = "retries",
    force_rerun: bool = False,
    allow_local_daemon: bool | None = None,
    **task_options: Any,
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """Decorator turning a typed stub into a Prefect task that calls ``service`` remotely.

    ``service`` is what to call: a saved service name (``"embed"``), an import path (``"pkg.mod:fn"``), a
    ``tether`` Function or a plain callable. The stub's body never runs; its parameters become the task's
    parameters and are passed on. ``task_options`` go to ``@task`` unchanged (``name`` defaults to the
    service's name): ``retries=N`` retries every failure as any Prefect task's do (a remote call that failed
    runs again, one whose attempt was lost re-attaches); pass ``retry_condition_fn=retry_on_tether_errors`` to
    retry only what tether marks retryable. ``cluster``, ``escalation``, ``reattach``, ``force_rerun`` and
    ``allow_local_daemon`` are :func:`run_remote_result`'s.
    """
    tether.runs.check_reattach(reattach)

    def decorate(stub: Callable[P, R]) -> Task[P, R]:
        if service is stub:
            raise ConfigError(
                f"{tether.runs.target_label(stub)!r} would call itself",
                hint="decorate a stub and pass the real function or its 'pkg.mod:fn' path as service=",
            )

        @functools.wraps(stub)
        def remote_body(*args: P.args, **kwargs: P.kwargs) -> R:
            return run_remote(  # type: ignore[no-any-return]
                service,
                args,
                kwargs,
                cluster=cluster,
                escalation=escalation,
                reattach=reattach,
                force_rerun=force_rerun,
                allow_local_daemon=allow_local_daemon,
            )

        options = {"name": tether.runs.target_label(service), **task_options}
        return task(remote_body, **options)

    return decorate


def resolve_cluster(cluster: ClusterRef, *, allow_local_daemon: bool | None = None) -> tether.runs.Where:
    """Where calls go, from what the user passed: a ``TetherCluster`` block, the name of a saved one, a
    ``tether`` cluster, or None (see :func:`run_remote_result`)."""
    if isinstance(cluster, str):
        cluster = TetherCluster.load(cluster.removeprefix(f"{TetherCluster.get_block_type_slug()}/"))
    if isinstance(cluster, TetherCluster):
        return cluster.where(allow_local_daemon=allow_local_daemon)
    return tether.runs.where(
        cluster,
        setting="cluster= (a TetherCluster block, its name, or a tether cluster)",
        default_name="prefect",
        allow_local_daemon=allow_local_daemon,
        opt_in="allow_local_daemon=True",
    )


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
