"""The ``embed`` service called unchanged from a Prefect flow: Prefect schedules, logs and retries; tether runs it.

The service is deployed and saved once (IDE-style: ``tether.function(embed).to(c, name="embed").save()``); the
task is a typed stub that names it. Each mapped task run gets its own call id derived from the task run, so a
retry re-attaches to its call; remote prints and log records land in the flow run's log. To call a cluster you
do not run yourself, save a ``TetherCluster`` block (endpoint + token) and pass ``cluster="<block name>"``.

Run: python examples/prefect_flow.py   (with no PREFECT_API_URL, Prefect starts a temporary local server)
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault(
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"
)  # a busy laptop starts slowly

from prefect import flow  # noqa: E402

import tether  # noqa: E402
from examples.services.embed import embed  # noqa: E402
from tether.providers.prefect import tether_task  # noqa: E402

DOCS = ["research code is production code", "call it from anywhere", "compute you own"]


@tether_task(service="embed", retries=2, retry_delay_seconds=1)
def embed_text(text: str, dim: int = 8) -> list[float]:
    """Embed one text on the cluster: a stub, the saved ``embed`` service runs it."""
    raise NotImplementedError


@flow(log_prints=True)
def embed_corpus(texts: list[str]) -> list[list[float]]:
    """One task run per text, running concurrently; retryable failures (worker died, ...) are retried."""
    vectors = embed_text.map(texts).result()
    print(f"embedded {len(vectors)} texts into {len(vectors[0])} dims")
    return vectors


def main() -> list[list[float]]:
    cluster = tether.cluster(name="examples")
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
