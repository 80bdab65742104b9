"""``TetherCallLink``: the "Tether call" button of a tether task: the call's page on its daemon."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperatorLink

__all__ = ["TetherCallLink"]


class TetherCallLink(BaseOperatorLink):
    """The call's page on its daemon (``<endpoint>/calls/<id>/logs``: state and log lines, as JSON).

    Airflow 3 computes it on the worker when the try ends (success or failure) and keeps it as an XCom; the
    operator knows the URL once it chose the call, before it waits.
    """

    name = "Tether call"

    def get_link(self, operator: Any, *, ti_key: Any) -> str:
        return str(getattr(operator, "call_url", None) or "")
