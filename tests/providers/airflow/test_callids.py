"""A task instance's base call id: (dag, task, run, map index) and never the try number.

Which id a retry uses (re-attach to the base call, or a successor after a failure) is the one scheme all
providers share, ``tether.runs.attempt_call_id``: see ``tests/core/test_runs.py``.
"""

from __future__ import annotations

from tether.providers.airflow.operators import base_call_id

BASE = base_call_id("dag", "task", "manual__2024-01-01", -1)


def test_base_id_depends_on_dag_task_run_and_map_index_only() -> None:
    assert base_call_id("dag", "task", "manual__2024-01-01", -1) == BASE
    others = {
        base_call_id("dag2", "task", "manual__2024-01-01", -1),
        base_call_id("dag", "task2", "manual__2024-01-01", -1),
        base_call_id("dag", "task", "manual__2024-01-02", -1),
        base_call_id("dag", "task", "manual__2024-01-01", 0),
    }
    assert BASE not in others and len(others) == 4
