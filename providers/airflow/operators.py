"""``RunhouseOperator``: an Airflow task whose body is one call to a tether service.

A call's identity is the task instance (dag_id, task_id, run_id, map index), the attempt within its DAG run (a
Clear starts a new one), the service's version and a digest of the arguments — never the try number. So a
retry re-attaches to the remote call the previous try started instead of paying for it twice (or runs again
under a successor id after that call failed: ``tether.runs.choose_attempt``), while a Clear, a new run, new
arguments or a new version run the function again; ``reattach=`` and ``force_rerun=`` change that. ``on_kill``
cancels the call (``cancel_on_kill=False``: it runs on). ``TetherOperator`` is the same operator under tether's
name; ``@task.tether`` (``decorators.py``) the TaskFlow form.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.configuration import conf

import tether
import tether.runs
from tether.errors import ConfigError, error_from_wire
from tether.providers.airflow import lineage
from tether.providers.airflow.hook import TetherHook, make_cluster
from tether.providers.airflow.links import TetherCallLink
from tether.providers.airflow.triggers import TetherCallTrigger

__all__ = [
    "RunhouseOperator",
    "TetherOperator",
    "base_call_id",
    "call_id_for_task",
    "default_deferrable",
    "first_try_number",
    "task_call_id",
]

CALL_ID_KEY = "call_id"
"""XCom key holding the remote call id, pushed before the task waits for the call."""
METADATA_KEY = "tether"
"""XCom key holding the finished call's metadata (service, version, instance type, seconds, attempts)."""


def default_deferrable() -> bool:
    """Airflow's ``[operators] default_deferrable`` (``AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE``): what
    ``deferrable`` is when a task does not say."""
    return conf.getboolean("operators", "default_deferrable", fallback=False)


def base_call_id(dag_id: str, task_id: str, run_id: str, map_index: int | None) -> str:
    """The id of a task instance (never involves the try number): what each of its calls' ids starts from."""
    return tether.runs.call_id_for("airflow", dag_id, task_id, run_id, map_index)


def first_try_number(ti: Any, retries: int | None) -> int:
    """The first try of the attempt ``ti``'s current try belongs to: 1, or the try after the last Clear.

    Airflow's own arithmetic (``RuntimeTaskInstance.get_first_reschedule_date``): a Clear raises ``max_tries``
    to the last try number plus ``retries``, a retry leaves it alone.
    """
    return int(ti.max_tries) - int(retries or 0) + 1


def task_call_id(context: Context, identity: str, *, retries: int | None = None, reattach: str = "retries",
                 force_rerun: bool = False) -> str:
    """The base call id of this try: its task instance, its DAG run, its attempt and the call's ``identity``.

    ``reattach="retries"``: the tries of one attempt share it (a Clear starts another attempt);
    ``reattach="run"``: every attempt in the DAG run does (a Clear with the same version and arguments
    re-attaches too); ``force_rerun``: this try alone has it.
    """
    ti = context["ti"]
    tether.runs.check_reattach(reattach)
    base = base_call_id(ti.dag_id, ti.task_id, context["run_id"], ti.map_index)
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)  # a DAG run deleted and made again has another
    if force_rerun:
        return tether.runs.call_id_for(base, run_after, "try", ti.try_number, identity)
    if reattach == "run":
        return tether.runs.call_id_for(base, run_after, identity)
    retries = ti.task.retries if retries is None else retries
    return tether.runs.call_id_for(base, run_after, "attempt", first_try_number(ti, retries), identity)


def call_id_for_task(context: Context, cluster: Any = None, *, identity: str = "", reattach: str = "retries",
                     force_rerun: bool = False) -> str:
    """The call id this try uses (:func:`task_call_id`, or a successor once that call failed)."""
    return tether.runs.attempt_call_id(
        task_call_id(context, identity, reattach=reattach, force_rerun=force_rerun), cluster
    )


