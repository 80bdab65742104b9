"""RunhouseOperator in real DAGs (dag.test()): result as XCom, call id pushed, templating, saved services."""

from __future__ import annotations

from pathlib import Path

import pytest

import tether
from examples.services.embed import embed

FNS = "af_remote_fns"  # airflow_fns.py, deployed from its own code root (conftest)


def test_result_is_the_return_value_xcom_and_the_call_id_is_pushed(
    run_operator, cluster, tmp_path: Path, capfd
) -> None:
    ledger = tmp_path / "ledger"
    result = run_operator(
        "op_result", "double", function=f"{FNS}:count_run", args=[str(ledger), 21], cluster=cluster.name
    )

    assert result.state == "success"
    xcom = result.xcoms["double"]
    assert xcom["return_value"] == 42
    assert xcom["call_id"].startswith("run-")  # deterministic: see test_identity.py for when it changes
    assert xcom["tether"]["call_id"] == xcom["call_id"]
    assert xcom["tether"]["reattached"] is False and xcom["tether"]["seconds"] >= 0
    assert xcom["tether"]["service"] == "count_run"
    assert ledger.read_text().count("ran") == 1
    out = capfd.readouterr()
    task_log = out.out + out.err
    assert "count_run: doubling 21" in task_log  # remote print, re-emitted in the task log
    assert "count_run: logged from the remote worker" in task_log  # remote logging record


def test_args_and_kwargs_are_templated_for_a_saved_service(dag_run, cluster) -> None:
    tether.function(embed).to(cluster, name="embed").save()
    result = dag_run(
        """
        import pendulum
        from airflow.sdk import DAG
        from tether.providers.airflow import RunhouseOperator

        with DAG(
            "op_templated",
            schedule=None,
            start_date=pendulum.datetime(2024, 1, 1),
            params={"dim": 4},
            render_template_as_native_obj=True,
        ) as dag:
            RunhouseOperator(
                task_id="embed",
                service="embed",
                args=["{{ dag_run.conf['text'] }}"],
                kwargs={"dim": "{{ params.dim }}"},
            )
        """,
        "op_templated",
        run_conf={"text": "hello airflow world"},
    )

    assert result.state == "success"
    assert result.xcoms["embed"]["return_value"] == embed("hello airflow world", dim=4)


def test_mapped_tasks_get_one_call_id_per_map_index(dag_run, cluster, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    result = dag_run(
        f"""
        import pendulum
        from airflow.sdk import DAG
        from tether.providers.airflow import RunhouseOperator

        with DAG("op_mapped", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
            RunhouseOperator.partial(task_id="double", function="{FNS}:count_run", cluster={cluster.name!r}).expand(
                args=[[{str(ledger)!r}, n] for n in (1, 2, 3)]
            )
        """,
        "op_mapped",
    )

    assert result.state == "success"
    assert ledger.read_text().count("ran") == 3
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as s:
        rows = s.scalars(
            select(XComModel).where(XComModel.dag_id == "op_mapped", XComModel.key == "call_id")
        ).all()
        ids = {x.map_index: XComModel.deserialize_value(x) for x in rows}
    assert sorted(ids) == [0, 1, 2] and len(set(ids.values())) == 3  # one call per map index


def test_operator_needs_exactly_one_target() -> None:
    from tether.providers.airflow import RunhouseOperator

    with pytest.raises(tether.ConfigError):
        RunhouseOperator(task_id="neither")
    with pytest.raises(tether.ConfigError):
        RunhouseOperator(task_id="both", service="embed", function="pkg.mod:fn")
