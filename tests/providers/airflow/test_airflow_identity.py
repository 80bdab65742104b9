"""Where a task's call runs and when it runs again: the connection decides the cluster (saved services too), no
daemon starts on the worker unasked; a Clear, new arguments or a new version run again, a retry re-attaches."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
import tether.runs
from examples.services.embed import embed
from tether.protocol import CallState

FNS = "af_remote_fns"  # airflow_fns.py, deployed from its own code root (conftest)


class WorkerKilled(Exception):
    """Stands for the worker process dying mid-call: the try ends without Airflow calling on_kill."""


@pytest.fixture(scope="module")
def other(tether_home: Path) -> Iterator[Any]:
    """A second cluster: not where the services are saved."""
    c = tether.cluster(name="af-other").up_if_not()
    try:
        yield c
    finally:
        c.down()


def _connection(monkeypatch: pytest.MonkeyPatch, conn_id: str, **fields: object) -> str:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "tether", **fields}))
    return conn_id


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


# -- where ------------------------------------------------------------------------------------------------------------
def test_a_saved_service_runs_on_the_connections_cluster(run_operator, cluster, other, monkeypatch) -> None:
    tether.function(embed).to(cluster, name="embed_where").save()  # saved on af-shared
    conn = _connection(
        monkeypatch,
        "tether_where",
        password=other.token,
        extra={"cluster": {"name": "af-other-endpoint", "endpoint": other.endpoint}},
    )

    by_conn = run_operator(
        "saved_where_conn", "embed", service="embed_where", args=["by connection"], tether_conn_id=conn
    )
    by_arg = run_operator("saved_where_arg", "embed", service="embed_where", args=["by arg"], cluster=other.name)

    for result, text in ((by_conn, "by connection"), (by_arg, "by arg")):
        assert result.state == "success"
        assert result.xcoms["embed"]["return_value"] == embed(text)
        call_id = result.xcoms["embed"]["call_id"]
        assert tether.runs.call_state(call_id, other) is CallState.SUCCEEDED  # where the connection says
        assert tether.runs.call_state(call_id, cluster) is None  # not where it was saved
        assert result.xcoms["embed"]["tether"]["version"] is not None  # the saved version, deployed there


def test_a_task_with_nowhere_to_run_fails_instead_of_starting_a_daemon_on_the_worker(
    run_operator, tether_home: Path, tmp_path: Path, monkeypatch, capfd
) -> None:
    monkeypatch.delenv("TETHER_ALLOW_LOCAL_DAEMON", raising=False)
    ledger = tmp_path / "ledger"
    embedded = tether.cluster()  # the embedded local cluster a worker used to start for itself
    assert embedded.status() == "down"

    result = run_operator("nowhere", "double", function=f"{FNS}:count_run", args=[str(ledger), 1])

    assert result.state == "failed"
    out = capfd.readouterr()
    log = out.out + out.err
    assert "ConfigError" in log and "no cluster to run" in log
    assert "tether_default" in log and "allow_local_daemon=True" in log  # which connection to set, how to opt in
    assert not ledger.exists() and embedded.status() == "down"  # nothing ran, no daemon was started

    # a saved service whose cluster is a local one that is not running here: the same
    laptop = tether.cluster(name="af-laptop").up_if_not()
    tether.function(embed).to(laptop, name="embed_laptop").save()
    laptop.down()
    result = run_operator("nowhere_saved", "embed", service="embed_laptop", args=["x"])
    assert result.state == "failed" and laptop.status() != "up"

    # opted in: the task may start the embedded local cluster on this worker
    try:
        opted = run_operator(
            "nowhere_opted_in", "double", function=f"{FNS}:count_run", args=[str(ledger), 2], allow_local_daemon=True
        )
        assert opted.state == "success" and opted.xcoms["double"]["return_value"] == 4
    finally:
        embedded.down()


# -- when it runs again -------------------------------------------------------------------------------------------------
def test_a_clear_runs_the_task_again(run_operator, clear_dag_run, cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    first = run_operator(
        "clear_reruns", "double", function=f"{FNS}:count_run", args=[str(ledger), 21], cluster=cluster.name
    )
    assert first.state == "success" and _lines(ledger) == ["ran"]

    again = clear_dag_run("clear_reruns", first.run_id)  # the UI's Clear, within the daemon's retention

    assert again.state == "success" and again.tries["double"] == 2
    assert _lines(ledger) == ["ran", "ran"]  # the function ran again: not the old result
    assert again.xcoms["double"]["return_value"] == 42
    assert again.xcoms["double"]["call_id"] != first.xcoms["double"]["call_id"]
    assert again.xcoms["double"]["tether"]["reattached"] is False


def test_reattach_run_lets_a_clear_reattach_unless_the_arguments_changed(
    dag_run, clear_dag_run, cluster, tmp_path: Path, operator_dag_source: Any
) -> None:
    operator_dag = operator_dag_source

    ledger = tmp_path / "ledger"

    def source(value: int, **options: Any) -> str:
        return operator_dag(
            "clear_reattach", "double", function=f"{FNS}:count_run", args=[str(ledger), value],
            cluster=cluster.name, reattach="run", **options,
        )

    first = dag_run(source(21), "clear_reattach")
    assert first.state == "success" and _lines(ledger) == ["ran"]

    same = clear_dag_run("clear_reattach", first.run_id)
    assert same.state == "success" and same.xcoms["double"]["return_value"] == 42
    assert _lines(ledger) == ["ran"]  # re-attached to the first call: same version, same arguments
    assert same.xcoms["double"]["call_id"] == first.xcoms["double"]["call_id"]
    assert same.xcoms["double"]["tether"]["reattached"] is True

    edited = clear_dag_run("clear_reattach", first.run_id, source=source(22))  # the DAG file was edited
    assert edited.state == "success" and edited.xcoms["double"]["return_value"] == 44
    assert _lines(ledger) == ["ran", "ran"]

    forced = clear_dag_run("clear_reattach", first.run_id, source=source(22, force_rerun=True))
    assert forced.state == "success" and _lines(ledger) == ["ran", "ran", "ran"]  # force_rerun: never re-attach


def test_a_retry_whose_arguments_changed_runs_again(run_operator, cluster, tmp_path: Path, monkeypatch) -> None:
    """The first try dies mid-call (a lost worker); before the retry renders its arguments again, the Variable
    they come from changes. The retry must not be handed the first call's result for the old arguments."""
    ledger, markers = tmp_path / "ledger", tmp_path
    monkeypatch.setenv("AIRFLOW_VAR_TETHER_ECHO", "first")
    killed: list[bool] = []

    def die(signum: int, frame: object) -> None:
        if not killed:
            killed.append(True)
            raise WorkerKilled("worker killed mid-call")

    def watch() -> None:
        deadline = time.monotonic() + 60
        while not (markers / "started").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        os.environ["AIRFLOW_VAR_TETHER_ECHO"] = "second"
        os.kill(os.getpid(), signal.SIGUSR1)

    saved = signal.signal(signal.SIGUSR1, die)
    threading.Thread(target=watch, daemon=True).start()
    try:
        result = run_operator(
            "retry_new_args",
            "echo",
            function=f"{FNS}:slow_echo",
            args=[str(ledger), str(markers), "{{ var.value.tether_echo }}"],
            cluster=cluster.name,
            retries=1,
            retry_delay=0,
        )
    finally:
        signal.signal(signal.SIGUSR1, saved)

    assert killed, "the first try was never killed"
    assert result.state == "success" and result.tries["echo"] == 2
    assert result.xcoms["echo"]["return_value"] == "echo second"
    assert _lines(ledger) == ["ran first", "ran second"]
