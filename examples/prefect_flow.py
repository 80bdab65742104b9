"""The ``embed`` service called unchanged from a Prefect flow: Prefect schedules, logs and retries; tether runs it.

Two idioms. ``TetherTaskRunner``: the flow's plain ``@task`` bodies run on the tether cluster unchanged, with
Prefect's futures, ``.map()`` and retries (a retry re-attaches to a call still running, runs again after a
failure). ``tether_task``: a typed stub that names a saved service (deployed once, IDE-style:
``tether.function(embed).to(c, name="embed").save()``). Each task run gets its own call id derived from the run;
remote prints and log records land in the flow run's log (also from plain ``tether`` calls inside a task with
``log_prints=True``), and each call leaves a link artifact with its duration, instance type and estimated cost.
To call a cluster you do not run yourself, save a ``TetherCluster`` block (endpoint + token) and pass
``cluster="<block name>"``.

Run: python examples/prefect_flow.py   (with no PREFECT_API_URL, Prefect starts a temporary local server)
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault(
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"
)  # a busy laptop starts slowly

from prefect import flow, task  # noqa: E402

import tether  # noqa: E402
from examples.services.embed import embed  # noqa: E402
from tether.providers.prefect import TetherTaskRunner, tether_task  # noqa: E402

DOCS = ["research code is production code", "call it from anywhere", "compute you own"]
CLUSTER = tether.cluster(name="examples")  # where the task bodies run (brought up on first use)


@task(retries=2, retry_delay_seconds=1)
def embed_text(text: str, dim: int = 8) -> list[float]:
    """Embed one text: an ordinary task body, run on the cluster by the flow's task runner."""
    return embed(text, dim)


@tether_task(service="embed", retries=2, retry_delay_seconds=1)
def embed_saved(text: str, dim: int = 8) -> list[float]:
    """Embed one text with the saved ``embed`` service: a stub, its body never runs."""
    raise NotImplementedError


@flow(log_prints=True, task_runner=TetherTaskRunner(cluster=CLUSTER))
def embed_corpus(texts: list[str]) -> list[list[float]]:
    """One task run per text, running concurrently on the cluster; failures are retried."""
    vectors = embed_text.map(texts).result()
    assert embed_saved(texts[0]) == vectors[0]  # the saved service gives the same vector
    print(f"embedded {len(vectors)} texts into {len(vectors[0])} dims")
    return vectors


def main() -> list[list[float]]:
    cluster = CLUSTER
    started_here = not cluster.is_up()
    tether.function(embed).to(cluster.up_if_not(), name="embed").save()  # what the IDE script does once
    try:
        vectors = embed_corpus(DOCS)
        assert vectors == [embed(text) for text in DOCS]
        print("prefect example OK")
        return vectors
    finally:
        if started_here:
            cluster.teardown()


if __name__ == "__main__":
    main()
