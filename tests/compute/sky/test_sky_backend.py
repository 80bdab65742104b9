"""The SkyPilot backend, offline: SkyPilot's real catalog, Resources and Task on the fixture; launches go to a
stand-in for the cloud behind SkyPilot's API (``sky.launch`` / ``stream_and_get`` / ``status`` / ``stop`` /
``down`` / ``autostop``), which fails with SkyPilot's own exceptions where the test says a region has none.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.sky

import sky  # noqa: E402
from sky import exceptions as sky_exceptions  # noqa: E402

from tether import catalog, routing  # noqa: E402
from tether.compute import get_backend  # noqa: E402
from tether.compute.sky import SkyBackend, build_task, translate_error  # noqa: E402
from tether.errors import AuthError, CapacityError, ClusterUnavailable, QuotaError  # noqa: E402
from tether.specs import ClusterSpec  # noqa: E402

from .fake import FakeDaemon  # noqa: E402
from .fake import FakeSky as FakeCloud  # noqa: E402


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    w = tmp_path / "tether-0.1.0-py3-none-any.whl"
    w.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setenv("TETHER_WHEEL", str(w))
    return w


def test_catalog_is_read_through_skypilot_and_matches_the_csv_reader(sky_home, monkeypatch):
    assert catalog.source() == "skypilot"
    through_sky = {o.model_dump_json() for o in catalog.offerings()}
    monkeypatch.setenv("TETHER_CATALOG_READER", "csv")
    monkeypatch.setenv("TETHER_CATALOG_DIR", str(sky_home / ".sky" / "catalogs" / "v8"))
    direct = {o.model_dump_json() for o in catalog.offerings()}
    assert len(through_sky) > 150
    assert through_sky == direct


def test_candidate_prices_are_skypilots_prices(sky_home, wheel):
    spec = ClusterSpec(name="a10", instance_type="A10G:1")
    for req in ("A10G:1", "A100:1", "L4:1", "T4:1", "H100:8"):
        plan = routing.plan(ClusterSpec(name="p", instance_type=req, backend="sky"))
        for cand in plan.candidates[:4]:
            (res,) = list(build_task(spec, cand, wheel=wheel, token=None).resources)
            assert res.get_cost(3600) == pytest.approx(cand.price_per_hour), cand.label()
            assert (str(res.cloud).lower(), res.region, res.instance_type) == (
                cand.cloud,
                cand.region,
                cand.instance_type,
            )


def test_task_ships_the_wheel_installs_it_and_runs_the_daemon(sky_home, wheel):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30, server_port=32400)
    cand = routing.plan(spec).candidates[0]
    task = build_task(spec, cand, wheel=wheel, token="s3cret")
    assert list(task.file_mounts.values()) == [str(wheel)]
    assert wheel.name in task.setup and "pip install" in task.setup
    assert "-m tether.daemon --host 127.0.0.1 --port 32400" in task.run and "--autostop-mins 30" in task.run
    assert "--token-file" in task.run and "s3cret" not in task.run
    secret = task.secrets["TETHER_TOKEN"]
    assert getattr(secret, "get_secret_value", lambda: secret)() == "s3cret"
    (res,) = list(task.resources)
    assert res.accelerators == {"A10G": 1} and res.use_spot is False


def test_capacity_error_in_one_region_fails_over_to_the_next(sky_home, wheel, tether_home, monkeypatch):
    cloud = FakeCloud(no_capacity={("aws", "us-east-1")}).install(monkeypatch)
    spec = ClusterSpec(name="a10", instance_type="A10G:1", provider="cheapest", autostop_mins=30)
    plan = SkyBackend().launch(spec)
    assert [launch["where"] for launch in cloud.launches] == [("aws", "us-east-1"), ("aws", "us-west-2")]
    assert all(launch["instance_type"] == "g5.xlarge" for launch in cloud.launches)
    # one idle clock, the daemon's (--autostop-mins 30): SkyPilot stops the cluster a minute after its job ends
    assert all(launch["idle_minutes_to_autostop"] == 1 for launch in cloud.launches)
    assert all("--autostop-mins 30" in launch["task"].run for launch in cloud.launches)
    assert [(a.outcome, a.candidate) for a in plan.attempts] == [
        ("capacity", "aws/us-east-1/g5.xlarge"),
        ("ok", "aws/us-west-2/g5.xlarge"),
    ]
    assert "Failed to acquire resources in us-east-1" in plan.attempts[0].message
    state = json.loads((tether_home / "clusters" / "a10.json").read_text())
    assert (state["region"], state["price_per_hour"]) == ("us-west-2", 1.006)
    assert SkyBackend().status(spec) == "up"


def test_quota_and_auth_failures_are_recorded_and_routed_around(sky_home, wheel, tether_home, monkeypatch):
    cloud = FakeCloud(no_auth={"lambda"}).install(monkeypatch)
    plan = SkyBackend().launch(ClusterSpec(name="a100", instance_type="A100:1"))
    lambdas = [c.label() for c in plan.candidates if c.cloud == "lambda"]
    assert len(lambdas) == 4
    assert [(a.outcome, a.candidate) for a in plan.attempts] == [
        ("auth", lambdas[0]),
        *[("skipped", x) for x in lambdas[1:]],
        ("ok", "gcp/us-central1/a2-highgpu-1g"),
    ]
    assert [x["where"][0] for x in cloud.launches] == [
        "lambda",
        "gcp",
    ]  # one try per cloud with bad credentials

    cloud.no_quota = {("gcp", "us-central1")}
    plan = SkyBackend().launch(ClusterSpec(name="a100-80", instance_type="A100-80GB:1"))
    assert [(a.outcome, a.candidate) for a in plan.attempts] == [
        ("quota", "gcp/us-central1/a2-ultragpu-1g"),
        ("ok", "gcp/us-east4/a2-ultragpu-1g"),
    ]
    assert "VcpuLimitExceeded" in plan.attempts[0].message
    assert plan.chosen is not None and plan.chosen.price_per_hour == pytest.approx(3.3177)


def test_no_capacity_anywhere_raises_cluster_unavailable(sky_home, wheel, tether_home, monkeypatch):
    FakeCloud(no_capacity={("aws", "us-east-1"), ("aws", "us-west-2")}).install(monkeypatch)
    spec = ClusterSpec(name="a10", instance_type="A10G:1", exclude_regions=[])
    with pytest.raises(ClusterUnavailable) as info:
        SkyBackend().launch(spec)
    assert not isinstance(info.value, CapacityError)
    assert all(a["outcome"] == "capacity" for a in info.value.details["attempts"])
    assert not (tether_home / "clusters" / "a10.json").exists()


def test_stop_down_and_autostop_go_through_skypilot(sky_home, wheel, tether_home, monkeypatch):
    cloud = FakeCloud().install(monkeypatch)
    FakeDaemon(cloud).install(monkeypatch)
    spec = ClusterSpec(name="c1", instance_type="CPU:4+", memory="16+")
    backend = get_backend("sky")
    assert isinstance(backend, SkyBackend)
    assert backend.status(spec) == "down"
    backend.launch(spec)
    assert backend.status(spec) == "up"
    backend.autostop(spec, 10)
    # the daemon's clock changes; SkyPilot stops the cluster a minute after the daemon's job ends
    assert cloud.daemon_autostop == [10] and cloud.autostops == [("c1", 1, False)]
    backend.autostop(spec, -1)
    assert cloud.daemon_autostop == [10, None] and cloud.autostops[-1] == ("c1", -1, False)
    backend.stop(spec)
    assert backend.status(spec) == "stopped"
    backend.down(spec)
    assert backend.status(spec) == "down" and not (tether_home / "clusters" / "c1.json").exists()


def test_skypilot_errors_map_onto_tethers_tree(sky_home):
    assert isinstance(
        translate_error(sky_exceptions.ResourcesUnavailableError("no GPUs"), "x"), CapacityError
    )
    assert isinstance(
        translate_error(sky_exceptions.ResourcesUnavailableError("quota exceeded"), "x"), QuotaError
    )
    assert isinstance(translate_error(sky_exceptions.NoCloudAccessError("none"), "x"), AuthError)
    assert translate_error(ValueError("bug"), "x") is None


def test_home_is_isolated(sky_home):
    assert os.path.expanduser("~") == str(sky_home)


def test_kubernetes_candidate_becomes_a_kubernetes_resource(sky_home, wheel, tether_home, monkeypatch):
    cloud = FakeCloud().install(monkeypatch)
    spec = ClusterSpec(name="k", instance_type="A10G:1", provider=["k8s/lab", "aws"])
    plan = SkyBackend().launch(spec)
    assert plan.chosen is not None and plan.chosen.infra == "kubernetes/lab"
    (launch,) = cloud.launches
    assert launch["where"] == ("kubernetes", "lab") and launch["accelerators"] == {"A10G": 1}


@pytest.mark.parametrize(
    "request_", ["A10G:1", "A100:1", "L4:1", "T4:1", "H100:8", "A100-80GB:1", "V100:1", "L4:4"]
)
def test_cheapest_candidate_costs_what_skypilots_optimizer_picks(sky_home, monkeypatch, request_):
    """SkyPilot's own optimizer on the fixture catalog (only its credentials check is stood in for)."""
    from sky import clouds, optimizer
    from sky.utils import common

    monkeypatch.setattr(sky.check, "get_cached_enabled_clouds_or_refresh",
                        lambda *a, **k: [clouds.AWS(), clouds.GCP(), clouds.Lambda()])  # fmt: skip
    name, count = request_.split(":")
    task = sky.Task(run="true")
    task.set_resources(sky.Resources(accelerators={name: int(count)}))
    dag = sky.Dag()
    dag.add(task)
    best = (
        optimizer.Optimizer.optimize(dag, minimize=common.OptimizeTarget.COST, quiet=True)
        .tasks[0]
        .best_resources
    )
    ours = routing.plan(ClusterSpec(name="x", instance_type=request_)).chosen
    assert ours is not None
    assert ours.price_per_hour == pytest.approx(best.get_cost(3600))
    assert (ours.cloud, ours.region) == (str(best.cloud).lower(), best.region)


