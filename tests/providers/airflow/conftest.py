"""Airflow harness: a throwaway AIRFLOW_HOME with a migrated SQLite DB, DAG files in its dags folder, dag.test().

Airflow reads its configuration when first imported, so the environment is set here, at conftest import,
before any test module (or tether.providers.airflow) imports it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.processes import issue_tokens, registry_server

if "airflow" in sys.modules and not os.environ.get("AIRFLOW_HOME", "").startswith(tempfile.gettempdir()):
    raise RuntimeError("airflow was imported before the Airflow test harness could isolate AIRFLOW_HOME")

AIRFLOW_HOME = Path(os.environ.get("TETHER_TEST_AIRFLOW_HOME") or tempfile.mkdtemp(prefix="tether-airflow-"))
DAGS = AIRFLOW_HOME / "dags"
DAGS.mkdir(parents=True, exist_ok=True)
os.environ.update(
    AIRFLOW_HOME=str(AIRFLOW_HOME),
    AIRFLOW__CORE__DAGS_FOLDER=str(DAGS),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__UNIT_TEST_MODE="True",
    AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{AIRFLOW_HOME}/airflow.db",
    AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
)

# The functions the tests deploy get a code root of their own (a project marker, one top-level module): what
# the daemon imports then does not depend on how the repository's test folders are packaged.
CODE_ROOT = AIRFLOW_HOME / "code"
CODE_ROOT.mkdir(exist_ok=True)
(CODE_ROOT / "pyproject.toml").write_text('[project]\nname = "af-remote-fns"\nversion = "0"\n')
shutil.copyfile(Path(__file__).with_name("airflow_fns.py"), CODE_ROOT / "af_remote_fns.py")
sys.path.insert(0, str(CODE_ROOT))
FNS = "af_remote_fns"
"""Import path of the functions the tests deploy (``tests/providers/airflow/airflow_fns.py``)."""


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """Create the metadata DB once per session; yields the dags folder."""
    from airflow.utils import db

    db.initdb()
    yield DAGS
    if not os.environ.get("TETHER_TEST_AIRFLOW_HOME"):
        shutil.rmtree(AIRFLOW_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def tether_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One isolated TETHER_HOME for the Airflow tests (tasks run in this process and inherit it)."""
    home = tmp_path_factory.mktemp("tether-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TETHER_HOME", str(home))
        mp.setenv("TETHER_USER", "airflow-tests")
        mp.delenv("TETHER_REGISTRY_URL", raising=False)
        mp.delenv("TETHER_TOKEN", raising=False)
        yield home


@pytest.fixture(scope="session")
def cluster(tether_home: Path) -> Iterator[Any]:
    """The embedded local cluster every DAG in these tests calls into."""
    import tether

    c = tether.cluster(name="af-shared").up_if_not()
    try:
        yield c
    finally:
        c.down()


@dataclass
class DagResult:
    """What a finished dag.test() run left in the metadata DB."""

    state: str
    run_id: str
    xcoms: dict[str, dict[str, Any]] = field(default_factory=dict)  # task_id -> key -> value
    tries: dict[str, int] = field(default_factory=dict)  # task_id -> try_number of the last try
    states: dict[str, str] = field(default_factory=dict)  # task_id -> final state


def load_dag(source: str, dag_id: str) -> Any:
    """Write ``source`` as ``<dag_id>.py`` into the dags folder and load it like the DAG processor."""
    path = DAGS / f"{dag_id}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(f"dagfile_{dag_id}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return next(v for v in vars(module).values() if getattr(v, "dag_id", None) == dag_id)


def run_dag(source: str, dag_id: str, **test_kwargs: Any) -> DagResult:
    """Write ``source`` as ``<dag_id>.py`` into the dags folder, load it like the DAG processor, run dag.test()."""
    dr = load_dag(source, dag_id).test(**test_kwargs)
    return dag_result(dag_id, dr.run_id, str(dr.state))


