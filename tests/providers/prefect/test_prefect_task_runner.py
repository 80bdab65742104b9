"""TetherTaskRunner: plain @task bodies run on a tether cluster in real Prefect flows (futures, .map(), retries,
an async body, a task timeout cancelling the remote call); plain tether calls inside a log_prints task log into
the run; the link artifact; the Prefect run recorded as the caller."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run
from prefect.states import Cancelling

import tether
from examples.services.embed import embed
from tests.providers.prefect import runner_tasks as rt
from tether.providers.prefect import TetherTaskRunner, run_remote

pytestmark = pytest.mark.usefixtures("prefect_server")

# the task modules import Prefect in the worker that runs them (its start takes a while): the runner's tasks get
# an env (a worker) of their own, apart from the other tests' services
TASKS_ENV = tether.env(name="prefect-tasks")


def flow_run_logs(flow_run_id: UUID) -> list[str]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def test_task_bodies_run_on_the_cluster_with_futures_and_map(local_cluster: Any) -> None:
    @flow(task_runner=TetherTaskRunner(cluster=local_cluster, env=TASKS_ENV))
    def pipeline(xs: list[int]) -> tuple[list[tuple[int, int]], tuple[int, int], int]:
        mapped = rt.square.map(xs)
        one = rt.square.submit(7)
        total = rt.add_async.submit(2, 3)
        return [f.result() for f in mapped], one.result(), total.result()

    state = pipeline([1, 2, 3], return_state=True)

    assert state.is_completed(), state
    mapped, one, total = state.result()
    assert [v for v, _ in mapped] == [1, 4, 9] and one[0] == 49 and total == 5
    pids = {pid for _, pid in [*mapped, one]}
    assert os.getpid() not in pids  # the bodies ran in the daemon's worker
    messages = flow_run_logs(state.state_details.flow_run_id)
    assert any(m.endswith(f"square: 7 in {one[1]}") for m in messages), messages  # remote print in the run's logs
    assert any(m.endswith("square: logged for 7") for m in messages)
    # an INFO record too: the task module imports Prefect in the worker, whose logging setup keeps the worker's
    # forwarder (and root level) since it is a handler of the user's kind
    assert any(m.endswith("runner_tasks: square: info record for 7") for m in messages), messages
    assert sum("tether: square done:" in m and "call id run-" in m for m in messages) == 4


def test_a_retry_runs_a_failed_body_again_under_a_successor_call(local_cluster: Any, markers: Path) -> None:
    @flow(task_runner=TetherTaskRunner(cluster=local_cluster, env=TASKS_ENV))
    def pipeline() -> str:
        return rt.flaky.submit(str(markers)).result()

    state = pipeline(return_state=True)

    assert state.is_completed(), state
    assert state.result() == "ok on run 2"
    pids = (markers / "runs").read_text().split()
    assert str(os.getpid()) not in pids
    messages = flow_run_logs(state.state_details.flow_run_id)
    assert any("calling flaky again: call run-" in m and m.endswith("-r1)") for m in messages), messages


def test_a_task_timeout_cancels_the_remote_call(local_cluster: Any, markers: Path) -> None:
    @flow(task_runner=TetherTaskRunner(cluster=local_cluster, env=TASKS_ENV))
    def pipeline() -> str:
        rt.square.submit(1).result()  # the tasks' worker is up (importing Prefect there takes a while)
        return rt.runs_too_long.submit(str(markers)).result()

    state = pipeline(return_state=True)

    assert not state.is_completed()
    assert (markers / "started").exists()
    messages = flow_run_logs(state.state_details.flow_run_id)
    assert any(m.startswith("tether: cancelled remote call run-") for m in messages), messages
    time.sleep(0.5)  # the worker would have written it within 0.1 s had it run on
    assert not (markers / "finished").exists()


def test_plain_calls_in_a_log_prints_task_log_into_the_run(local_cluster: Any) -> None:
    remote = tether.function(embed).to(local_cluster)

    @task(log_prints=True)
    def use_it(text: str) -> list[float]:
        return remote(text, dim=4)

    @flow
    def pipeline(text: str) -> list[float]:
        return use_it(text)

    state = pipeline("three plain words", return_state=True)

    assert state.is_completed() and state.result() == embed("three plain words", dim=4)
    messages = flow_run_logs(state.state_details.flow_run_id)
    assert "embed: 17 chars" in messages, messages  # the remote print, with no helper in between
    assert any(m.endswith("embedded 3 tokens") for m in messages), messages


def test_a_call_leaves_a_link_artifact_and_records_the_run_as_caller(local_cluster: Any) -> None:
    tether.function(embed).to(local_cluster, name="pf-embed").save()

    @task
    def embed_it(text: str) -> list[float]:
        return run_remote("pf-embed", (text,), cluster=local_cluster)

    @flow
    def pipeline(text: str) -> list[float]:
        return embed_it(text)

    state = pipeline("artifacts please", return_state=True)

    assert state.is_completed()
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    (link,) = [a for a in artifacts if a.type == "markdown" or a.type == "link"]
    assert "/calls/run-" in str(link.data) and "estimated cost $0.000000" in str(link.description)
    assert "on `local`" in str(link.description)
    records = tether.registry.get_registry().calls("pf-embed")
    assert records and records[0].run_id is not None and records[0].run_id.startswith(f"prefect:{flow_run_id}/")


def test_cancelling_the_flow_run_cancels_the_remote_body(local_cluster: Any, markers: Path) -> None:
    ids: list[UUID] = []

    @flow(task_runner=TetherTaskRunner(cluster=local_cluster, env=TASKS_ENV))
    def pipeline() -> str:
        ids.append(UUID(flow_run.id))
        return rt.run_until_cancelled.submit(str(markers)).result()

    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(state=pipeline(return_state=True)))
    runner.start()
    for _ in range(6000):
        if (markers / "started").exists():
            break
        time.sleep(0.02)
    assert (markers / "started").exists()
    with get_client(sync_client=True) as client:  # what the UI's "Cancel" button does
        client.set_flow_run_state(ids[0], Cancelling(), force=True)
    runner.join(timeout=120)

    assert not runner.is_alive()
    messages = flow_run_logs(ids[0])
    (line,) = [m for m in messages if m.startswith("tether: cancelled remote call run-")]
    call_id = line.rsplit(" ", 1)[1]
    assert tether.call(call_id, local_cluster, on_log=None).status()["state"] == "cancelled"
    assert not (markers / "finished").exists()


def test_the_runner_travels_to_a_flow_runs_process_and_compares_by_settings(local_cluster: Any) -> None:
    import cloudpickle

    runner = TetherTaskRunner(cluster=local_cluster, env=TASKS_ENV, max_workers=4)
    copy = cloudpickle.loads(cloudpickle.dumps(runner))  # what a served flow's run process gets
    assert copy == runner and runner.duplicate() == runner
    assert copy != TetherTaskRunner(cluster=local_cluster, env=TASKS_ENV, max_workers=8)
    with copy:  # usable: its own locks and tables were rebuilt
        assert copy._running == {}
