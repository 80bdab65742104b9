"""The Airflow harness itself: a DAG file in the dags folder runs through dag.test() and leaves its XComs."""

from __future__ import annotations

import subprocess
import sys


def test_plain_dag_runs_and_returns_its_xcom(dag_run) -> None:
    result = dag_run(
        """
        import pendulum
        from airflow.sdk import DAG, task

        with DAG("harness_plain", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
            @task
            def hello(x: int) -> dict:
                return {"x": x * 2}

            hello(21)
        """,
        "harness_plain",
    )
    assert result.state == "success"
    assert result.xcoms["hello"]["return_value"] == {"x": 42}


def _run(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_importing_tether_does_not_import_airflow() -> None:
    _run("import sys, tether, tether.runs; assert 'airflow' not in sys.modules, 'airflow imported'")


def test_the_airflow_provider_imports_without_prefect_or_dagster() -> None:
    _run(
        "import sys\n"
        "sys.modules.update(prefect=None, dagster=None)  # importing either now raises ImportError\n"
        "from tether.providers.airflow import RunhouseOperator, TetherCallTrigger, TetherHook\n"
        "from tether.providers.airflow.provider_info import get_provider_info\n"
        "assert get_provider_info()['connection-types'][0]['connection-type'] == 'tether'\n"
    )


def test_provider_info_imports_neither_airflow_nor_the_runtime() -> None:
    _run(
        "import sys\n"
        "from tether.providers.airflow.provider_info import get_provider_info\n"
        "get_provider_info()\n"
        "assert 'airflow' not in sys.modules and 'tether.runs' not in sys.modules, sorted(sys.modules)\n"
    )
