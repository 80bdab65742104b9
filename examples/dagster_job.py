"""The ``embed`` service called unchanged from a Dagster asset through ``TetherResource``.

The service is deployed and saved once (as an IDE-style script would: ``tether.function(embed).to(c).save()``);
the asset only names it. Remote prints and log records appear in the run's log, and the materialization carries
the call's service, version, call id, instance type, duration and attempts.

Run: python examples/dagster_job.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

import tether  # noqa: E402
from examples.services.embed import embed  # noqa: E402
from tether.providers.dagster import TetherResource  # noqa: E402

DOCS = ["research code is production code", "call it from anywhere", "compute you own"]


@dg.asset
def documents() -> list[str]:
    """The texts to embed (a stand-in for an upstream table)."""
    return DOCS


@dg.asset
def embeddings(
    context: dg.AssetExecutionContext, documents: list[str], tether: TetherResource
) -> list[list[float]]:
    """One remote call per document; each gets its own deterministic call id, so a retry re-attaches."""
    return [tether.call(context, "embed", text) for text in documents]


defs = dg.Definitions(assets=[documents, embeddings], resources={"tether": TetherResource()})


def deploy_once() -> tether.Cluster | None:
    """Save ``embed`` on a local cluster unless it is saved already; returns the cluster if this script made it."""
    try:
        tether.function(name="embed")
        return None
    except tether.NotFound:
        cluster = tether.cluster(name="examples").up_if_not()
        tether.function(embed).to(cluster, name="embed").save()
        return cluster


def main() -> None:
    made = deploy_once()
    try:
        result = dg.materialize([documents, embeddings], resources={"tether": TetherResource()})
        assert result.success
        vectors = result.output_for_node("embeddings")
        (mat,) = result.asset_materializations_for_node("embeddings")
        for key, value in sorted(mat.metadata.items()):
            if key.startswith("tether/"):
                print(f"{key} = {value.value}")
        print(f"embedded {len(vectors)} documents into {len(vectors[0])} dims; dagster example OK")
    finally:
        if made is not None:
            made.teardown()


if __name__ == "__main__":
    main()
