"""examples/airflow_dag.py, dropped into a dags folder, runs against the saved ``embed`` service."""

from __future__ import annotations

from pathlib import Path

from examples.services.embed import embed

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "airflow_dag.py"


def test_example_dag_ranks_documents_with_the_saved_service(dag_run, cluster) -> None:
    from examples.airflow_dag import DOCS, deploy

    deploy(cluster)
    result = dag_run(EXAMPLE.read_text(), "tether_embed", run_conf={"query": "call code you own"})

    assert result.state == "success"
    query_vector = embed("call code you own", dim=8)
    assert result.xcoms["embed_query"]["return_value"] == query_vector
    scores = {doc: sum(a * b for a, b in zip(embed(doc), query_vector, strict=True)) for doc in DOCS}
    assert result.xcoms["rank"]["return_value"] == sorted(DOCS, key=lambda d: -scores[d])
