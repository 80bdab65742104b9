"""The sky backend against SkyPilot's real behaviour (issue 20): each test is one break a first real launch hit."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.sky

from sky import exceptions as sx  # noqa: E402
from sky.skylet import autostop_lib  # noqa: E402
from sky.utils import common  # noqa: E402
from sky.utils.status_lib import ClusterStatus  # noqa: E402

from tether import routing  # noqa: E402
from tether.compute.sky import SkyBackend, build_task, translate_error  # noqa: E402
from tether.errors import AuthError, CapacityError, ClusterUnavailable, ConfigError  # noqa: E402
from tether.specs import ClusterSpec, build  # noqa: E402

from .fake import FakeDaemon, FakeSky  # noqa: E402


@pytest.fixture
def wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    w = tmp_path / "tether-0.1.0-py3-none-any.whl"
    w.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setenv("TETHER_WHEEL", str(w))
    monkeypatch.setenv("TETHER_SKY_HEALTH_TIMEOUT", "3")
    return w


@pytest.fixture
def cloud(sky_home: Path, wheel: Path, tether_home: Path, monkeypatch: pytest.MonkeyPatch) -> FakeSky:
    fake = FakeSky().install(monkeypatch)
    FakeDaemon(fake).install(monkeypatch)
    return fake


def state(tether_home: Path, name: str) -> dict | None:
    p = tether_home / "clusters" / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


# 1 -------------------------------------------------------------------------------------------------------------
def test_the_node_venv_is_made_by_uv_with_the_clients_python_not_the_images_python3(cloud, tether_home):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30)
    SkyBackend().up(spec)  # the image's python3 is 3.10: a venv of it cannot install tether
    (setup,) = cloud.nodes["a10"].setups
    assert '"$HOME/.local/bin/uv"' in setup
    assert f"--python {sys.version_info.major}.{sys.version_info.minor}" in setup
    assert state(tether_home, "a10")["candidate"]


def test_a_failing_setup_tears_the_new_cluster_down_and_leaves_no_state(cloud, tether_home):
    cloud.setup_fails = "error: Failed to fetch: `https://pypi.org/simple/cloudpickle/`"
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30)
    with pytest.raises(ClusterUnavailable) as info:
        SkyBackend().up(spec)
    assert "Failed to fetch" in str(info.value) and info.value.details["step"] == "setup"
    assert cloud.downs == ["a10"] and "a10" not in cloud.nodes  # nothing left billing
    assert state(tether_home, "a10") is None
    assert len(cloud.launches) == 1  # a broken setup is not a reason to try another region


def test_a_cluster_whose_teardown_fails_after_a_failed_launch_is_recorded_for_teardown(cloud, tether_home,
                                                                                        monkeypatch):
    cloud.setup_fails = "boom"
    real_down = cloud._do_down
    monkeypatch.setattr(cloud, "_do_down", lambda a: (_ for _ in ()).throw(sx.CloudError("api", "aws", "Throttled")))
    spec = ClusterSpec(name="a10", instance_type="A10G:1")
    with pytest.raises(ClusterUnavailable):
        SkyBackend().launch(spec)
    st = state(tether_home, "a10")
    assert st is not None and st["backend"] == "sky" and "Throttled" in st["cleanup_failed"]
    monkeypatch.setattr(cloud, "_do_down", real_down)
    SkyBackend().down(spec)
    assert "a10" not in cloud.nodes and state(tether_home, "a10") is None


# 2 -------------------------------------------------------------------------------------------------------------
def test_health_is_retried_until_the_submitted_daemon_answers(cloud, tether_home):
    cloud.daemon_start_probes = 3  # launch returned when the job was submitted; the daemon imports for a while
    handle = SkyBackend().up(ClusterSpec(name="a10", instance_type="A10G:1"))
    assert handle.endpoint.startswith("http://127.0.0.1:")
    assert cloud.nodes["a10"].probes == 4


# 3 -------------------------------------------------------------------------------------------------------------
def _wrapped(cause: Exception) -> sx.ResourcesUnavailableError:
    return sx.ResourcesUnavailableError("Failed to provision all possible launchable resources.",
                                        failover_history=[cause])  # fmt: skip


def test_errors_are_classified_by_the_failover_history(sky_home):
    assert isinstance(translate_error(_wrapped(sx.CloudUserIdentityError("no creds")), "x"), AuthError)
    assert isinstance(translate_error(_wrapped(sx.NoCloudAccessError("none")), "x"), AuthError)
    assert isinstance(translate_error(_wrapped(sx.InvalidClusterNameError("bad")), "x"), ConfigError)
    assert isinstance(translate_error(_wrapped(sx.NotSupportedError("spot")), "x"), ConfigError)
    assert isinstance(translate_error(_wrapped(sx.ProvisionUnsupportedError("no")), "x"), ConfigError)
    capacity = translate_error(_wrapped(sx.ResourcesUnavailableError("Failed to acquire resources")), "x")
    assert isinstance(capacity, CapacityError)
    assert translate_error(sx.ResourcesUnavailableError("no GPUs"), "x").__class__ is CapacityError


def test_cheapest_without_credentials_ends_in_auth_error_not_cluster_unavailable(cloud, tether_home):
    cloud.no_auth = {"aws", "gcp", "lambda", "azure"}
    with pytest.raises(AuthError):
        SkyBackend().launch(ClusterSpec(name="a10", instance_type="A10G:1", provider="cheapest"))
    clouds_tried = [x["where"][0] for x in cloud.launches]
    assert len(clouds_tried) == len(set(clouds_tried))  # one try per cloud, not every region of it


def test_clouds_sky_check_did_not_enable_are_auth_errors_one_try_each(cloud, tether_home):
    cloud.not_enabled = {"aws", "gcp", "azure"}
    plan_clouds = {c.cloud for c in routing.plan(ClusterSpec(name="x", instance_type="A10G:1",
                                                             provider="cheapest")).candidates}  # fmt: skip
    cloud.not_enabled = plan_clouds
    with pytest.raises(AuthError):
        SkyBackend().launch(ClusterSpec(name="a10", instance_type="A10G:1", provider="cheapest"))
    tried = [x["where"][0] for x in cloud.launches]
    assert sorted(tried) == sorted(plan_clouds)


def test_an_unsupported_feature_does_not_fail_over(cloud, tether_home, monkeypatch):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", provider="aws")

    def refuse(a):
        raise _wrapped(sx.NotSupportedError("The following features are not supported by AWS: image_id"))

    monkeypatch.setattr(cloud, "_do_launch", refuse)
    with pytest.raises(ConfigError):
        SkyBackend().launch(spec)
    assert state(tether_home, "a10") is None and cloud.downs == []  # refused before anything ran


# 4 -------------------------------------------------------------------------------------------------------------
def test_autostop_on_kubernetes_is_an_autodown(cloud, tether_home):
    spec = ClusterSpec(name="k", instance_type="A10G:1", provider=["k8s/lab"], autostop_mins=20)
    SkyBackend().up(spec)
    (launch,) = cloud.launches
    assert launch["down"] is True and cloud.nodes["k"].to_down is True
    SkyBackend().autostop(spec, 10)
    assert cloud.daemon_autostop == [10] and cloud.autostops == [("k", 1, True)]  # one clock: the daemon's


def test_stop_where_it_is_not_supported_is_a_config_error(cloud, tether_home):
    spec = ClusterSpec(name="k", instance_type="A10G:1", provider=["k8s/lab"])
    SkyBackend().up(spec)
    with pytest.raises(ConfigError, match="cannot be stopped"):
        SkyBackend().stop(spec)


# 5 / 6 ---------------------------------------------------------------------------------------------------------
def test_the_tunnel_uses_credentials_from_the_api_server_and_skypilots_ssh_port(cloud, tether_home):
    cloud.ssh_port = 10022  # e.g. a probed pod port; SkyPilot's alias lives only where its API server runs
    SkyBackend().up(ClusterSpec(name="a10", instance_type="A10G:1"))
    target = cloud.tunnels[-1]
    argv = target.ssh_argv("true")
    assert "-p" not in argv and target.config_file
    config = Path(target.config_file).read_text()
    assert "HostName 203.0.113.7" in config and "Port 10022" in config and "User ubuntu" in config
    key = Path(target.config_file).with_name("key")
    assert key.read_text().startswith("-----BEGIN OPENSSH") and key.stat().st_mode & 0o077 == 0
    assert any(c["_include_credentials"] for c in cloud.status_calls)
    assert target.host == "tether-sky-a10"


def test_a_docker_image_is_reached_through_the_vm(cloud, tether_home):
    cloud.docker_user = "root"
    SkyBackend().up(ClusterSpec(name="d", instance_type="A10G:1", image_id="docker:pytorch/pytorch"))
    config = Path(cloud.tunnels[-1].config_file).read_text()
    assert "HostName localhost" in config and "Port 10022" in config and "User root" in config
    assert "-W %h:%p ubuntu@203.0.113.7" in config


# 7 -------------------------------------------------------------------------------------------------------------
def test_up_asks_the_cloud_and_restarts_a_cluster_that_autostopped(cloud, tether_home):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30)
    SkyBackend().up(spec)
    cloud.cloud_stops("a10")  # SkyPilot's table still says UP
    SkyBackend().up(spec)
    assert cloud.nodes["a10"].status == ClusterStatus.UP and len(cloud.nodes["a10"].jobs) == 2
    # every decision is taken on the cloud's answer; only fetching the ssh credentials reads SkyPilot's table
    assert all(c["refresh"] == common.StatusRefreshMode.FORCE for c in cloud.status_calls if not c["_include_credentials"])


# 8 -------------------------------------------------------------------------------------------------------------
def test_a_dead_daemon_on_a_running_cluster_is_run_again(cloud, tether_home, monkeypatch):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30)
    SkyBackend().up(spec)
    cloud.daemon_dies("a10")
    monkeypatch.setenv("TETHER_SKY_HEALTH_TIMEOUT", "30")
    monotonic = __import__("time").monotonic
    began = monotonic()
    SkyBackend().up(spec)
    assert cloud.daemon_checks == 1 and monotonic() - began < 15  # seen dead over ssh: no long /health wait
    ((name, task),) = cloud.execs
    assert name == "a10" and cloud.cancels[-1] == "a10" and "-m tether.daemon" in task.run
    assert task.setup is None and cloud.nodes["a10"].daemon_alive


def test_one_idle_clock_the_daemons(cloud, tether_home):
    SkyBackend().up(ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30))
    (launch,) = cloud.launches
    assert "--autostop-mins 30" in launch["task"].run
    # SkyPilot stops the cluster a minute after the daemon's job ended, counting jobs only (the tunnel is ssh)
    assert launch["idle_minutes_to_autostop"] == 1
    assert launch["wait_for"] == autostop_lib.AutostopWaitFor.JOBS and launch["down"] is False


# 9 -------------------------------------------------------------------------------------------------------------
def test_a_relaunch_ships_and_installs_the_new_code(cloud, tether_home, wheel):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", autostop_mins=30)
    backend = SkyBackend()
    backend.up(spec)
    backend.stop(spec)
    wheel.write_bytes(_zip_with(b"new code"))  # same file name, new content
    backend.up(spec)
    node = cloud.nodes["a10"]
    assert len(node.setups) == 2 and node.setups[0] != node.setups[1]
    assert "--reinstall-package tether" in node.setups[1]
    assert len(set(node.file_mounts)) == 2  # the new wheel went to a new path


def test_a_running_cluster_gets_the_new_code_on_up(cloud, tether_home, wheel):
    spec = ClusterSpec(name="a10", instance_type="A10G:1")
    SkyBackend().up(spec)
    wheel.write_bytes(_zip_with(b"newer"))
    SkyBackend().up(spec)
    assert len(cloud.nodes["a10"].setups) == 2 and cloud.cancels == ["a10"]


def _zip_with(data: bytes) -> bytes:
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("tether/__init__.py", data)
    return buf.getvalue()


# 10 ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fields", [{"name": "1st"}, {"name": "gpu-"}, {"name": "a10", "autostop_mins": 0.5},
                                    {"name": "a10", "autostop_mins": -3}])  # fmt: skip
def test_what_skypilot_rejects_is_rejected_when_the_cluster_is_described(fields):
    with pytest.raises(ConfigError):
        build(ClusterSpec, {"instance_type": "A10G:1", **fields})
    local = {k: v for k, v in fields.items() if k != "name"}
    build(ClusterSpec, {"name": "1st", **local} if local.get("autostop_mins", 0) >= 0 else {"name": "1st"})


def test_down_and_stop_of_a_cluster_that_vanished_clean_up_tethers_state(cloud, tether_home):
    spec = ClusterSpec(name="a10", instance_type="A10G:1")
    SkyBackend().up(spec)
    del cloud.nodes["a10"]  # deleted in the console / autodowned
    SkyBackend().down(spec)
    assert state(tether_home, "a10") is None
    SkyBackend().up(spec)
    del cloud.nodes["a10"]
    SkyBackend().stop(spec)
    assert state(tether_home, "a10") is None


def test_disk_size_image_and_ports_reach_skypilots_resources(sky_home, wheel):
    spec = ClusterSpec(name="a10", instance_type="A10G:1", disk_size=64, image_id="docker:ubuntu:22.04",
                       ports=[8080, "9000-9001"])  # fmt: skip
    (res,) = list(build_task(spec, routing.plan(spec).candidates[0], wheel=wheel, token=None).resources)
    assert res.disk_size == 64 and res.image_id and res.ports == ["8080", "9000-9001"]


def test_a_kubernetes_pod_is_reached_through_the_api_servers_websocket(cloud, tether_home):
    SkyBackend().up(ClusterSpec(name="k", instance_type="A10G:1", provider=["k8s/lab"]))
    config = Path(cloud.tunnels[-1].config_file).read_text()
    assert "websocket_proxy.py" in config and "kubernetes-pod-ssh-proxy" in config and " k " in config
