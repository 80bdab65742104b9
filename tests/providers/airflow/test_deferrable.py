"""Deferrable mode: the task waits in a trigger that polls the daemon, streams logs, survives a restart."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import tether
import tether.runs
from tether.providers.airflow.triggers import TetherCallTrigger

FNS = "af_remote_fns"  # airflow_fns.py, deployed from its own code root (conftest)


def _wait_for(path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_deferred_task_returns_the_result_and_streams_remote_logs(
    run_operator, cluster, tmp_path: Path, capfd
) -> None:
    ledger = tmp_path / "ledger"
    result = run_operator(
        "deferred",
        "slow",
        function=f"{FNS}:slow_count",
        args=[str(ledger), str(tmp_path), 6],
        kwargs={"seconds": 1.0},
        cluster=cluster.name,
        deferrable=True,
        poll_interval=0.1,
    )

    assert result.state == "success"
    xcom = result.xcoms["slow"]
    assert xcom["return_value"] == 7
    assert xcom["call_id"].startswith("run-") and xcom["tether"]["call_id"] == xcom["call_id"]
    assert xcom["tether"]["seconds"] >= 0.9  # the remote call's duration (the daemon's summary)
    assert ledger.read_text().count("ran") == 1  # resuming after the trigger fetched the result, not a rerun
    out = capfd.readouterr()
    log = out.out + out.err
    for step in (1, 2, 3):  # streamed by the trigger while the task was deferred
        assert f"slow_count: step {step} of 3" in log


def _start(cluster: tether.Cluster, fn: str, *args: object, **kwargs: object) -> str:
    call_id = tether.runs.call_id_for("trigger-test", fn, *args)
    tether.runs.resolve_target(f"{FNS}:{fn}", cluster).spawn_with(args, kwargs, call_id=call_id, on_log=None)
    return call_id


def _rebuild(trigger: TetherCallTrigger) -> TetherCallTrigger:
    """What a restarted triggerer does: the class path and JSON kwargs from the DB make a new trigger."""
    from airflow.sdk._shared.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    return import_string(classpath)(**json.loads(json.dumps(kwargs)))


async def test_a_trigger_rebuilt_after_a_triggerer_restart_gets_the_same_call(
    cluster, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    call_id = _start(cluster, "slow_count", str(ledger), str(tmp_path), 1, seconds=1.5)
    first = TetherCallTrigger(call_id=call_id, cluster=cluster.config(), poll_interval=0.1)

    running = asyncio.ensure_future(anext(first.run()))
    await asyncio.to_thread(_wait_for, tmp_path / "started")
    running.cancel()  # the triggerer process goes away mid-call
    await asyncio.gather(running, return_exceptions=True)

    event = await anext(_rebuild(first).run())

    assert event.payload == {
        "status": "done",
        "call_id": call_id,
        "state": "succeeded",
        "cluster": cluster.config(),
    }
    assert ledger.read_text().count("ran") == 1
    assert tether.call(call_id, cluster, on_log=None).result(timeout=30) == 2


async def test_killing_a_deferred_task_cancels_the_remote_call(cluster, tmp_path: Path) -> None:
    call_id = _start(cluster, "wait_until_stopped", str(tmp_path), seconds=60)
    trigger = TetherCallTrigger(call_id=call_id, cluster=cluster.config(), poll_interval=0.1)
    waiting = asyncio.ensure_future(anext(trigger.run()))
    await asyncio.to_thread(_wait_for, tmp_path / "started")

    await trigger.on_kill()  # the user marked the deferred task failed

    event = await asyncio.wait_for(waiting, 30)
    assert event.payload["state"] == "cancelled"
    assert not (tmp_path / "finished").exists()


def test_a_deferred_remote_failure_fails_the_try_and_the_retry_runs_again(
    run_operator, cluster, tmp_path: Path, capfd
) -> None:
    ledger = tmp_path / "ledger"
    result = run_operator(
        "deferred_retry",
        "flaky",
        function=f"{FNS}:fail_first_time",
        args=[str(ledger)],
        cluster=cluster.name,
        deferrable=True,
        poll_interval=0.1,
        retries=1,
        retry_delay=0,
    )

    assert result.state == "success"
    assert result.tries["flaky"] == 2
    assert result.xcoms["flaky"]["return_value"] == "ok after 2 runs"
    out = capfd.readouterr()
    assert "ConnectionError: transient: the database was restarting" in out.out + out.err  # try 1's own error
