"""The ``embed`` service called unchanged from an Airflow DAG: Airflow schedules, logs and retries; tether runs it.

The service is deployed and saved once (IDE-style: ``tether.function(embed).to(c, name="embed").save()``); the
DAG only names it: ``TetherOperator`` (also known as ``RunhouseOperator``) for the mapped documents, and the
TaskFlow form ``@task.tether(service="embed")`` for the query, whose stub's parameters are the call's arguments.
Both template their arguments, push the remote call id to XCom before they wait, return the result as the XCom
``return_value`` (the call's duration, instance type, estimated cost and URL in the ``tether`` XCom, and a
"Tether call" link in the UI), and derive the call id from (dag, task, run, map index) so a retry re-attaches
to the call instead of paying for it twice. ``deferrable=True`` (or ``[operators] default_deferrable``) waits in
the triggerer instead of a worker slot. ``@task.tether(cluster=...)`` without ``service`` runs the decorated
function itself on the cluster. To call a cluster or team registry you do not run yourself, create a connection
of type ``tether`` (registry address, token, ``{"cluster": ...}`` in extra; its Test button checks the daemon and
the token) and pass ``tether_conn_id``.

Put this file in your dags folder, or run it directly:

    python examples/airflow_dag.py   (with no AIRFLOW_HOME set, it uses a throwaway one with a fresh SQLite DB)
"""

import atexit
import os
import shutil
import sys
import tempfile
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if __name__ == "__main__" and "AIRFLOW_HOME" not in os.environ:  # a self-contained demo: its own Airflow home
    _home = tempfile.mkdtemp(prefix="tether-airflow-example-")
    atexit.register(shutil.rmtree, _home, ignore_errors=True)
    os.environ.update(
        AIRFLOW_HOME=_home,
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__DAGS_FOLDER=str(Path(__file__).resolve()),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{_home}/airflow.db",
    )

import pendulum  # noqa: E402
from airflow.sdk import DAG, task  # noqa: E402

import tether  # noqa: E402
from tether.providers.airflow import TetherOperator  # noqa: E402

DOCS = ["research code is production code", "call it from anywhere", "compute you own"]

with DAG(
    "tether_embed",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1),
    params={"query": "where does my code run", "dim": 8},
    render_template_as_native_obj=True,
    default_args={"retries": 2, "retry_delay": timedelta(seconds=5)},
    tags=["tether", "example"],
) as dag:
    # One mapped task instance per document; each has its own call id (the map index is part of it).
    docs = TetherOperator.partial(task_id="embed_docs", service="embed").expand(
        args=[[text] for text in DOCS]
    )

    # TaskFlow: the stub's parameters are the call's arguments (templated from the run's params / conf); the
    # saved service runs, and the task waits in the triggerer.
    @task.tether(service="embed", deferrable=True, poll_interval=0.5)
    def embed_query(text: str, dim: int = 8) -> list[float]:
        """Embed the query with the saved ``embed`` service (the stub's body never runs)."""
        raise NotImplementedError

    query = embed_query("{{ params.query }}", dim="{{ params.dim }}")

    @task
    def rank(doc_vectors: list[list[float]], query_vector: list[float]) -> list[str]:
        """Documents by cosine similarity to the query (the vectors are unit length)."""
        scores = [sum(a * b for a, b in zip(vec, query_vector, strict=True)) for vec in doc_vectors]
        order = sorted(range(len(DOCS)), key=lambda i: -scores[i])
        for i in order:
            print(f"{scores[i]:+.3f}  {DOCS[i]}")
        return [DOCS[i] for i in order]

    rank(docs.output, query)


def deploy(cluster: tether.Cluster) -> None:
    """What the IDE-style script does once: deploy ``embed`` and save it under its name."""
    from examples.services.embed import embed

    tether.function(embed).to(cluster.up_if_not(), name="embed").save()


def main() -> None:
    from airflow.utils import db

    db.initdb()  # creates the metadata DB on first use; a no-op afterwards
    cluster = tether.cluster(name="examples")
    started_here = not cluster.is_up()
    deploy(cluster)
    try:
        run = dag.test()
        assert str(run.state) == "success", run.state
        print("airflow example OK")
    finally:
        if started_here:
            cluster.teardown()


if __name__ == "__main__":
    main()
