"""Which call id a try uses: the base id, the latest earlier try's call (re-attach), or a fresh one (re-run)."""

from __future__ import annotations

import pytest

from tether.providers.airflow.callids import base_call_id, call_id_for_try

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


@pytest.mark.parametrize(
    ("try_number", "states", "expected"),
    [
        (1, {}, BASE),
        (2, {BASE: "running"}, BASE),  # the killed try's call still runs: wait for it
        (2, {BASE: "succeeded"}, BASE),  # it finished after the worker died: take its result
        (2, {BASE: "failed"}, f"{BASE}-try2"),  # replaying a failure helps nobody: run again
        (2, {BASE: "cancelled"}, f"{BASE}-try2"),
        (2, {}, f"{BASE}-try2"),  # try 1 never reached the daemon
        (3, {BASE: "failed", f"{BASE}-try2": "running"}, f"{BASE}-try2"),
        (3, {BASE: "running"}, BASE),  # try 2 died before its call was made; try 1's call still runs
        (3, {BASE: "succeeded", f"{BASE}-try2": "failed"}, f"{BASE}-try3"),  # the latest call decides
    ],
)
def test_a_try_reattaches_to_a_live_or_successful_call_and_reruns_after_a_failure(
    try_number: int, states: dict[str, str], expected: str
) -> None:
    assert call_id_for_try(BASE, try_number, states.get) == expected
