"""The SkyPilot backend, offline: SkyPilot's real catalog, Resources and Task on the fixture; launches go to a
stand-in for the cloud behind SkyPilot's API (``sky.launch`` / ``stream_and_get`` / ``status`` / ``stop`` /
``down`` / ``autostop``), which fails with SkyPilot's own exceptions where the test says a region has none.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.sky

import sky  # noqa: E402
from sky import exceptions as sky_exceptions  # noqa: E402
from sky.utils.status_lib import ClusterStatus  # noqa: E402

from tether import catalog, routing  # noqa: E402
from tether.compute import get_backend  # noqa: E402
from tether.compute.sky import SkyBackend, build_task, translate_error  # noqa: E402
from tether.errors import AuthError, CapacityError, ClusterUnavailable, QuotaError  # noqa: E402
from tether.specs import ClusterSpec  # noqa: E402


@dataclass
class StatusRecord:
    name: str
    status: ClusterStatus


@dataclass
class FakeCloud:
    """Answers SkyPilot's client API the way a cloud would: capacity per (cloud, region), clusters by name."""

    no_capacity: set[tuple[str, str]] = field(default_factory=set)
    no_quota: set[tuple[str, str]] = field(default_factory=set)
    no_auth: set[str] = field(default_factory=set)
    launches: list[dict[str, Any]] = field(default_factory=list)
    clusters: dict[str, ClusterStatus] = field(default_factory=dict)
    autostops: list[tuple[str, int, bool]] = field(default_factory=list)
    starts: list[tuple[str, int | None]] = field(default_factory=list)
    execs: list[Any] = field(default_factory=list)

    def launch(self, task: Any, cluster_name: str | None = None, **kw: Any) -> tuple[str, Any]:
        (res,) = list(task.resources)
        where = (str(res.cloud).lower(), res.region)
        self.launches.append(
            {
                "where": where,
                "instance_type": res.instance_type,
                "accelerators": res.accelerators,
                "use_spot": res.use_spot,
                "cluster": cluster_name,
                "task": task,
                **kw,
            }
        )
        return ("launch", (cluster_name, where))

    def stream_and_get(self, request: tuple[str, Any]) -> Any:
        return self.get(request)

    def get(self, request: tuple[str, Any]) -> Any:
        op, arg = request
        if op == "launch":
            name, (cloud, region) = arg
            if cloud in self.no_auth:
                raise sky_exceptions.CloudUserIdentityError(f"{cloud}: credentials are not valid")
            if (cloud, region) in self.no_quota:
                raise sky_exceptions.ResourcesUnavailableError(
                    f"Quota exceeded in {region}: VcpuLimitExceeded"
                )
            if (cloud, region) in self.no_capacity:
                raise sky_exceptions.ResourcesUnavailableError(f"Failed to acquire resources in {region}")
            self.clusters[name] = ClusterStatus.UP
            return (1, None)
        if op == "status":
            return [StatusRecord(n, self.clusters[n]) for n in arg if n in self.clusters]
        if op == "stop":
            self.clusters[arg] = ClusterStatus.STOPPED
        if op == "start":
            self.clusters[arg] = ClusterStatus.UP
        if op == "exec":
            self.execs.append(arg)
            return (2, None)
        if op == "down":
            self.clusters.pop(arg, None)
        return None

    def install(self, mp: pytest.MonkeyPatch) -> FakeCloud:
        mp.setattr(sky, "launch", self.launch)
        mp.setattr(sky, "stream_and_get", self.stream_and_get)
        mp.setattr(sky, "get", self.get)
        mp.setattr(sky, "status", lambda names=None, **kw: ("status", names or []))
        mp.setattr(sky, "stop", lambda name, **kw: ("stop", name))
        mp.setattr(sky, "down", lambda name, **kw: ("down", name))

        def start(name: str, idle_minutes_to_autostop: int | None = None, **kw: Any) -> tuple[str, Any]:
            self.starts.append((name, idle_minutes_to_autostop))
            return ("start", name)

        mp.setattr(sky, "start", start)
        mp.setattr(sky, "exec", lambda task, cluster_name=None, **kw: ("exec", (cluster_name, task)))

        def autostop(name: str, idle: int, down: bool = False, **kw: Any) -> tuple[str, Any]:
            self.autostops.append((name, idle, down))
            return ("autostop", name)

        mp.setattr(sky, "autostop", autostop)
        return self


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
    assert all(launch["idle_minutes_to_autostop"] == 30 for launch in cloud.launches)
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
    spec = ClusterSpec(name="c1", instance_type="CPU:4+", memory="16+")
    backend = get_backend("sky")
    assert isinstance(backend, SkyBackend)
    assert backend.status(spec) == "down"
    backend.launch(spec)
    assert backend.status(spec) == "up"
    backend.autostop(spec, 10)
    assert cloud.autostops == [("c1", 10, False)]
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
    assert cloud.starts == [("a10", 15)]
    ((name, task),) = cloud.execs
    (res,) = list(task.resources)
    assert name == "a10" and (str(res.cloud).lower(), res.region, res.instance_type) == (
        "aws",
        "us-west-2",
        "g5.xlarge",
    )
    assert task.setup is None and "-m tether.daemon" in task.run
    assert len(cloud.launches) == 2  # the failed us-east-1 try and the launch; the restart launched nothing
