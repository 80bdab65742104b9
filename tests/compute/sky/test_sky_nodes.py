"""num_nodes and zones through SkyPilot (issues 15 and 20), at SkyPilot's boundary: the task and resources are
SkyPilot's own objects, the handle its real ``CloudVmRayResourceHandle`` with one IP pair per node."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.sky

from tether import routing  # noqa: E402
from tether.compute.sky import SkyBackend, build_task  # noqa: E402
from tether.errors import CapacityError  # noqa: E402
from tether.specs import ClusterSpec  # noqa: E402

from .fake import FakeDaemon, FakeSky  # noqa: E402


@pytest.fixture
def cloud(sky_home: Path, tmp_path: Path, tether_home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSky:
    w = tmp_path / "tether-0.1.0-py3-none-any.whl"
    w.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setenv("TETHER_WHEEL", str(w))
    monkeypatch.setenv("TETHER_SKY_HEALTH_TIMEOUT", "3")
    fake = FakeSky().install(monkeypatch)
    FakeDaemon(fake).install(monkeypatch)
    return fake


def test_num_nodes_goes_to_skypilot_and_every_node_comes_from_its_handle(cloud, tether_home, monkeypatch):
    import tether.compute.nodes as nodes_mod

    opened: list[tuple[str, int]] = []

    def open_tunnel(target, port, *, local_port=None, log=None, **kw):
        opened.append((target.host, port))
        return type("T", (), {"pid": 99998, "local_port": 41000 + len(opened)})()

    monkeypatch.setattr(nodes_mod, "open_tunnel", open_tunnel)
    monkeypatch.setattr(nodes_mod, "tunnel_alive", lambda pid, port: False)
    spec = ClusterSpec(name="train", instance_type="A10G:1", num_nodes=3, autostop_mins=30)
    backend = SkyBackend()
    handle = backend.up(spec)
    (launch,) = cloud.launches
    assert launch["num_nodes"] == 3 and launch["task"].num_nodes == 3
    nodes = backend.nodes(spec, handle)
    assert [n.address for n in nodes] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]  # internal IPs: MASTER_ADDR etc.
    assert nodes[0].endpoint == handle.endpoint  # the client talks to the head only
    assert [h for h, _ in opened] == ["tether-node-1", "tether-node-2"]  # the workers: through the head
    cfg = (tether_home / "clusters" / "train.nodes.ssh" / "node1.config").read_text()
    assert "HostName 10.0.0.3" in cfg and "-W %h:%p" in cfg and "tether-sky-train" in cfg


def test_one_node_by_default(cloud):
    spec = ClusterSpec(name="one", instance_type="A10G:1", autostop_mins=30)
    backend = SkyBackend()
    handle = backend.up(spec)
    assert cloud.launches[0]["num_nodes"] == 1
    (node,) = backend.nodes(spec, handle)
    assert node.address == "10.0.0.2" and node.endpoint == handle.endpoint


def test_zones_become_skypilot_resources_one_per_zone_of_the_region(cloud):
    spec = ClusterSpec(name="z", instance_type="A10G:1", provider="aws", regions=["us-east-1"],
                       zones=["us-east-1a", "us-east-1c", "us-west-2a"], autostop_mins=30)
    SkyBackend().up(spec)
    (launch,) = cloud.launches
    assert launch["zones"] == ["us-east-1a", "us-east-1c"]  # SkyPilot's any_of; the other region's zone dropped
    assert {str(r.zone) for r in launch["task"].resources} == {"us-east-1a", "us-east-1c"}


def test_a_candidate_region_without_an_allowed_zone_is_skipped_for_the_next(cloud):
    spec = ClusterSpec(name="z2", instance_type="A10G:1", provider="aws", zones=["us-west-2b"], autostop_mins=30)
    plan = routing.plan(spec)
    cand = next(c for c in plan.candidates if c.region != "us-west-2")
    with pytest.raises(CapacityError, match="none of the zones"):
        build_task(spec, cand, wheel=None, token=None)
    SkyBackend().up(spec)
    (launch,) = cloud.launches
    assert launch["where"] == ("aws", "us-west-2") and launch["zones"] == ["us-west-2b"]
