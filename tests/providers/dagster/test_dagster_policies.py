"""Escalation passes through the resource to the remote call; an endpoint + token reach a running daemon."""

from pathlib import Path

import dagster as dg
import pytest
from dagster_support import EMBED, OOM_JOBS, run_logs

import tether
from examples.services.embed import embed
from tether.providers.dagster import TetherResource


def test_oom_escalates_up_the_ladder_and_the_cleanup_policy_covers_every_rung(
    module_home: Path, instance
) -> None:
    @dg.asset
    def big(context: dg.AssetExecutionContext, tether: TetherResource) -> int:
        return tether.call(context, f"{OOM_JOBS}:allocate", 400)["mib"]

    resource = TetherResource(
        cluster_name="dg-esc",
        cluster_spec={"instance_type": "local:256MB"},
        escalation={"ladder": ["local:256MB", "local:1GB"]},
        cleanup="always",
    )
    try:
        result = dg.materialize([big], resources={"tether": resource}, instance=instance)

        assert result.output_for_node("big") == 400
        (mat,) = result.asset_materializations_for_node("big")
        md = {k: v.value for k, v in mat.metadata.items()}
        assert md["tether/attempts"] == 2
        assert md["tether/instance_type"] == "local:1GB"
        log = md["tether/attempt_log"]
        assert [(a["instance_type"], a["outcome"]) for a in log] == [
            ("local:256MB", "oom"),
            ("local:1GB", "ok"),
        ]
        rung = log[1]["cluster"]
        assert rung != "dg-esc"
        assert (
            tether.cluster(name=rung, instance_type="local:1GB").status() != "up"
        )  # torn down by the policy
        assert any(rung in line and "tore down" in line for line in run_logs(instance, result.run_id))
    finally:  # a safety net should the run fail midway: the names escalation gives its rungs
        for name, instance_type in [("dg-esc", "local:256MB"), ("dg-esc-local-1gb", "local:1GB")]:
            tether.cluster(name=name, instance_type=instance_type).down()


def test_a_malformed_escalation_policy_fails_at_resource_setup(instance) -> None:
    @dg.asset
    def never_runs(context: dg.AssetExecutionContext, tether: TetherResource) -> int:
        raise AssertionError("the step must not start")

    with pytest.raises(dg.DagsterResourceFunctionError) as info:
        dg.materialize(
            [never_runs], resources={"tether": TetherResource(escalation={"rungs": ["x"]})}, instance=instance
        )
    assert "invalid escalation policy" in str(info.value.__cause__)


def test_endpoint_and_token_reach_an_already_running_daemon(local_cluster, instance, monkeypatch) -> None:
    @dg.asset
    def via_endpoint(context: dg.AssetExecutionContext, tether: TetherResource) -> list[float]:
        return tether.call(context, EMBED, "reached by url")

    monkeypatch.setenv("DG_TEST_TETHER_TOKEN", local_cluster.token or "")
    good = TetherResource(
        endpoint=local_cluster.endpoint, token=dg.EnvVar("DG_TEST_TETHER_TOKEN"), cleanup="always"
    )
    result = dg.materialize([via_endpoint], resources={"tether": good}, instance=instance)

    assert result.output_for_node("via_endpoint") == embed("reached by url")
    assert local_cluster.status() == "up"  # an endpoint is never the resource's to tear down
    assert (
        tether.cluster(name="dagster-endpoint").status() == "down"
    )  # and no daemon was started in its place
    assert not any("tore down" in line for line in run_logs(instance, result.run_id))


def test_a_wrong_token_is_refused_by_the_daemon(local_cluster, instance) -> None:
    assert local_cluster.token, "local clusters run with auth by default"

    @dg.asset
    def refused(context: dg.AssetExecutionContext, tether: TetherResource) -> list[float]:
        return tether.call(context, EMBED, "nope")

    bad = TetherResource(endpoint=local_cluster.endpoint, token="not-the-token")
    result = dg.materialize([refused], resources={"tether": bad}, instance=instance, raise_on_error=False)

    assert not result.success
    (failure,) = result.get_step_failure_events()
    assert "AuthError" in failure.step_failure_data.error.to_string()
