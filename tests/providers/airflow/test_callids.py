"""A task instance's call id: (dag, task, run, map index), the attempt (a Clear starts another), the call's
identity (service version, arguments) and never the try number; each try asks the daemon which id it uses
(``call_id_for_task``): the base call while it runs or once it succeeded, a successor after it failed. The scheme
itself (``tether.runs.choose_call_id``) is tested in ``tests/core/test_runs.py``; these tests check that the
operator's tries go through it with the task instance's own base id (real DAG runs: ``test_airflow_identity.py``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import tether
import tether.runs
from tests.core import services as svc
from tether.protocol import CallState
from tether.providers.airflow.operators import base_call_id, call_id_for_task, task_call_id

BASE = base_call_id("dag", "task", "manual__2024-01-01", -1)


def test_base_id_depends_on_dag_task_run_and_map_index_only() -> None:
    assert base_call_id("dag", "task", "manual__2024-01-01", -1) == BASE
    assert tether.runs.call_id_for("airflow", "dag", "task", "manual__2024-01-01", -1) == BASE
    others = {
        base_call_id("dag2", "task", "manual__2024-01-01", -1),
        base_call_id("dag", "task2", "manual__2024-01-01", -1),
        base_call_id("dag", "task", "manual__2024-01-02", -1),
        base_call_id("dag", "task", "manual__2024-01-01", 0),
    }
    assert BASE not in others and len(others) == 4


RUN_AFTER = datetime(2024, 1, 1, tzinfo=UTC)


def _context(
    run_id: str, try_number: int, map_index: int = -1, *, max_tries: int = 5, retries: int = 5
) -> dict[str, Any]:
    """The part of an Airflow task context ``call_id_for_task`` reads (``retries=5``: tries 1..6 are one attempt)."""
    ti = SimpleNamespace(
        dag_id="ids_dag", task_id="ids_task", map_index=map_index, try_number=try_number, max_tries=max_tries,
        task=SimpleNamespace(retries=retries),
    )
    return {"ti": ti, "run_id": run_id, "dag_run": SimpleNamespace(run_after=RUN_AFTER)}


def test_each_try_reattaches_to_a_running_or_succeeded_call_and_reruns_after_a_failure(
    cluster: Any, tmp_path: Path
) -> None:
    run_id = f"manual__{uuid.uuid4().hex}"
    identity = "the-call"
    base = task_call_id(_context(run_id, 1), identity)
    assert base.startswith("run-") and base != base_call_id("ids_dag", "ids_task", run_id, -1)
    assert call_id_for_task(_context(run_id, 1), cluster, identity=identity) == base  # the first try
    assert call_id_for_task(_context(run_id, 2), cluster, identity=identity) == base  # nothing ran: the try changes nothing

    boom = tether.function(svc.raises_value_error).to(cluster, name="ids_boom")
    with pytest.raises(ValueError):
        boom.call(("try 2 failed",), call_id=base)
    assert call_id_for_task(_context(run_id, 3), cluster, identity=identity) == f"{base}-r1"  # a failure runs again

    waiting = tether.function(svc.log_wait_count).to(cluster, name="ids_wait")
    running = waiting.spawn_with((str(tmp_path),), {}, call_id=f"{base}-r1", on_log=None).wait_started()
    try:
        assert tether.runs.call_state(f"{base}-r1", cluster) is CallState.RUNNING
        assert call_id_for_task(_context(run_id, 4), cluster, identity=identity) == f"{base}-r1"  # still runs
    finally:
        (tmp_path / "release").touch()
    assert running.result(timeout=60) == 1
    assert call_id_for_task(_context(run_id, 5), cluster, identity=identity) == f"{base}-r1"  # succeeded: its result

    mapped = task_call_id(_context(run_id, 2, map_index=3), identity)
    assert mapped != base and call_id_for_task(_context(run_id, 2, map_index=3), cluster, identity=identity) == mapped


def test_a_clear_other_arguments_or_force_rerun_give_another_base_id() -> None:
    run_id = "manual__2024-01-01"
    first = task_call_id(_context(run_id, 1, max_tries=2, retries=2), "args-a")
    assert task_call_id(_context(run_id, 3, max_tries=2, retries=2), "args-a") == first  # tries 1..3: one attempt
    cleared = task_call_id(_context(run_id, 4, max_tries=5, retries=2), "args-a")  # Clear after try 3: max_tries 5
    assert cleared != first
    assert task_call_id(_context(run_id, 6, max_tries=5, retries=2), "args-a") == cleared  # the Clear's retries
    assert task_call_id(_context(run_id, 1, max_tries=2, retries=2), "args-b") != first  # other arguments
    run = task_call_id(_context(run_id, 1, max_tries=2, retries=2), "args-a", reattach="run")
    assert task_call_id(_context(run_id, 4, max_tries=5, retries=2), "args-a", reattach="run") == run
    forced = {task_call_id(_context(run_id, n, max_tries=2, retries=2), "args-a", force_rerun=True) for n in (1, 2)}
    assert len(forced) == 2 and first not in forced
    with pytest.raises(tether.ConfigError):
        task_call_id(_context(run_id, 1), "args-a", reattach="always")
