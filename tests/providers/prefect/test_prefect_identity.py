"""Where a Prefect call runs and when it runs again: the block decides the cluster (saved services too), no
daemon starts on the machine unasked; a flow-run retry in a new process re-attaches; task retries behave as
Prefect's do; durations are the remote call's."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from uuid import UUID

import pytest
from prefect import flow, task
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.logging.handlers import APILogHandler
from prefect.settings import PREFECT_API_URL
from prefect.states import Crashed

import tether
import tether.runs
from tether.protocol import CallState
from tether.providers.prefect import (
    TetherCluster,
    retry_on_tether_errors,
    run_remote,
    run_remote_result,
    tether_task,
)

pytestmark = pytest.mark.usefixtures("prefect_server")


@pytest.fixture(scope="module")
def cluster(local_cluster: Any) -> Any:
    return local_cluster


@pytest.fixture(scope="module")
def other(module_home: Path) -> Iterator[Any]:
    """A second cluster: not where the services are saved."""
    c = tether.cluster(name="prefect-other").up_if_not()
    try:
        yield c
    finally:
        c.down()


def flow_run_logs(flow_run_id: UUID | str) -> list[str]:
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(str(flow_run_id))])))
    return [log.message for log in logs]


def runs_of(markers: Path) -> int:
    path = markers / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_until(check: Any, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- where ------------------------------------------------------------------------------------------------------------
def test_a_saved_service_runs_on_the_blocks_cluster(steps: ModuleType, cluster: Any, other: Any, markers: Path) -> None:
    (markers / "release").touch()
    tether.function(steps.wait_for_release).to(cluster, name="prefect_where").save()  # saved on test-local
    TetherCluster(endpoint=other.endpoint, token=other.token).save("elsewhere", overwrite=True)

    @task
    def by_block_name(marker_dir: str) -> tether.runs.RunResult:
        return run_remote_result("prefect_where", (marker_dir,), cluster="elsewhere")

    @tether_task(service="prefect_where", cluster=TetherCluster(cluster_name=other.name))
    def by_block(marker_dir: str) -> str: ...

    @flow
    def pipeline(marker_dir: str) -> tuple[tether.runs.RunResult, str]:
        return by_block_name(marker_dir), by_block(marker_dir)

    state = pipeline(str(markers), return_state=True)
    result, value = state.result()

    assert value.startswith("released after run")
    assert tether.runs.call_state(result.call_id, other) is CallState.SUCCEEDED  # where the block says
    assert tether.runs.call_state(result.call_id, cluster) is None  # not where it was saved
    assert result.version is not None
    ids = [m.rsplit("(call id ", 1)[1].rstrip(")") for m in flow_run_logs(state.state_details.flow_run_id)
           if "(call id " in m]
    assert len(ids) == 2 and all(tether.runs.call_state(i, other) is CallState.SUCCEEDED for i in ids)


def test_a_flow_with_nowhere_to_run_fails_instead_of_starting_a_daemon(
    steps: ModuleType, markers: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TETHER_ALLOW_LOCAL_DAEMON", raising=False)
    (markers / "release").touch()
    embedded = tether.cluster()
    assert embedded.status() == "down"

    @task
    def step(marker_dir: str) -> str:
        return run_remote(steps.wait_for_release, (marker_dir,))

    @flow
    def pipeline(marker_dir: str) -> str:
        return step(marker_dir)

    state = pipeline(str(markers), return_state=True)

    assert state.is_failed()
    with pytest.raises(tether.ConfigError, match="no cluster to run wait_for_release") as info:
        state.result()
    assert "TetherCluster block" in (info.value.hint or "") and "allow_local_daemon=True" in (info.value.hint or "")
    assert runs_of(markers) == 0 and embedded.status() == "down"  # nothing ran, no daemon was started


# -- retries ----------------------------------------------------------------------------------------------------------
def test_tether_task_retries_retry_remote_errors_like_any_task_failure(
    steps: ModuleType, cluster: Any, markers: Path
) -> None:
    @tether_task(service=steps.value_error_on_first_run, cluster=cluster, retries=2)
    def flaky(marker_dir: str) -> str: ...

    @flow
    def pipeline(marker_dir: str) -> str:
        return flaky(marker_dir)

    assert pipeline(str(markers)) == "ok on run 2"  # the retry ran the failed call again
    assert runs_of(markers) == 2


def test_the_users_retry_condition_is_kept_and_a_skipped_retry_says_why(
    steps: ModuleType, cluster: Any, tmp_path: Path
) -> None:
    asked: list[str] = []

    def mine(task: Any, task_run: Any, state: Any) -> bool:
        asked.append(type(state.data).__name__)
        return False

    @tether_task(service=steps.value_error_on_first_run, cluster=cluster, retries=2, retry_condition_fn=mine)
    def own_condition(marker_dir: str) -> str: ...

    @tether_task(
        service=steps.fail_with_value_error, cluster=cluster, retries=2, retry_condition_fn=retry_on_tether_errors
    )
    def tether_condition(marker_dir: str) -> str: ...

    assert own_condition.retry_condition_fn is mine
    mine_dir, ours_dir = tmp_path / "mine", tmp_path / "ours"
    mine_dir.mkdir()
    ours_dir.mkdir()

    @flow
    def pipeline() -> None:
        own_condition.submit(str(mine_dir)).wait()
        tether_condition.submit(str(ours_dir)).wait()

    state = pipeline(return_state=True)

    assert asked == ["ValueError"] and runs_of(mine_dir) == 1  # the user's condition decided, once
    assert runs_of(ours_dir) == 1
    messages = flow_run_logs(state.state_details.flow_run_id)
    assert any(
        m.startswith("tether: not retrying fail_with_value_error: ValueError is not a tether error marked retryable")
        for m in messages
    ), messages


FLOW = """
import sys
from pathlib import Path

