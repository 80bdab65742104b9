"""Airflow provider: ``RunhouseOperator``, ``TetherHook`` (connection type ``tether``), ``TetherCallTrigger``.

Names resolve lazily, so Airflow's provider discovery can import ``provider_info`` without importing Airflow
operators (or tether's runtime) first.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tether.providers.airflow.hook import TetherHook
    from tether.providers.airflow.operators import RunhouseOperator
    from tether.providers.airflow.triggers import TetherCallTrigger

__all__ = ["RunhouseOperator", "TetherCallTrigger", "TetherHook"]

_WHERE = {"RunhouseOperator": "operators", "TetherHook": "hook", "TetherCallTrigger": "triggers"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