class RunhouseOperator(BaseOperator):
    """Call a tether service and return its result as the task's XCom ``return_value``.

    Give either ``service`` (a saved service: ``"embed"``, ``"team/embed@prod"``) or ``function`` (a callable,
    or an import path ``"pkg.mod:fn"``). ``args``/``kwargs`` are templated.

    :param service: name of a saved service.
    :param function: a callable or ``"pkg.mod:fn"`` to deploy and call.
    :param args: positional arguments (templated).
    :param kwargs: keyword arguments (templated).
    :param cluster: where the call runs — a cluster name, a ClusterSpec dict or a ``tether.Cluster``; default:
        the connection's ``cluster``. A saved ``service`` runs there too, at its saved version; with no cluster
        at all it runs where it was saved.
    :param escalation: a ``tether.Escalation`` (or its dict form): on out-of-memory, retry on the next rung.
    :param tether_conn_id: the ``tether`` connection (registry address, token, default cluster).
    :param deferrable: wait in the triggerer instead of holding a worker slot. Default: Airflow's
        ``[operators] default_deferrable`` (a task with an ``escalation`` policy then stays in the worker).
    :param cancel_on_kill: cancel the remote call when the task is killed (mark failed, timeout, SIGTERM) —
        default; False leaves it running (a retry re-attaches to it).
    :param poll_interval: seconds between polls of the daemon in deferrable mode.
    :param reattach: ``"retries"`` (default): a retry re-attaches to the call an earlier try of the same attempt
        started (running, or finished successfully); a Clear, a new DAG run, other arguments or another version
        run it again. ``"run"``: a Clear re-attaches too when the service version and arguments are the same
        (while the daemon still has that call: an hour).
    :param force_rerun: run the call again on every try, never re-attach.
    :param allow_local_daemon: let the task start a tether daemon on the Airflow worker itself (the embedded
        local cluster when no cluster is set; a local cluster that is not running). Default: only with
        ``TETHER_ALLOW_LOCAL_DAEMON=1``; otherwise such a task fails with a ``ConfigError`` naming the
        connection to set.

    XComs: ``call_id`` (pushed before the task waits), ``return_value`` and ``tether`` (the call's metadata:
    service, version, call id, instance type, the remote call's ``seconds``, ``price_per_hour`` and estimated
    ``cost`` in dollars, the call's ``url``, whether it was ``reattached``, what the remote code ``reports``).
    The "Tether call" link opens the call's page on its daemon. Remote logging records keep their level.

    Example::

        RunhouseOperator(task_id="embed", service="embed", args=["{{ params.text }}"], retries=2)
    """

    # Airflow forbids templating an attribute named like a BaseOperator parameter ("kwargs"), so the call's
    # arguments live in ``call_args``/``call_kwargs``; the constructor takes them as ``args=``/``kwargs=``.
    # ``function`` is not templated: Airflow calls a callable template field with the context instead of keeping it.
    template_fields: Sequence[str] = ("service", "call_args", "call_kwargs", "cluster")
    template_fields_renderers = {"call_args": "py", "call_kwargs": "json", "cluster": "json"}
    ui_color = "#e8f1fb"
    operator_extra_links = (TetherCallLink(),)

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
        deferrable: bool | None = None,
        poll_interval: float = 2.0,
        cancel_on_kill: bool = True,
        reattach: str = "retries",
        force_rerun: bool = False,
        allow_local_daemon: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(**base_kwargs)
        if (service is None) == (function is None):
            raise ConfigError("RunhouseOperator needs exactly one of service= or function=")
        if deferrable is None:  # Airflow's default; escalation runs in the worker, so such a task stays there
            deferrable = default_deferrable() and escalation is None
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
        self.deferrable = bool(deferrable)
        self.poll_interval = poll_interval
        self.cancel_on_kill = bool(cancel_on_kill)
        self.reattach = tether.runs.check_reattach(reattach)
        self.force_rerun = bool(force_rerun)
        self.allow_local_daemon = allow_local_daemon
        self._call_id: str | None = None
        self._cluster: Any = None
        self.call_url: str | None = None
        """The call's page on its daemon, once the call is chosen (what the "Tether call" link opens)."""
        self.call_metadata: dict[str, Any] | None = None
        """The finished call's facts (the ``tether`` XCom), which its OpenLineage facets are made of."""

    # -- the call ---------------------------------------------------------------------------------------------------
    @property
    def target(self) -> Any:
        """What ``tether.runs`` calls: a service name, an import path or a callable."""
        return self.service if self.service is not None else self.function

    def execute(self, context: Context) -> Any:
        hook = TetherHook(self.tether_conn_id)
        label = tether.runs.target_label(self.target)
        with hook.environment():
            where = hook.where(self.cluster, allow_local_daemon=self.allow_local_daemon)
            service = tether.runs.resolve_target(self.target, where)
            if not self.cancel_on_kill:
                service = service.with_options(cancel_on_interrupt=False)
            self._cluster = service.cluster
            args, kwargs = tuple(self.call_args), dict(self.call_kwargs)
            base_id = task_call_id(
                context,
                tether.runs.call_identity(service, args, kwargs),
                retries=self.retries,
                reattach=self.reattach,
                force_rerun=self.force_rerun,
            )
            choice = tether.runs.choose_attempt(base_id, service.cluster)
            call_id = self._call_id = choice.call_id
            self.call_url = tether.runs.call_url(service.cluster, call_id)
            context["ti"].xcom_push(key=CALL_ID_KEY, value=call_id)
            self.log.info("%s", tether.runs.describe_call(label, choice))
            if self.deferrable:
                return self._start_and_defer(service, call_id, context)
            result = tether.runs.run_remote(
                service,
                args,
                kwargs,
                call_id=call_id,
                on_log=tether.runs.level_sink(self._remote_log),
                escalation=self.escalation,
                run_id=context["run_id"],
                retry_failed=False,  # choose_attempt chose the id
                reattached=choice.reattached,
            )
        context["ti"].xcom_push(key=METADATA_KEY, value=self._facts(result))
        self.log.info("%s", tether.runs.describe_finish(label, result))
        return result.value

    def _facts(self, result: tether.runs.RunResult) -> dict[str, Any]:
        self.call_metadata = _metadata({**result.metadata(), "cluster": getattr(self._cluster, "name", None)})
        return self.call_metadata

    def _remote_log(self, level: int, line: str) -> None:
        self.log.log(level, "%s", line)

    # -- deferrable mode --------------------------------------------------------------------------------------------
    def _start_and_defer(self, service: Any, call_id: str, context: Context) -> None:
        service.spawn_with(tuple(self.call_args), dict(self.call_kwargs), call_id=call_id, on_log=None)
        ti = context["ti"]
        trigger = TetherCallTrigger(
            call_id=call_id,
            cluster=tether.runs.cluster_config(service.cluster),
            tether_conn_id=self.tether_conn_id,
            poll_interval=self.poll_interval,
            cursor=f"airflow:{ti.dag_id}/{ti.task_id}/{context['run_id']}/{ti.map_index}/{ti.try_number}/{call_id}",
            cancel_on_kill=self.cancel_on_kill,
        )
        self.log.info("tether: call started; deferring to the triggerer (call id %s)", call_id)
        self.defer(trigger=trigger, method_name="execute_complete")

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        """Resume after the trigger fired: re-attach to the finished call for its result (or raise its error)."""
        call_id = self._call_id = event["call_id"]
        if event.get("status") == "error":
            raise error_from_wire({"error": event["error"]})
        self._cluster = make_cluster(event.get("cluster"), TetherHook(self.tether_conn_id).get_conn())
        result = tether.runs.attach_result(call_id, self._cluster)
        self.call_url = result.url
        context["ti"].xcom_push(key=METADATA_KEY, value=self._facts(result))
        self.log.info("%s", tether.runs.describe_finish(tether.runs.target_label(self.target), result))
        return result.value

    # -- lineage ----------------------------------------------------------------------------------------------------
    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage's ``OperatorLineage`` of the finished call (needs ``apache-airflow-providers-openlineage``):
        a ``tether`` run facet (service, version, cluster, instance type, call id, page, seconds, cost) and the
        inputs/outputs the remote code declared with ``tether.lineage.input``/``output`` as ``Dataset`` objects."""
        meta = self.call_metadata
        if meta is None:  # another instance of the task (the facts are in its XCom)
            meta = task_instance.xcom_pull(task_ids=task_instance.task_id, key=METADATA_KEY,
                                           map_indexes=task_instance.map_index)
        if not isinstance(meta, dict):  # the call did not finish: what is known of it
            meta = {"service": tether.runs.target_label(self.target), "call_id": self._call_id,
                    "url": self.call_url, "cluster": getattr(self._cluster, "name", None)}
        return lineage.operator_lineage(meta)

    # -- kill -------------------------------------------------------------------------------------------------------
    def on_kill(self) -> None:
        """The task was killed (SIGTERM, execution timeout): cancel the remote call it was waiting for, unless
        ``cancel_on_kill=False``."""
        if self._call_id is None:
            return
        if not self.cancel_on_kill:
            self.log.warning("tether: task killed; the remote call keeps running (cancel_on_kill=False, call id %s)",
                             self._call_id)
            return
        tether.runs.cancel_quietly(self._call_id, self._cluster, log=self.log)


class TetherOperator(RunhouseOperator):
    """``RunhouseOperator`` under tether's own name: the same parameters, XComs and behaviour."""


def _metadata(data: dict[str, Any]) -> dict[str, Any]:
    """Call metadata as plain JSON for XCom (service, version, call id, instance type, seconds, attempts)."""
    return json.loads(json.dumps(data, default=str))