from prefect import flow
from prefect.runtime import flow_run

import remote_steps
from tether.providers.prefect import tether_task


@tether_task(service=remote_steps.wait_for_release, cluster="flow-retry")
def wait(marker_dir: str) -> str: ...


@flow
def retried(marker_dir: str) -> str:
    Path(marker_dir, "flow_run_id").write_text(flow_run.id)
    return wait(marker_dir)


if __name__ == "__main__":
    retried(sys.argv[1])
"""


def test_a_flow_run_retried_after_its_process_died_reattaches(
    steps: ModuleType, cluster: Any, markers: Path, tmp_path: Path
) -> None:
    """The flow-run process is killed mid-call (an OOM-killed pod, a lost VM); the call keeps running on the
    cluster. ``prefect flow-run retry`` runs the flow run again in a new process: its task re-attaches to that
    call instead of paying for it twice, and records the call's own duration."""
    TetherCluster(endpoint=cluster.endpoint, token=cluster.token).save("flow-retry", overwrite=True)
    flow_file = tmp_path / "retried_flow.py"
    flow_file.write_text(textwrap.dedent(FLOW))
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": os.pathsep.join([str(Path(steps.__file__).parent), os.environ.get("PYTHONPATH", "")]),
    }

    first = subprocess.Popen([sys.executable, str(flow_file), str(markers)], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: (markers / "started").exists(), "the remote call to start")
        started = time.monotonic()
        time.sleep(0.5)  # the flow run's log lines reach the API
    finally:
        first.send_signal(signal.SIGKILL)  # no cancel, no final state: the process is gone
        first.wait(30)
    flow_run_id = (markers / "flow_run_id").read_text()
    with get_client(sync_client=True) as client:  # what Prefect's crash detection records for a lost process
        client.set_flow_run_state(UUID(flow_run_id), Crashed(message="process killed"), force=True)
    (first_id,) = [m.rsplit("(call id ", 1)[1].rstrip(")") for m in flow_run_logs(flow_run_id) if "(call id " in m]
    assert tether.runs.call_state(first_id, cluster) is CallState.RUNNING  # the orphaned call still runs

    log = tmp_path / "retry.log"
    with log.open("w") as out:
        retry = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "flow-run", "retry", flow_run_id,
             "--entrypoint", f"{flow_file}:retried"],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        # released once the retry re-attached, or once it started a second run (which the test then reports)
        wait_until(lambda: runs_of(markers) > 1 or any("re-attaching" in m for m in flow_run_logs(flow_run_id)),
                   "the retry to re-attach or run again", timeout=120)
        time.sleep(0.3)
        (markers / "release").touch()
        released = time.monotonic()
        assert retry.wait(120) == 0, log.read_text()
    finally:
        (markers / "release").touch()
        if retry.poll() is None:
            retry.kill()

    assert runs_of(markers) == 1, log.read_text()  # the function ran once: the retry did not pay twice
    messages = flow_run_logs(flow_run_id)
    assert f"tether: re-attaching wait_for_release to its running call (call id {first_id})" in messages
    (done,) = [m for m in messages if m.startswith("tether: wait_for_release done:")]
    seconds = float(re.search(r" in ([0-9.]+) s, call id", done).group(1))  # type: ignore[union-attr]
    assert seconds >= released - started - 0.5, done  # the call's own duration, not the retry's wait
    assert done.endswith("(re-attached)")
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(UUID(flow_run_id)).state.is_completed()
