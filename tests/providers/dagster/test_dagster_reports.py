"""What remote code reports (tether.report) becomes the materialization's metadata and asset check results, in
real materialize() runs; the call's URL, instance type, duration and estimated cost are metadata too."""

import dagster as dg

from tether.providers.dagster import TetherResource

TRAIN = "tests.core.report_fns:train"


def test_reported_metadata_and_checks_reach_the_materialization(local_cluster, instance) -> None:
    @dg.asset(check_specs=[dg.AssetCheckSpec("enough_rows", asset="model")])
    def model(context: dg.AssetExecutionContext, tether: TetherResource) -> dg.MaterializeResult:
        return tether.run(context, TRAIN, args=(12,)).get_materialize_result()

    result = dg.materialize([model], resources={"tether": TetherResource(cluster_name=local_cluster.name)},
                            instance=instance)

    assert result.success
    (mat,) = result.asset_materializations_for_node("model")
    md = mat.metadata
    assert md["rows"].value == 12
    assert isinstance(md["model"], dg.PathMetadataValue) and md["model"].value == "s3://models/1"
    assert isinstance(md["tether/url"], dg.UrlMetadataValue)
    call_id = md["tether/call_id"].value
    assert md["tether/url"].value.endswith(f"/calls/{call_id}/logs")
    assert md["tether/instance_type"].value == "local"
    assert md["tether/price_per_hour"].value == 0.0 and md["tether/est_cost_usd"].value == 0.0
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "enough_rows" and check.passed
    assert check.metadata["rows"].value == 12


def test_an_asset_check_returns_the_reported_result(local_cluster, instance) -> None:
    @dg.asset
    def rows() -> int:
        return 3

    @dg.asset_check(asset=rows)
    def enough_rows(context: dg.AssetCheckExecutionContext, tether: TetherResource) -> dg.AssetCheckResult:
        return tether.run(context, TRAIN, args=(3,)).get_check_result("enough_rows")

    result = dg.materialize([rows, enough_rows], resources={"tether": TetherResource(cluster_name=local_cluster.name)},
                            instance=instance)

    assert result.success
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "enough_rows" and check.passed is False


def test_a_plain_call_says_the_checks_it_cannot_record(local_cluster, instance) -> None:
    @dg.asset
    def doubled(context: dg.AssetExecutionContext, tether: TetherResource) -> int:
        return tether.call(context, TRAIN, 10)

    result = dg.materialize([doubled], resources={"tether": TetherResource(cluster_name=local_cluster.name)},
                            instance=instance)

    assert result.success and result.output_for_node("doubled") == 20
    (mat,) = result.asset_materializations_for_node("doubled")
    assert mat.metadata["rows"].value == 10  # metadata still goes on the output
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("asset check(s) 'enough_rows'" in line and "; call id run-" in line for line in logs)
    assert any(line.startswith("tether: tests.core.report_fns:train finished: ran") for line in logs)