def dag_result(dag_id: str, run_id: str, state: str) -> DagResult:
    """What the metadata DB holds of one DAG run: XComs, tries and states of its task instances."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    result = DagResult(state=state, run_id=run_id)
    with create_session() as s:
        for x in s.scalars(select(XComModel).where(XComModel.dag_id == dag_id, XComModel.run_id == run_id)):
            result.xcoms.setdefault(x.task_id, {})[x.key] = XComModel.deserialize_value(x)
        for ti in s.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ):
            result.tries[ti.task_id] = ti.try_number
            result.states[ti.task_id] = str(ti.state)
    return result


def clear_and_rerun(dag_id: str, run_id: str, source: str | None = None) -> DagResult:
    """Clear every task instance of a finished DAG run the way the UI's "Clear" does (Airflow's own
    ``clear_task_instances``: the same run, ``max_tries`` raised) and run them again as ``dag.test()`` runs
    tasks. ``source``: the DAG file was edited in between (the new task definitions run)."""
    from airflow import settings
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance, clear_task_instances
    from airflow.sdk.definitions.dag import _run_task
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.utils.session import create_session
    from airflow.utils.state import DagRunState, TaskInstanceState
    from sqlalchemy import select

    path = DAGS / f"{dag_id}.py"
    dag = load_dag(source if source is not None else path.read_text(), dag_id)
    with create_session() as s:
        tis = list(s.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)))
        clear_task_instances(tis, s, dag_run_state=DagRunState.RUNNING)
    session = settings.Session()
    try:
        dr = session.scalar(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id))
        assert dr is not None
        dr.dag = DagSerialization.deserialize_dag(DagSerialization.serialize_dag(dag))
        for _ in range(100):
            if dr.state != DagRunState.RUNNING:
                break
            session.expire_all()
            schedulable, _ = dr.update_state(session=session)
            for ti in schedulable:
                ti.try_number += 1
                ti.state = TaskInstanceState.SCHEDULED
            session.commit()
            for ti in [t for t in dr.get_task_instances(session=session) if t.state == TaskInstanceState.SCHEDULED]:
                _run_task(ti=ti, task=dag.task_dict[ti.task_id])
        return dag_result(dag_id, run_id, str(dr.state))
    finally:
        session.close()


@pytest.fixture
def dag_run(airflow_db: Path) -> Any:
    """``dag_run(source, dag_id, **dag_test_kwargs) -> DagResult`` against the session's metadata DB."""
    return run_dag


def operator_dag(dag_id: str, task_id: str, **operator_kwargs: Any) -> str:
    """Source of a DAG file with one ``RunhouseOperator`` task; the keyword values must be Python literals."""
    args = "".join(f"        {key}={value!r},\n" for key, value in operator_kwargs.items())
    return (
        "import pendulum\n"
        "from airflow.sdk import DAG\n"
        "from tether.providers.airflow import RunhouseOperator\n\n"
        f"with DAG({dag_id!r}, schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:\n"
        f"    RunhouseOperator(\n        task_id={task_id!r},\n{args}    )\n"
    )


@pytest.fixture
def operator_dag_source() -> Any:
    """:func:`operator_dag` for tests (a test module cannot import ``conftest``: with several test folders in one
    run, that name is another folder's conftest)."""
    return operator_dag


@pytest.fixture
def clear_dag_run(airflow_db: Path) -> Any:
    """``clear_dag_run(dag_id, run_id, source=None) -> DagResult``: see :func:`clear_and_rerun`."""
    return clear_and_rerun


@pytest.fixture
def run_operator(airflow_db: Path) -> Any:
    """``run_operator(dag_id, task_id, **operator_kwargs) -> DagResult``: a one-task DAG through dag.test()."""

    def run(dag_id: str, task_id: str, **operator_kwargs: Any) -> DagResult:
        return run_dag(operator_dag(dag_id, task_id, **operator_kwargs), dag_id)

    return run


@pytest.fixture
def team_registry(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """``tether registry serve`` on 127.0.0.1 with a token for the Airflow deployment; yields (url, token)."""
    db = f"sqlite:///{tmp_path / 'team.db'}"
    token = issue_tokens(db, "airflow-bot")["airflow-bot"]
    with registry_server(db, tmp_path) as (url, _proc):
        yield url, token
