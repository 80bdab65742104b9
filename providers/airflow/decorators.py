"""``@task.tether``: a TaskFlow task whose body runs on a tether cluster (or calls a saved service instead).

Registered through the provider info's ``task-decorators``::

    @task.tether(cluster="a10")                 # the function itself runs remotely
    def embed(text: str) -> list[float]: ...

    @task.tether(service="team/embed@prod")     # a saved service; the function is a typed stub, never run
    def embed_saved(text: str) -> list[float]: ...

Same semantics as ``RunhouseOperator`` (call ids, re-attach on retry, deferral, ``on_kill``, XComs): the call's
arguments are the decorated function's (XComArgs and templates resolved by Airflow).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from airflow.sdk import Context
from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from tether.providers.airflow.operators import RunhouseOperator

__all__ = ["TetherDecoratedOperator", "tether_task"]


class TetherDecoratedOperator(DecoratedOperator, RunhouseOperator):
    """The operator behind ``@task.tether``: a ``RunhouseOperator`` whose target is the decorated function (or
    ``service=``) and whose arguments are the task's."""

    custom_operator_name = "@task.tether"
    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, "service", "cluster")
    template_fields_renderers = {**DecoratedOperator.template_fields_renderers, "cluster": "json"}

    def __init__(self, *, python_callable: Callable[..., Any], service: str | None = None,
                 **kwargs: Any) -> None:
        upstream = {"service": service} if service is not None else {"function": python_callable}
        super().__init__(python_callable=python_callable, kwargs_to_upstream=upstream, **kwargs)

    def execute(self, context: Context) -> Any:
        self.call_args = list(self.op_args)
        self.call_kwargs = dict(self.op_kwargs)
        return super().execute(context)


def tether_task(python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None,
                **kwargs: Any) -> TaskDecorator:
    """``@task.tether(cluster=..., service=..., escalation=..., deferrable=..., cancel_on_kill=...)``: the
    ``RunhouseOperator`` parameters, and the usual task ones (``retries``, ``task_id``, ...)."""
    return task_decorator_factory(python_callable=python_callable, multiple_outputs=multiple_outputs,
                                  decorated_operator_class=TetherDecoratedOperator, **kwargs)
