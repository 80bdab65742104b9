"""``RunhouseOperator``: an Airflow task whose body is one call to a tether service.

The call id comes from (dag_id, task_id, run_id, map_index) — never the try number — so a retry re-attaches
to the remote call the previous try started instead of paying for it twice, or runs again under a successor id
after that call failed (``tether.runs.attempt_call_id``); ``on_kill`` cancels it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context

import tether
import tether.runs
from tether.errors import ConfigError, error_from_wire
from tether.providers.airflow.hook import TetherHook, make_cluster
from tether.providers.airflow.triggers import TetherCallTrigger

__all__ = ["RunhouseOperator", "base_call_id", "call_id_for_task"]

CALL_ID_KEY = "call_id"
"""XCom key holding the remote call id, pushed before the task waits for the call."""
METADATA_KEY = "tether"
"""XCom key holding the finished call's metadata (service, version, instance type, seconds, attempts)."""


def base_call_id(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """The call id of a task instance (never involves the try number): what every try starts from."""
    return tether.runs.call_id_for("airflow", dag_id, task_id, run_id, map_index)


def call_id_for_task(context: Context, cluster: Any = None) -> str:
    """The call id this try uses: the task instance's base id, or a successor once that call failed."""
    ti = context["ti"]
    return tether.runs.attempt_call_id(base_call_id(ti.dag_id, ti.task_id, context["run_id"], ti.map_index), cluster)


class RunhouseOperator(BaseOperator):
    """Call a tether service and return its result as the task's XCom ``return_value``.

    Give either ``service`` (a saved service: ``"embed"``, ``"team/embed@prod"``) or ``function`` (a callable,
    or an import path ``"pkg.mod:fn"``, deployed to ``cluster``). ``args``/``kwargs`` are templated.

    :param service: name of a saved service.
    :param function: a callable or ``"pkg.mod:fn"`` to deploy and call.
    :param args: positional arguments (templated).
    :param kwargs: keyword arguments (templated).
    :param cluster: where a ``function`` runs — a cluster name, a ClusterSpec dict or a ``tether.Cluster``;
        default: the connection's cluster, else the embedded local cluster. A saved ``service`` runs where it
        was saved.
    :param escalation: a ``tether.Escalation`` (or its dict form): on out-of-memory, retry on the next rung.
    :param tether_conn_id: the ``tether`` connection (registry address, token, default cluster).
    :param deferrable: wait in the triggerer instead of holding a worker slot.
    :param poll_interval: seconds between polls of the daemon in deferrable mode.

    XComs: ``call_id`` (pushed before the task waits), ``return_value`` and ``tether`` (the call's metadata).
    A retry re-attaches to the previous try's call while it runs or once it succeeded, and runs the function
    again after it failed; clearing a task whose call succeeded within the daemon's retention (an hour) gets
    that result back — start a new DAG run to compute it afresh.

    Example::

        RunhouseOperator(task_id="embed", service="embed", args=["{{ params.text }}"], retries=2)
    """

    # Airflow forbids templating an attribute named like a BaseOperator parameter ("kwargs"), so the call's
    # arguments live in ``call_args``/``call_kwargs``; the constructor takes them as ``args=``/``kwargs=``.
    template_fields: Sequence[str] = ("service", "function", "call_args", "call_kwargs", "cluster")
    template_fields_renderers = {"call_args": "py", "call_kwargs": "json", "cluster": "json"}
    ui_color = "#e8f1fb"

    def __init__(
        self,
        *,
        service: str | None = None,
        function: Callable[..., Any] | str | None = None,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        cluster: Any = None,
        escalation: Any = None,
        tether_conn_id: str = TetherHook.default_conn_name,
        deferrable: bool = False,
        poll_interval: float = 2.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(**base_kwargs)
        if (service is None) == (function is None):
            raise ConfigError("RunhouseOperator needs exactly one of service= or function=")
        if deferrable and escalation is not None:
            raise ConfigError(
                "escalation runs in the worker; it cannot be combined with deferrable=True",
                hint="use deferrable=False for tasks with an escalation policy",
            )
        self.service = service
        self.function = function
        self.call_args = list(args or [])
        self.call_kwargs = dict(kwargs or {})
        self.cluster = cluster
        self.escalation = tether.Escalation.coerce(escalation) if escalation is not None else None
        self.tether_conn_id = tether_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self._call_id: str | None = None
        self._cluster: Any = None

    # -- the call ---------------------------------------------------------------------------------------------------
    @property
    def target(self) -> Any:
        """What ``tether.runs`` calls: a service name, an import path or a callable."""
        return self.service if self.service is not None else self.function

    def execute(self, context: Context) -> Any:
        hook = TetherHook(self.tether_conn_id)
        with hook.environment():
            service = tether.runs.resolve_target(self.target, hook.get_cluster(self.cluster))
            self._cluster = service.cluster
            call_id = self._call_id = call_id_for_task(context, service.cluster)
            context["ti"].xcom_push(key=CALL_ID_KEY, value=call_id)
            self.log.info("tether: calling %s as call %s", tether.runs.target_label(self.target), call_id)
            if self.deferrable:
                return self._start_and_defer(service, call_id)
            result = tether.runs.run_remote(
                service,
                tuple(self.call_args),
                dict(self.call_kwargs),
                call_id=call_id,
                log=self._remote_log,
                escalation=self.escalation,
                run_id=context["run_id"],
                retry_failed=False,  # call_id_for_task chose the id
            )
        context["ti"].xcom_push(key=METADATA_KEY, value=_metadata(result.metadata()))
        self.log.info(
            "tether: call %s finished in %.2fs on %s", call_id, result.seconds, result.instance_type
        )
        return result.value

    def _remote_log(self, line: str) -> None:
        self.log.info("%s", line)

    # -- deferrable mode --------------------------------------------------------------------------------------------
    def _start_and_defer(self, service: Any, call_id: str) -> None:
        service.spawn_with(tuple(self.call_args), dict(self.call_kwargs), call_id=call_id, on_log=None)
        trigger = TetherCallTrigger(
            call_id=call_id,
            cluster=tether.runs.cluster_config(service.cluster),
            tether_conn_id=self.tether_conn_id,
            poll_interval=self.poll_interval,
        )
        self.log.info("tether: call %s started; deferring to the triggerer", call_id)
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: re-attach to the finished call for its result (or raise its error)."""
        call_id = self._call_id = event["call_id"]
        if event.get("status") == "error":
            raise error_from_wire({"error": event["error"]})
        self._cluster = make_cluster(event.get("cluster"), TetherHook(self.tether_conn_id).get_conn())
        handle = tether.call(call_id, self._cluster, on_log=None)
        value = handle.result()
        context["ti"].xcom_push(key=METADATA_KEY, value=_metadata(handle.status()))
        return value

    # -- kill -------------------------------------------------------------------------------------------------------
    def on_kill(self) -> None:
        """The task was killed (SIGTERM, execution timeout): cancel the remote call it was waiting for."""
        if self._call_id is not None:
            tether.runs.cancel_quietly(self._call_id, self._cluster, log=self.log)


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    """Call metadata as plain JSON for XCom (service, version, call id, instance type, seconds, attempts)."""
    return json.loads(json.dumps(data, default=str))
