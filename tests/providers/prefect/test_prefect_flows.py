"""Real Prefect flows calling services on a local tether cluster: results, logs, retries, cancellation."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.exceptions import TerminationSignal
from prefect.logging.handlers import APILogHandler
from prefect.runtime import flow_run
from prefect.states import Cancelling

import tether
from examples.services.embed import embed
from tests.netproxy import CuttableProxy
from tether.providers.prefect import TetherCluster, retry_on_tether_errors, run_remote, tether_task

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def cluster(local_cluster: Any) -> Any:
    """The shared local cluster of ``tests/conftest.py`` (one daemon for this module)."""
    return local_cluster


@pytest.fixture(scope="module")
def saved_embed(cluster: Any) -> str:
    """``embed`` deployed once and saved under a name, as a user would from their IDE."""
    tether.function(embed).to(cluster, name="embed").save()
    return "embed"


def flow_run_logs(flow_run_id: UUID) -> list[str]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return [log.message for log in logs]


def wait_for(path: Path, what: str) -> None:
    for _ in range(3000):
        if path.exists():
            return
        time.sleep(0.02)
    raise AssertionError(f"{what}: {path} never appeared")


def runs_of(markers: Path) -> int:
    path = markers / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def call_state(cluster: Any, flow_run_id: UUID) -> str:
    """The daemon's state of the call the flow run made (its id is in the run's logs)."""
    (line,) = [m for m in flow_run_logs(flow_run_id) if "(call id " in m]
    call_id = line.rsplit("(call id ", 1)[1].rstrip(")")
    return str(tether.call(call_id, cluster).status()["state"])


def test_tether_task_returns_the_service_result_and_logs_into_the_flow_run(saved_embed: str) -> None:
    @tether_task(service=saved_embed, retries=1)
    def embed_remote(text: str, dim: int = 8) -> list[float]: ...

    @flow
    def pipeline(text: str) -> list[float]:
        return embed_remote(text, dim=4)

    state = pipeline("tether meets prefect", return_state=True)

    assert state.is_completed()
    assert state.result() == embed("tether meets prefect", dim=4)
    messages = flow_run_logs(state.state_details.flow_run_id)
    assert "[embed] embed: 20 chars" in messages  # the remote print
    assert any(
        m.startswith("[embed] ") and m.endswith("embedded 3 tokens") for m in messages
    )  # remote logging
    assert any(m.startswith("tether: embed done: service embed") for m in messages)


def test_each_call_of_a_task_is_its_own_remote_call_through_a_saved_block(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    TetherCluster(endpoint=cluster.endpoint, token=cluster.token, cluster_name=cluster.name).save(
        "lab", overwrite=True
    )
    (markers / "release").touch()

    @task
    def two_calls(marker_dir: str) -> list[str]:
        return [run_remote(steps.wait_for_release, (marker_dir,), cluster="lab") for _ in range(2)]

    @flow
    def pipeline(marker_dir: str) -> list[str]:
        return two_calls(marker_dir)

    assert pipeline(str(markers)) == ["released after run 1", "released after run 2"]


def test_retry_reattaches_to_the_call_the_failed_attempt_started(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    proxy = CuttableProxy("127.0.0.1", int(cluster.endpoint.rsplit(":", 1)[1]))
    block = TetherCluster(endpoint=proxy.url, token=cluster.token, cluster_name=cluster.name)
    failures: list[BaseException] = []

    def reconnect_then_decide(task: Any, task_run: Any, state: Any) -> bool:
        failures.append(state.data)
        proxy.restore()  # the network comes back before Prefect's retry
        return retry_on_tether_errors(task, task_run, state)

    @task(retries=1, retry_condition_fn=reconnect_then_decide)
    def step(marker_dir: str) -> str:
        return run_remote(steps.wait_for_release, (marker_dir,), cluster=block)

    @flow
    def pipeline(marker_dir: str) -> str:
        return step(marker_dir)

    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(state=pipeline(str(markers), return_state=True)))
    runner.start()
    try:
        wait_for(markers / "started", "remote call started")
        proxy.cut()  # the link to the cluster drops mid-call: the attempt fails with ClusterUnavailable
        for _ in range(3000):
            if failures:
                break
            time.sleep(0.02)
        (markers / "release").touch()
        runner.join(timeout=120)
    finally:
        proxy.close()

    assert len(failures) == 1 and isinstance(failures[0], tether.ClusterUnavailable)  # or a subclass of it
    state = outcome["state"]
    assert state.result() == "released after run 1"  # the retry got the first call's result
    assert runs_of(markers) == 1  # and the function ran once


def test_retryable_remote_failure_runs_a_new_call_on_retry(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    @tether_task(service=steps.die_on_first_run, cluster=cluster, retries=2)
    def flaky(marker_dir: str) -> str: ...

    @flow
    def pipeline(marker_dir: str) -> str:
        return flaky(marker_dir)

    assert pipeline(str(markers)) == "survived on run 2"  # WorkerDied is retryable: a fresh call succeeded
    assert runs_of(markers) == 2


def test_retry_on_tether_errors_does_not_retry_a_bug_in_remote_code(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    @tether_task(
        service=steps.fail_with_value_error, cluster=cluster, retries=3, retry_condition_fn=retry_on_tether_errors
    )
    def buggy(marker_dir: str) -> str: ...

    @flow
    def pipeline(marker_dir: str) -> str:
        return buggy(marker_dir)

    state = pipeline(str(markers), return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match="bad input on run 1"):
        state.result()
    assert runs_of(markers) == 1  # retry_on_tether_errors said no to all three retries


def long_running_flow(steps: ModuleType, cluster: Any, poll: float | None) -> tuple[Any, list[UUID]]:
    """A flow whose one task runs until cancelled, and the list its flow run id lands in."""
    flow_run_ids: list[UUID] = []

    @task
    def long_step(marker_dir: str) -> str:
        return run_remote(steps.run_until_cancelled, (marker_dir,), cluster=cluster, cancel_poll_seconds=poll)

    @flow
    def pipeline(marker_dir: str) -> str:
        flow_run_ids.append(UUID(flow_run.id))
        return long_step(marker_dir)

    return pipeline, flow_run_ids


def test_cancelling_the_flow_run_cancels_the_remote_call(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    pipeline, flow_run_ids = long_running_flow(steps, cluster, poll=0.2)
    outcome: dict[str, Any] = {}
    runner = threading.Thread(target=lambda: outcome.update(state=pipeline(str(markers), return_state=True)))
    runner.start()
    wait_for(markers / "started", "remote call started")
    with get_client(sync_client=True) as client:  # what the UI's "Cancel" button does
        client.set_flow_run_state(flow_run_ids[0], Cancelling(), force=True)
    runner.join(timeout=120)

    assert not runner.is_alive()
    state = outcome["state"]
    assert state.is_cancelling() or state.is_cancelled()
    assert any(m.startswith("tether: cancelled remote call") for m in flow_run_logs(flow_run_ids[0]))
    assert call_state(cluster, flow_run_ids[0]) == "cancelled"
    assert not (markers / "finished").exists()


@pytest.fixture()
def harmless_sigterm() -> Iterator[None]:
    """A stray SIGTERM must not kill pytest (Prefect installs its own handler while a flow runs)."""
    previous = signal.signal(signal.SIGTERM, lambda *_: None)
    yield
    signal.signal(signal.SIGTERM, previous)


def sigterm_when(path: Path) -> Callable[[], None]:
    def send() -> None:
        wait_for(path, "remote call started")
        os.kill(os.getpid(), signal.SIGTERM)  # what a Prefect runner sends a flow run it cancels

    return send


@pytest.mark.usefixtures("harmless_sigterm")
def test_terminating_the_flow_process_cancels_the_remote_call(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    pipeline, flow_run_ids = long_running_flow(steps, cluster, poll=None)  # only the signal can stop it
    threading.Thread(target=sigterm_when(markers / "started"), daemon=True).start()
    with pytest.raises(TerminationSignal):
        pipeline(str(markers))

    assert call_state(cluster, flow_run_ids[0]) == "cancelled"
    assert not (markers / "finished").exists()


def test_escalation_policy_moves_an_out_of_memory_task_to_a_bigger_rung(
    steps: ModuleType, module_home: Path, markers: Path
) -> None:
    small = tether.cluster(name="prefect-small", instance_type="local:256MB")
    policy = tether.Escalation(ladder=["local:256MB", "local:1GB"])

    @tether_task(service=steps.grow, cluster=small, escalation=policy)
    def grow(marker_dir: str, nbytes: int) -> int: ...

    @flow
    def pipeline(marker_dir: str) -> int:
        return grow(marker_dir, 512 * 1024**2)

    try:
        state = pipeline(str(markers), return_state=True)
        assert state.result() == 512 * 1024**2
        assert runs_of(markers) == 2  # ran out of memory on the 256MB rung, succeeded on the 1GB one
        messages = flow_run_logs(state.state_details.flow_run_id)
        assert any(m.startswith("tether: grow done:") and "attempts: local:256MB " in m for m in messages)
    finally:
        for state_dir in (module_home / "clusters").glob("prefect-small*"):
            if state_dir.is_dir():
                with contextlib.suppress(tether.TetherError):
                    tether.cluster(name=state_dir.name).teardown()
