"""``@task.tether`` (registered through the provider info), ``TetherOperator``, the "Tether call" link, cost and
reports in the XCom, remote log levels, ``[operators] default_deferrable`` and ``cancel_on_kill`` — real DAG runs
through dag.test()."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether
from examples.services.embed import embed

FNS = "af_remote_fns"


def test_task_tether_runs_the_decorated_function_remotely(dag_run, cluster, tmp_path: Path, capfd) -> None:
    ledger = tmp_path / "ledger"
    result = dag_run(
        f"""
        import pendulum
        from airflow.sdk import DAG, task

        with DAG("tf_fn", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
            @task.tether(cluster={cluster.name!r})
            def double(ledger: str, value: int) -> int:
                import os
                with open(ledger, "a") as f:
                    f.write(f"ran in {{os.getpid()}}\\n")
                print(f"double: remote doubling {{value}}")
                return value * 2

            @task
            def plus_one(x: int) -> int:
                return x + 1

            plus_one(double({str(ledger)!r}, 20))
        """,
        "tf_fn",
    )

    assert result.state == "success", result
    assert result.xcoms["double"]["return_value"] == 40
    assert result.xcoms["plus_one"]["return_value"] == 41
    xcom = result.xcoms["double"]
    assert xcom["tether"]["call_id"] == xcom["call_id"]
    import os

    ran_in = ledger.read_text().split()[-1]
    assert ran_in != str(os.getpid())  # in the daemon's worker, not in the Airflow task process
    out = capfd.readouterr()
    assert "double: remote doubling 20" in out.out + out.err


def test_task_tether_with_a_saved_service_calls_it_with_the_tasks_arguments(dag_run, cluster) -> None:
    tether.function(embed).to(cluster, name="tf-embed").save()
    result = dag_run(
        """
        import pendulum
        from airflow.sdk import DAG, task

        with DAG("tf_service", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
            @task.tether(service="tf-embed", retries=1)
            def embed(text: str, dim: int = 8) -> list:
                raise AssertionError("the stub's body never runs")

            embed.expand(text=["one text", "another text"])
        """,
        "tf_service",
    )

    assert result.state == "success", result
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(select(XComModel).where(XComModel.dag_id == "tf_service", XComModel.key == "return_value"))
        values = {x.map_index: XComModel.deserialize_value(x) for x in rows}
    assert values == {0: embed("one text"), 1: embed("another text")}


def test_tether_operator_pushes_cost_reports_and_the_call_link(dag_run, cluster) -> None:
    result = dag_run(
        f"""
        import pendulum
        from airflow.sdk import DAG
        from tether.providers.airflow import TetherOperator

        with DAG("op_link", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
            TetherOperator(task_id="rows", function="{FNS}:report_rows", args=[5], cluster={cluster.name!r})
        """,
        "op_link",
    )

    assert result.state == "success"
    xcom = result.xcoms["rows"]
    meta = xcom["tether"]
    assert meta["instance_type"] == "local" and meta["price_per_hour"] == 0.0 and meta["cost"] == 0.0
    assert meta["reports"], tether.call(xcom["call_id"], cluster, on_log=None).logs()
    assert meta["reports"][0] == {"kind": "metadata", "payload": {"metadata": {"rows": 5}}}
    assert meta["url"] == f"{cluster.endpoint}/calls/{xcom['call_id']}/logs"
    assert xcom["_link_TetherCallLink"] == meta["url"]  # the "Tether call" button


def test_remote_log_levels_are_kept(run_operator, cluster, capfd) -> None:
    result = run_operator("op_levels", "levels", function=f"{FNS}:log_levels", args=[1], cluster=cluster.name)
    assert result.state == "success"
    out = capfd.readouterr()
    lines = [line for line in (out.out + out.err).splitlines() if "log_levels" in line]

    def level(text: str) -> str:
        (line,) = [x for x in lines if text in x]
        return line.split("[", 1)[1].split("]", 1)[0].strip()  # Airflow's task log: "<time> [level] message"

    assert level("log_levels: warning record") == "warning"
    assert level("log_levels: error record") == "error"
    assert level("log_levels: info record") == "info"
    assert level("log_levels: printed") == "info"


def test_default_deferrable_is_honoured(run_operator, cluster, tmp_path: Path, monkeypatch, capfd) -> None:
    monkeypatch.setenv("AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE", "true")
    ledger = tmp_path / "ledger"
    result = run_operator("op_default_deferred", "slow", function=f"{FNS}:slow_count",
                          args=[str(ledger), str(tmp_path), 1], kwargs={"seconds": 0.3}, cluster=cluster.name,
                          poll_interval=0.1)
    assert result.state == "success" and result.xcoms["slow"]["return_value"] == 2
    out = capfd.readouterr()
    assert "deferring to the triggerer (call id run-" in out.out + out.err

    from tether.providers.airflow import RunhouseOperator

    assert RunhouseOperator(task_id="d", service="x").deferrable is True
    assert RunhouseOperator(task_id="e", service="x", escalation={"ladder": ["local:1GB"]}).deferrable is False
    assert RunhouseOperator(task_id="f", service="x", deferrable=False).deferrable is False


def test_cancel_on_kill_false_leaves_the_call_running(cluster, tmp_path: Path) -> None:
    from tether.providers.airflow import RunhouseOperator

    op = RunhouseOperator(task_id="keep", function=f"{FNS}:wait_until_stopped", cancel_on_kill=False)
    handle = tether.runs.resolve_target(op.target, cluster).spawn_with((str(tmp_path),), {"seconds": 60},
                                                                       call_id="keep-running", on_log=None)
    op._call_id, op._cluster = "keep-running", cluster
    op.on_kill()
    assert handle.status()["state"] == "running"
    op.cancel_on_kill = True
    op.on_kill()
    with pytest.raises(tether.CallCancelled):
        handle.result(timeout=30)