def test_a_stopped_cluster_restarts_where_it_was_and_reruns_the_daemon(
    sky_home, wheel, tether_home, monkeypatch
):
    cloud = FakeCloud(no_capacity={("aws", "us-east-1")}).install(monkeypatch)
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=15)
    backend = SkyBackend()
    backend.launch(spec)
    backend.stop(spec)
    assert backend.status(spec) == "stopped"
    backend.restart(spec)
    assert backend.status(spec) == "up"
    # sky.launch on the stopped cluster: started where it was (no failover), the wheel shipped and set up again
    *_, again = cloud.launches
    (res,) = list(again["task"].resources)
    assert again["cluster"] == "a10" and (str(res.cloud).lower(), res.region, res.instance_type) == (
        "aws",
        "us-west-2",
        "g5.xlarge",
    )
    assert "--reinstall-package tether" in again["task"].setup and "-m tether.daemon" in again["task"].run
    assert again["idle_minutes_to_autostop"] == 1 and "--autostop-mins 15" in again["task"].run
    assert len(cloud.launches) == 3  # the failed us-east-1 try, the launch, the restart
    assert len(cloud.nodes["a10"].jobs) == 2


def test_a_kubernetes_namespace_reaches_skypilots_own_namespace_resolver(sky_home, wheel, tether_home):
    """``tether.kubernetes_cluster(namespace=...)``: SkyPilot's resolver (the one its Kubernetes provisioner asks)
    finds the namespace in the launch's resources, not the kubeconfig context's."""
    from sky import skypilot_config

    c = __import__("tether").kubernetes_cluster("kns", namespace="team-ml", context="lab")
    plan = routing.plan(c.spec)
    (res,) = list(build_task(c.spec, plan.candidates[0], wheel=wheel, token=None).resources)
    assert skypilot_config.get_effective_namespace(cloud="kubernetes", region="lab",
                                                   override_configs=res.cluster_config_overrides) == "team-ml"
    plain = ClusterSpec(name="kplain", instance_type="CPU:1", provider="kubernetes/lab", backend="sky")
    (res,) = list(build_task(plain, routing.plan(plain).candidates[0], wheel=wheel, token=None).resources)
    assert skypilot_config.get_effective_namespace(cloud="kubernetes", region="lab",
                                                   override_configs=res.cluster_config_overrides) is None
