"""Airflow provider: ``RunhouseOperator`` (also ``TetherOperator``), ``@task.tether``, ``TetherHook`` (connection
type ``tether``), ``TetherCallTrigger``, ``TetherCallLink``.

Names resolve lazily, so Airflow's provider discovery can import ``provider_info`` without importing Airflow
operators (or tether's runtime) first.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.providers.airflow.decorators import tether_task
    from tether.providers.airflow.hook import TetherHook
    from tether.providers.airflow.links import TetherCallLink
    from tether.providers.airflow.operators import RunhouseOperator, TetherOperator
    from tether.providers.airflow.triggers import TetherCallTrigger

__all__ = ["RunhouseOperator", "TetherCallLink", "TetherCallTrigger", "TetherHook", "TetherOperator", "tether_task"]

_WHERE = {"RunhouseOperator": "operators", "TetherOperator": "operators", "TetherHook": "hook",
          "TetherCallTrigger": "triggers", "TetherCallLink": "links", "tether_task": "decorators"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
