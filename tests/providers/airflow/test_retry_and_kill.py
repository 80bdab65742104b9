"""A retry re-attaches to the call the killed try started (the function runs once); a killed task cancels it."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import tether

FNS = "af_remote_fns"  # airflow_fns.py, deployed from its own code root (conftest)


class WorkerKilled(Exception):
    """Stands for the worker process dying mid-call: the try ends without Airflow calling on_kill."""


@pytest.fixture
def when_started() -> Iterator[Callable[[Path, Callable[[], None]], None]]:
    """``when_started(marker_dir, action)``: run ``action`` in a watcher thread once the remote function started."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGTERM)}

    def arm(marker_dir: Path, action: Callable[[], None]) -> None:
        def watch() -> None:
            deadline = time.monotonic() + 60
            while not (marker_dir / "started").exists():
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
            action()

        threading.Thread(target=watch, daemon=True).start()

    yield arm
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def _pushed_call_id(dag_id: str) -> str | None:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        row = s.scalars(
            select(XComModel).where(XComModel.dag_id == dag_id, XComModel.key == "call_id")
        ).first()
        return None if row is None else XComModel.deserialize_value(row)


def test_retry_reattaches_to_the_call_the_killed_try_started(
    run_operator, cluster, tmp_path: Path, when_started, capfd
) -> None:
    """The first try dies mid-call the way a lost worker does: it stops waiting, on_kill is never called.

    A SIGUSR1 handler raises in the task's (main) thread wherever it waits; before that, the watcher reads
    the call id the task pushed to XCom, which must be there before the task waits.
    """
    ledger, markers = tmp_path / "ledger", tmp_path
    seen: dict[str, object] = {}

    def die(signum: int, frame: object) -> None:
        if not seen.get("killed"):
            seen["killed"] = True
            raise WorkerKilled("worker killed mid-call")

    def kill_first_try() -> None:
        seen["call_id_before_wait"] = _pushed_call_id("retry_reattach")
        time.sleep(0.8)  # the call runs on: the retry then waits for less than the call's 2 s
        os.kill(os.getpid(), signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, die)
    when_started(markers, kill_first_try)
    result = run_operator(
        "retry_reattach",
        "slow",
        function=f"{FNS}:slow_count",
        args=[str(ledger), str(markers), 41],
        kwargs={"seconds": 2.0},
        cluster=cluster.name,
        retries=1,
        retry_delay=0,
    )

    assert seen.get("killed"), "the first try was never killed"
    expected_id = result.xcoms["slow"]["call_id"]
    assert seen["call_id_before_wait"] == expected_id  # pushed before the task started waiting
    assert result.state == "success"
    assert result.tries["slow"] == 2
    assert result.xcoms["slow"]["return_value"] == 42
    assert ledger.read_text().count("ran") == 1  # the second try got the first call's result
    metadata = result.xcoms["slow"]["tether"]
    assert metadata["seconds"] >= 1.9  # the remote call's 2 s, not the retry's shorter wait for it
    assert metadata["reattached"] is True
    out = capfd.readouterr()
    assert f"re-attaching {FNS}:slow_count to its running call (call id {expected_id})" in out.out + out.err


def test_killing_the_task_cancels_the_remote_call(
    run_operator, cluster, tmp_path: Path, when_started
) -> None:
    """Airflow kills a task with SIGTERM; the task runner calls on_kill, which cancels the remote call."""
    when_started(tmp_path, lambda: os.kill(os.getpid(), signal.SIGTERM))
    result = run_operator(
        "kill_cancels",
        "forever",
        function=f"{FNS}:wait_until_stopped",
        args=[str(tmp_path)],
        kwargs={"seconds": 60},
        cluster=cluster.name,
    )

    assert result.state == "failed"
    call_id = result.xcoms["forever"]["call_id"]
    status = tether.call(call_id, cluster).status()
    assert status["state"] == "cancelled"
    assert (tmp_path / "started").exists()
    assert not (tmp_path / "finished").exists()


def test_a_retry_after_a_remote_failure_runs_the_function_again(
    run_operator, cluster, tmp_path: Path
) -> None:
    """Re-attaching is for calls that may still succeed; a call that failed is run again under a new id."""
    ledger = tmp_path / "ledger"
    result = run_operator(
        "retry_after_failure",
        "flaky",
        function=f"{FNS}:fail_first_time",
        args=[str(ledger)],
        cluster=cluster.name,
        retries=2,
        retry_delay=0,
    )

    assert result.state == "success"
    assert result.tries["flaky"] == 2
    assert result.xcoms["flaky"]["return_value"] == "ok after 2 runs"
    assert ledger.read_text().count("ran") == 2
    rerun_id = result.xcoms["flaky"]["call_id"]
    assert rerun_id.endswith("-r1")  # the failed call's successor
    first_id = rerun_id.removesuffix("-r1")
    assert tether.call(first_id, cluster, on_log=None).status()["state"] == "failed"
