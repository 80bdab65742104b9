"""OpenLineage facets of tether tasks: the provider's listener, configured with a file transport, emits the COMPLETE
event of a real dag.test() run with the tether run facet (service, version, cluster, instance type) and the
datasets the remote code declared with ``tether.lineage.input``/``output``; and the method's own return."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tether
from tests.registry import lineage_fns

DAG_SOURCE = """
import pendulum
from airflow.sdk import DAG, task
from tether.providers.airflow import TetherOperator


def train(day: str) -> int:
    import tether

    tether.lineage.input(f"s3://lake/events/{{day}}", version=day)
    tether.lineage.input("/data/vocab.txt")
    tether.lineage.output("s3://ckpt/bert", version=7)
    tether.lineage.output("s3://ckpt/bert", version=7)  # declared twice: one dataset
    return 42


with DAG("ol_dag", schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:
    @task.tether(cluster={cluster!r})
    def prepare(day: str) -> str:
        import tether

        tether.lineage.input("gs://raw/clicks", version="v3")
        tether.lineage.output(f"file:///tmp/prepared/{{day}}")
        return day

    day = prepare("2024-01-02")
    TetherOperator(task_id="train", function=train, args=[day], cluster={cluster!r})  # a callable: not templated
    TetherOperator(task_id="pretrain", service="ol-pretrain", args=[day])  # a saved service: it has a version
"""


def _clear_openlineage_config() -> None:
    """The provider caches its configuration (functools.cache): read it again from the environment."""
    from airflow.providers.openlineage import conf

    for value in vars(conf).values():
        if callable(getattr(value, "cache_clear", None)):
            value.cache_clear()


@pytest.fixture
def openlineage_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, airflow_db: Path) -> Iterator[Path]:
    """OpenLineage's listener, on for this test only, writing its events to a file (one JSON event a line).

    The provider's plugin registers its listener only when a transport was configured when plugins were first
    loaded (once per process, possibly by another test), so the test registers a listener of its own.
    """
    from airflow.providers.openlineage.plugins.listener import OpenLineageListener
    from airflow.sdk.listener import get_listener_manager

    manager = get_listener_manager()  # plugins integrated (once per process) under the suite's configuration
    events = tmp_path / "openlineage.jsonl"
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__TRANSPORT",
                       json.dumps({"type": "file", "log_file_path": str(events), "append": True}))
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__NAMESPACE", "tether-tests")
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__EXECUTE_IN_THREAD", "True")  # no fork of the test process
    monkeypatch.setenv("AIRFLOW__OPENLINEAGE__DISABLED", "False")
    _clear_openlineage_config()
    registered = any(isinstance(p, OpenLineageListener) for p in manager.pm.get_plugins())
    listener = OpenLineageListener()
    if not registered:
        manager.add_listener(listener)
    try:
        yield events
    finally:
        if not registered:
            manager.pm.unregister(listener)
        monkeypatch.undo()
        _clear_openlineage_config()


def _complete(events: Path, task_id: str) -> dict[str, Any]:
    lines = [json.loads(line) for line in events.read_text().splitlines() if line.strip()]
    (event,) = [e for e in lines if e["eventType"] == "COMPLETE" and e["job"]["name"] == f"ol_dag.{task_id}"]
    return event


def _datasets(items: list[dict[str, Any]]) -> set[tuple[str, str, str | None]]:
    return {(d["namespace"], d["name"], d.get("facets", {}).get("version", {}).get("datasetVersion"))
            for d in items}


def test_complete_events_carry_the_tether_run_facet_and_the_declared_datasets(
        dag_run, cluster, openlineage_events: Path) -> None:
    saved = tether.function(lineage_fns.pretrain).to(cluster, name="ol-pretrain").save()
    result = dag_run(DAG_SOURCE.format(cluster=cluster.name), "ol_dag")

    assert result.state == "success", result
    assert result.xcoms["train"]["return_value"] == 42
    assert openlineage_events.exists(), "the OpenLineage listener wrote no event"

    train = _complete(openlineage_events, "train")
    assert _datasets(train["inputs"]) == {("s3://lake", "events/2024-01-02", "2024-01-02"),
                                          ("file", "/data/vocab.txt", None)}
    assert _datasets(train["outputs"]) == {("s3://ckpt", "bert", "7")}
    facet = train["run"]["facets"]["tether"]
    meta = result.xcoms["train"]["tether"]
    assert facet["cluster"] == cluster.name and meta["cluster"] == cluster.name
    assert facet["instance_type"] == "local"
    assert facet["call_id"] == result.xcoms["train"]["call_id"]
    assert facet["service"] == meta["service"] and facet["service"]
    assert facet["url"] == meta["url"] and facet["cost"] == 0.0 and facet["seconds"] == meta["seconds"]
    assert "version" not in facet  # a function deployed by the task has no saved version
    assert facet["_schemaURL"].endswith("#TetherRunFacet")

    pretrain = _complete(openlineage_events, "pretrain")  # a saved service: its name and version
    assert _datasets(pretrain["inputs"]) == {("s3://lake", "dataset", "2024-01-02")}
    assert _datasets(pretrain["outputs"]) == {("s3://ckpt", "bert", "step-3")}
    facet = pretrain["run"]["facets"]["tether"]
    assert (facet["service"], facet["version"]) == ("ol-pretrain", saved.version)
    assert (facet["cluster"], facet["instance_type"]) == (cluster.name, "local")

    prepare = _complete(openlineage_events, "prepare")  # the @task.tether form
    assert _datasets(prepare["inputs"]) == {("gs://raw", "clicks", "v3")}
    assert _datasets(prepare["outputs"]) == {("file", "/tmp/prepared/2024-01-02", None)}
    assert prepare["run"]["facets"]["tether"]["call_id"] == result.xcoms["prepare"]["call_id"]


def test_get_openlineage_facets_on_complete_returns_operator_lineage(cluster) -> None:
    from airflow.providers.common.compat.openlineage.facet import Dataset
    from airflow.providers.openlineage.extractors import OperatorLineage

    from tether.providers.airflow import TetherOperator

    op = TetherOperator(task_id="direct", function=lineage_fns.serve_bert, cluster=cluster.name)
    fn = tether.function(lineage_fns.serve_bert).to(cluster)
    result = tether.runs.run_remote(fn, ("c7", "a b c"), call_id=f"ol-direct-{id(op)}")
    op._cluster = cluster
    op._facts(result)  # what execute() does with the finished call's RunResult

    lineage = op.get_openlineage_facets_on_complete(task_instance=None)
    assert isinstance(lineage, OperatorLineage)
    assert all(isinstance(d, Dataset) for d in lineage.inputs + lineage.outputs)
    assert [(d.namespace, d.name, d.facets["version"].datasetVersion) for d in lineage.inputs] == \
        [("s3://ckpt", "bert", "c7")]
    assert [(d.namespace, d.name, d.facets) for d in lineage.outputs] == [("s3://preds", "today", {})]
    facet = lineage.run_facets["tether"]
    assert (facet.service, facet.version, facet.cluster, facet.instance_type, facet.call_id) == \
        (result.service, result.version, cluster.name, "local", result.call_id)


def test_a_task_instance_without_the_calls_facts_in_memory_reads_its_xcom() -> None:
    from tether.providers.airflow import TetherOperator

    meta = {"service": "embed", "version": 3, "cluster": "a10", "instance_type": "g5.xlarge", "call_id": "c1",
            "reports": [{"kind": "lineage", "payload": {"direction": "out", "uri": "s3://b/k", "version": None}},
                        {"kind": "metadata", "payload": {"metadata": {"rows": 1}}}]}

    class TaskInstance:  # the calls get_openlineage_facets_on_complete makes of a RuntimeTaskInstance
        task_id, map_index = "embed", -1

        def xcom_pull(self, *, task_ids: str, key: str, map_indexes: int) -> Any:
            assert (task_ids, key, map_indexes) == ("embed", "tether", -1)
            return meta

    lineage = TetherOperator(task_id="embed", service="embed").get_openlineage_facets_on_complete(TaskInstance())
    assert lineage.inputs == [] and [(d.namespace, d.name) for d in lineage.outputs] == [("s3://b", "k")]
    facet = lineage.run_facets["tether"]
    assert (facet.service, facet.version, facet.cluster, facet.instance_type) == ("embed", 3, "a10", "g5.xlarge")
