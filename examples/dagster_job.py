"""The ``embed`` service called unchanged from a Dagster asset through ``TetherResource``.

The services are deployed and saved once (as an IDE-style script would: ``tether.function(embed).to(c).save()``);
the assets only name them. Remote prints and log records appear in the run's log, and the materialization carries
the call's service, version, call id, instance type, duration, estimated cost and its URL on the daemon, plus what
the remote code reported with ``tether.report`` (metadata, and the ``unit_length`` asset check).

Run: python examples/dagster_job.py
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import dagster as dg  # noqa: E402

import tether  # noqa: E402
from examples.services.embed import embed, embed_reported  # noqa: E402
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


@dg.asset(check_specs=[dg.AssetCheckSpec("unit_length", asset="corpus_vectors")])
def corpus_vectors(
    context: dg.AssetExecutionContext, documents: list[str], tether: TetherResource
):  # noqa: ANN201 - Dagster type-checks a MaterializeResult's value against the annotation; the value is a list
    """One remote call for the corpus; what it reports (counts, the unit-length check) lands on this asset."""
    run = tether.run(context, "embed_reported", args=(documents,))
    return run.get_materialize_result(value=run.value)


defs = dg.Definitions(assets=[documents, embeddings, corpus_vectors], resources={"tether": TetherResource()})


def deploy_once() -> tether.Cluster | None:
    """Save ``embed`` on a local cluster unless it is saved already; returns the cluster if this script made it."""
    try:
        tether.function(name="embed")
        tether.function(name="embed_reported")
        return None
    except tether.NotFound:
        cluster = tether.cluster(name="examples").up_if_not()
        tether.function(embed).to(cluster, name="embed").save()
        tether.function(embed_reported).to(cluster, name="embed_reported").save()
        return cluster


def main() -> None:
    made = deploy_once()
    try:
        result = dg.materialize([documents, embeddings, corpus_vectors], resources={"tether": TetherResource()})
        assert result.success
        vectors = result.output_for_node("embeddings")
        assert result.output_for_node("corpus_vectors") == vectors
        (mat,) = result.asset_materializations_for_node("embeddings")
        for key, value in sorted(mat.metadata.items()):
            if key.startswith("tether/"):
                print(f"{key} = {value.value}")
        (corpus,) = result.asset_materializations_for_node("corpus_vectors")
        print(f"reported: documents = {corpus.metadata['documents'].value}, tokens = {corpus.metadata['tokens'].value}")
        for check in result.get_asset_check_evaluations():
            print(f"asset check {check.check_name}: {'passed' if check.passed else 'failed'}")
        print(f"embedded {len(vectors)} documents into {len(vectors[0])} dims; dagster example OK")
    finally:
        if made is not None:
            made.teardown()


if __name__ == "__main__":
    main()
