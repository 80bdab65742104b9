"""Routing decisions against the real prices of the trimmed v8 catalog fixture."""

from __future__ import annotations

import csv

import pytest

from tether import routing
from tether.errors import AuthError, CapacityError, ClusterUnavailable, ConfigError, QuotaError
from tether.specs import ClusterSpec


def _spec(**kw) -> ClusterSpec:
    kw.setdefault("name", "t")
    kw.setdefault("backend", "sky")
    return ClusterSpec(**kw)


def _aws_rows(catalog_dir, acc: str, count: float) -> list[dict]:
    with (catalog_dir / "aws" / "vms.csv").open() as f:
        return [
            r
            for r in csv.DictReader(f)
            if r["AcceleratorName"] == acc and float(r["AcceleratorCount"]) == count
        ]


def test_cheapest_a10g_is_the_cheapest_fixture_row(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1", provider="cheapest"))
    best = min(float(r["Price"]) for r in _aws_rows(catalog_dir, "A10G", 1.0))
    assert plan.chosen is not None and plan.chosen.price_per_hour == best == 1.006
    assert plan.chosen.instance_type == "g5.xlarge"
    prices = [c.price_per_hour for c in plan.candidates]
    assert prices == sorted(prices)
    assert {c.accelerator_count for c in plan.candidates} == {1}
    assert any("has 4xA10G" in s.reason for s in plan.skipped)


def test_cheapest_spot_uses_spot_prices(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1", use_spot=True))
    rows = _aws_rows(catalog_dir, "A10G", 1.0)
    cheapest = min(rows, key=lambda r: float(r["SpotPrice"]))
    assert plan.chosen is not None
    assert (plan.chosen.instance_type, plan.chosen.region) == (cheapest["InstanceType"], cheapest["Region"])
    assert plan.chosen.price_per_hour == pytest.approx(float(cheapest["SpotPrice"]))


def test_cheapest_a100_goes_to_lambda_but_a_preference_list_keeps_gcp_first(catalog_dir):
    cheapest = routing.plan(_spec(instance_type="A100:1"))
    assert cheapest.chosen is not None and (cheapest.chosen.cloud, cheapest.chosen.price_per_hour) == (
        "lambda",
        1.99,
    )
    ordered = routing.plan(_spec(instance_type="A100:1", provider=["gcp", "aws"]))
    assert ordered.chosen is not None and ordered.chosen.cloud == "gcp"
    assert ordered.chosen.price_per_hour == pytest.approx(0.73948 + 2.93391)
    assert all(c.cloud in ("gcp", "aws") for c in ordered.candidates)
    assert any(s.cloud == "lambda" and "not in" in s.reason for s in ordered.skipped)


def test_preference_order_beats_price_across_clouds(catalog_dir):
    plan = routing.plan(_spec(instance_type="L4:1", provider=["gcp", "aws"]))
    clouds = [c.cloud for c in plan.candidates]
    assert clouds == sorted(clouds, key=["gcp", "aws"].index)
    gcp = [c.price_per_hour for c in plan.candidates if c.cloud == "gcp"]
    assert gcp == sorted(gcp)


def test_cpu_and_memory_filters(catalog_dir):
    plan = routing.plan(_spec(instance_type="CPU:4+", memory="32+"))
    assert plan.candidates
    assert all(c.accelerator is None and c.vcpus >= 4 and c.memory_gib >= 32 for c in plan.candidates)
    assert (plan.chosen.cloud, plan.chosen.instance_type, plan.chosen.price_per_hour) == (
        "aws",
        "m6i.2xlarge",
        0.384,
    )
    exact = routing.plan(_spec(instance_type="CPU:4", memory="16"))
    assert {c.instance_type for c in exact.candidates} >= {"m6i.xlarge", "n2-standard-4", "cpu_4x_general"}
    assert all(c.vcpus == 4 and c.memory_gib == 16 for c in exact.candidates)


def test_gpu_memory_filter_skips_small_gpus_with_a_reason(catalog_dir):
    plan = routing.plan(_spec(instance_type="A100:1", gpu_memory="80+"))
    assert plan.candidates == []
    assert all("GiB per GPU" in s.reason for s in plan.skipped if s.accelerator_count == 1)
    big = routing.plan(_spec(instance_type="H100:1", gpu_memory="80+"))
    assert big.chosen is not None and big.chosen.gpu_memory_gib == 80


def test_regions_allowed_and_denied(catalog_dir):
    denied = routing.plan(_spec(instance_type="A10G:1", exclude_regions=["us-east-1"]))
    assert {c.region for c in denied.candidates} == {"us-west-2"}
    assert any(s.reason == "region us-east-1 denied" for s in denied.skipped)
    allowed = routing.plan(_spec(instance_type="L4:1", regions=["us-east4"]))
    assert {(c.cloud, c.region) for c in allowed.candidates} == {("gcp", "us-east4")}
    assert allowed.chosen.price_per_hour == pytest.approx(0.70452)


def test_policy_object_caps_the_price(catalog_dir):
    pol = routing.RoutingPolicy(clouds=["aws"], max_price_per_hour=1.5)
    plan = routing.plan(_spec(instance_type="A10G:1"), policy=pol)
    assert [c.instance_type for c in plan.candidates] == [
        "g5.xlarge",
        "g5.xlarge",
        "g5.2xlarge",
        "g5.2xlarge",
    ]
    assert any("limit" in s.reason for s in plan.skipped)


def test_explicit_instance_type(catalog_dir):
    plan = routing.plan(_spec(instance_type="p4d.24xlarge"))
    assert {c.region for c in plan.candidates} == {"us-east-1", "us-west-2"}
    assert plan.chosen.accelerator == "A100" and plan.chosen.accelerator_count == 8


def test_plan_text_explains_choice_and_skips(catalog_dir):
    text = str(routing.plan(_spec(instance_type="A10G:1", exclude_regions=["us-west-2"])))
    assert "cheapest match" in text and "$1.0060/h" in text and "region us-west-2 denied" in text


def test_unreadable_requests_are_config_errors(catalog_dir):
    with pytest.raises(ConfigError):
        routing.plan(_spec(instance_type="A10G:one"))
    with pytest.raises(ConfigError):
        routing.plan(_spec(instance_type="A10G:1", memory="lots"))
    with pytest.raises(ConfigError):
        routing.RoutingPolicy.from_provider(42)


def test_capacity_error_fails_over_to_the_next_candidate(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1"))
    first, second = plan.candidates[0], plan.candidates[1]
    tried: list[str] = []

    def attempt(c: routing.Candidate) -> str:
        tried.append(c.label())
        if c.label() == first.label():
            raise CapacityError(f"no capacity in {c.region}")
        return c.label()

    assert routing.run_plan(plan, attempt) == second.label()
    assert tried == [first.label(), second.label()]
    assert [(a.outcome, a.candidate) for a in plan.attempts] == [
        ("capacity", first.label()),
        ("ok", second.label()),
    ]
    assert plan.chosen == second
    assert f"tried {first.label()}: capacity: no capacity in {first.region}" in str(plan)


def test_auth_error_skips_the_rest_of_that_cloud(catalog_dir):
    plan = routing.plan(_spec(instance_type="A100:1"))
    lambdas = [c for c in plan.candidates if c.cloud == "lambda"]
    assert len(lambdas) > 1 and plan.candidates[0].cloud == "lambda"

    def attempt(c: routing.Candidate) -> routing.Candidate:
        if c.cloud == "lambda":
            raise AuthError("lambda api key rejected")
        return c

    got = routing.run_plan(plan, attempt)
    assert got.cloud == "gcp" and got.instance_type == "a2-highgpu-1g"
    outcomes = [a.outcome for a in plan.attempts]
    assert outcomes == ["auth"] + ["skipped"] * (len(lambdas) - 1) + ["ok"]


def test_every_candidate_failing_raises_cluster_unavailable_with_the_attempts(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1", regions=["us-east-1"], provider="aws"))

    def attempt(c: routing.Candidate) -> None:
        raise (
            QuotaError("vCPU quota exceeded") if "2xlarge" in c.instance_type else CapacityError("none left")
        )

    with pytest.raises(ClusterUnavailable) as info:
        routing.run_plan(plan, attempt)
    assert len(info.value.details["attempts"]) == len(plan.candidates)
    assert {a["outcome"] for a in info.value.details["attempts"]} == {"capacity", "quota"}
    assert plan.chosen is None


def test_other_errors_are_not_swallowed(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1"))
    with pytest.raises(RuntimeError):
        routing.run_plan(plan, lambda c: (_ for _ in ()).throw(RuntimeError("bug")))
    assert len(plan.attempts) == 0


def test_plan_for_static_hosts_and_local(catalog_dir):
    ssh = routing.plan(ClusterSpec(name="lab", host=["10.0.0.5", "10.0.0.6"]))
    assert ssh.chosen.cloud == "ssh" and "10.0.0.5, 10.0.0.6" in ssh.chosen.reason
    assert routing.plan(ClusterSpec(name="here")).chosen.cloud == "local"


def test_kubernetes_and_ssh_pool_targets_rank_by_preference_without_a_price(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1", provider=["k8s/lab-ctx", "aws"]))
    first = plan.candidates[0]
    assert (first.cloud, first.region, first.infra, first.priced) == (
        "kubernetes",
        "lab-ctx",
        "kubernetes/lab-ctx",
        False,
    )
    assert (first.accelerator, first.accelerator_count) == ("A10G", 1)
    assert plan.candidates[1].label() == "aws/us-east-1/g5.xlarge"
    cheapest = routing.plan(
        _spec(instance_type="CPU:4+"), policy=routing.RoutingPolicy(clouds=["ssh/pool", "gcp"])
    )
    assert cheapest.candidates[-1].infra == "ssh/pool"  # no price: after every priced candidate
    assert cheapest.chosen.cloud == "gcp"


def test_only_auth_failures_raise_auth_error(catalog_dir):
    plan = routing.plan(_spec(instance_type="A10G:1"))
    with pytest.raises(AuthError) as info:
        routing.run_plan(plan, lambda c: (_ for _ in ()).throw(AuthError("aws: invalid credentials")))
    assert [a["outcome"] for a in info.value.details["attempts"]][:2] == ["auth", "skipped"]
