"""Code written for Runhouse runs with ``import tether as rh``: each Runhouse spelling, against a real local daemon.

The calls Runhouse's tutorials (quick-start local, api-basics/compute, functions and modules, async, resources:
saving and loading, clusters, processes) make, in our words, and where each is pinned down here:

functions
    ``rh.function(fn)``, ``rh.function(fn=fn)``; ``.to(cluster)``, ``.to(system=cluster)``, ``.to(rh.here)``,
    ``.to(cluster, env=[reqs])``, ``.to(cluster, process=p)``; calling it; ``fn(..., stream_logs=False)``;
    ``fn.endpoint()``, then a GET of ``<endpoint>/call?a=1`` (query parameters as the arguments);
    ``fn.map(xs, ys)``, ``fn.starmap([(x, y), ...])``; ``rh.function(fn).get_or_to(cluster, name=...)``;
    ``fn.local(...)`` (in this process)
async
    awaiting a remote ``async def``; ``fn(..., run_async=True)`` of a sync function (a coroutine);
    ``fn(..., run_async=False)`` of an async one (the value)
modules
    ``rh.module(Cls).to(cluster)``, then ``RemoteCls(args)`` and its methods; ``rh.module(cls=Cls, system=c)``;
    ``class M(rh.Module)`` with ``super().__init__()``; ``M(a=5).to(cluster)`` (built locally, state travels);
    methods remote; attributes remote (``m.a``, ``m.remote.a``, properties); ``m.local.a`` (the local copy);
    ``m.fetch("a")``, ``m.fetch()`` (by value); ``m.resolve()`` passed into another remote call (the object
    itself arrives); ``await m.set_async("a", v)``, ``await m.fetch_async("a")``;
    ``M(...).get_or_to(cluster, name=...)``
clusters
    ``rh.cluster(name=, instance_type=, provider=, region=, autostop_mins=, use_spot=, disk_size=, open_ports=,
    image_id=)``, ``rh.cluster(gpus="A10G:1", autostop_minutes=)``; ``rh.cluster(name=, ips=[...],
    ssh_creds={"ssh_user", "ssh_private_key"})`` (a password is refused: tether connects with keys only);
    ``rh.ondemand_cluster(...)``; ``rh.kubernetes_cluster(name=, instance_type=, namespace=, context=)``;
    ``cluster.up_if_not()``, ``is_up()``, ``put(k, v)`` / ``get(k)``, ``get(name, remote=True)`` (a stub of a
    live service), ``keys()``, ``on_this_cluster()``, ``ips``, ``head_ip``, ``teardown()``, ``keep_warm()`` /
    ``keep_warm(autostop=60)``; ``ensure_process_created(name, env_vars=)`` then ``.to(cluster, process=p)``,
    ``list_processes()``; ``cluster.share(users=..., access_level=...)``
resources
    ``.save()``, ``rh.load(name)``, ``rh.cluster(name=...)`` / ``rh.function(name=...)`` by name, names
    ``~/aws_cluster`` and ``/team/name``; ``.share(users=[...], access_level=..., notify_users=False)`` (the
    teammate calls the live service with their own token), ``.revoke(users=[...])``, ``.history()``

Not carried over (the README's "Coming from Runhouse" table says why): ``rh.Package`` / ``rh.GitPackage`` /
``rh.conda_env`` / ``env.to(system)`` / ``cluster.install_packages`` (an env's ``reqs`` install into its own
venv), ``cluster.run_python``, ``cluster.ssh_tunnel``, ``rh.configs``, Den login and ``den_auth`` (a daemon
always has a token), ``vpc_name``, ``rh.folder`` / ``rh.blob``. ``cluster.run`` / ``ssh``, ``rh.Image`` and
secrets are other helpers' and tested with their areas.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
from pathlib import Path

import cloudpickle
import pytest
import requests

import tether as rh
from tests.compat import services as svc
from tether.api.compat import placement


def _auth(cluster: rh.Cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.token}"}


# -- Module subclasses -------------------------------------------------------------------------------------------
def test_module_subclass_instance_sent_with_to_runs_remotely(local_cluster):
    remote = svc.PIDModule(a=5).to(local_cluster, name="pid_module")
    pid = remote.getpid()
    assert pid - 5 != os.getpid() and remote.fetch("a") == 5  # a worker's pid, plus a
    assert remote.a == 5 and remote.doubled == 10  # attributes and properties read on the remote object
    assert remote.remember("x") == 1 and remote.remember("y") == 2
    assert remote.remote.seen == ["x", "y"]


def test_module_subclass_state_set_locally_travels_with_to(local_cluster):
    local = svc.PIDModule(a=1)
    local.seen.append("before")
    local.a = 7  # state changed after __init__ is what the remote object starts with
    remote = local.to(local_cluster, name="pid_state")
    assert remote.a == 7 and remote.remote.seen == ["before"]
    assert remote.remember("after") == 2
    assert local.seen == ["before"]  # the local object is not the remote one
    assert remote.local.seen == ["before"] and remote.local.a == 7


def test_module_subclass_with_an_inherited_init(local_cluster):
    remote = svc.NamedModule("hello").to(local_cluster, name="named_module")
    assert remote.shout() == "HELLO" and remote.label == "hello"


def test_module_subclass_state_that_cannot_travel_is_named(local_cluster):
    local = svc.PIDModule(a=1)
    local.lock = threading.Lock()
    with pytest.raises(rh.SerializationError, match="'lock'") as err:
        local.to(local_cluster, name="pid_lock")
    assert err.value.details["attributes"] == ["lock"] and err.value.hint


def test_module_subclass_through_the_module_factory(local_cluster):
    RemotePID = rh.module(svc.PIDModule).to(local_cluster, name="PIDModule")
    inst = RemotePID(a=3, name="pid_from_class")
    assert inst.getpid() - 3 != os.getpid() and inst.a == 3


def test_module_wrapping_a_class_still_works(local_cluster):
    RCounter = rh.Module(svc.Counter).to(local_cluster)
    ctr = RCounter(start=2, name="wrapped_counter")
    assert ctr.incr() == 3


def test_module_factory_with_cls_and_system_keywords(local_cluster):
    RCounter = rh.module(cls=svc.Counter, system=local_cluster)
    assert RCounter(start=1, name="kw_counter").incr(by=4) == 5


# -- functions and modules: local, fetch, resolve, set_async, get_or_to -----------------------------------------
def test_local_runs_in_this_process(local_cluster):
    remote = rh.function(fn=svc.get_pid).to(system=local_cluster)
    assert remote.local() == os.getpid() and remote() != os.getpid()


def test_fetch_returns_remote_state_by_value(local_cluster):
    ctr = rh.module(svc.Counter).to(local_cluster)(start=10, name="fetched")
    ctr.incr(by=5)
    assert ctr.fetch("n") == 15
    whole = ctr.fetch()
    assert isinstance(whole, svc.Counter) and whole.n == 15
    whole.n = 0  # a copy: the remote object is unchanged
    assert ctr.remote.n == 15


def test_resolve_passes_the_object_not_its_handle(local_cluster):
    ctr = rh.module(svc.Counter).to(local_cluster)(start=4, name="resolved")
    ctr.incr()
    total = rh.function(svc.counter_total).to(local_cluster)
    assert total(ctr.resolve()) == 5


def test_set_async_sets_a_remote_attribute(local_cluster):
    ctr = rh.module(svc.Counter).to(local_cluster)(start=0, name="set_async")
    asyncio.run(ctr.set_async("n", 41))
    assert ctr.incr() == 42
    assert asyncio.run(ctr.fetch_async("n")) == 42
    calls_async = rh.function(svc.add).to(local_cluster).set_async(True)
    assert asyncio.run(calls_async(1, 2)) == 3


def test_set_async_refuses_private_names(local_cluster):
    ctr = rh.module(svc.Counter).to(local_cluster)(start=0, name="set_private")
    with pytest.raises(rh.ConfigError):
        ctr.set_async("_secret", 1)


def test_get_or_to_reuses_the_live_service(local_cluster):
    first = svc.PIDModule(a=2).get_or_to(local_cluster, name="pid_get_or_to")
    first.remember("kept")
    again = svc.PIDModule(a=99).get_or_to(local_cluster, name="pid_get_or_to")
    assert again.a == 2 and again.remote.seen == ["kept"]  # the running one, not a new one
    fn = rh.function(svc.add).get_or_to(local_cluster, name="add_get_or_to")
    assert fn(1, 2) == 3
    assert rh.function(svc.get_pid).get_or_to(local_cluster, name="add_get_or_to")(4, 5) == 9


# -- map / starmap ------------------------------------------------------------------------------------------------
def test_map_and_starmap_keep_the_order(local_cluster):
    radd = rh.function(svc.add).to(local_cluster)
    assert radd.map([1, 2, 3], [10, 20, 30]) == [11, 22, 33]
    assert radd.starmap([(1, 2), ("a", "b"), ([1], [2])]) == [3, "ab", [1, 2]]
    assert radd.map([], []) == []


def test_map_calls_run_concurrently(local_cluster, tmp_path):
    meet = rh.function(svc.rendezvous).to(local_cluster)
    folder = tmp_path / "meet"
    folder.mkdir()
    assert meet.map([str(folder)] * 4, [4] * 4, range(4)) == [0, 1, 2, 3]  # all four were inside at once
    shutil.rmtree(folder)
    folder.mkdir()
    assert meet.starmap([(str(folder), 3, i) for i in range(3)]) == [0, 1, 2]


def test_map_raises_the_first_failure(local_cluster):
    radd = rh.function(svc.add).to(local_cluster)
    with pytest.raises(TypeError):
        radd.map([1, "x"], [1, 2])


# -- endpoints and GET calls ------------------------------------------------------------------------------------
def test_endpoint_and_get_with_query_parameters(local_cluster):
    remote = rh.function(svc.get_pid).to(local_cluster)
    assert remote.endpoint() == f"{local_cluster.endpoint}/get_pid"
    base = requests.get(f"{remote.endpoint()}/call", headers=_auth(local_cluster), timeout=10)
    assert base.status_code == 200, base.text
    plus = requests.get(f"{remote.endpoint()}/call?a=1", headers=_auth(local_cluster), timeout=10)
    assert plus.json()["result"] == base.json()["result"] + 1
    rh.function(svc.add).to(local_cluster)
    r = requests.get(f"{local_cluster.endpoint}/add?a=1&b=2", headers=_auth(local_cluster), timeout=10)
    assert r.status_code == 200 and r.json()["result"] == 3  # numbers arrive as numbers
    r = requests.get(f"{local_cluster.endpoint}/add?a=x&b=y", headers=_auth(local_cluster), timeout=10)
    assert r.json()["result"] == "xy"  # anything else as a string
    r = requests.get(f"{local_cluster.endpoint}/add?a=1", timeout=10)
    assert r.status_code == 401  # the token is needed as for POST
    deep = "[" * 1200 + "]" * 1200  # deeper than the interpreter decodes, within the URL limit
    r = requests.get(f"{local_cluster.endpoint}/add", params={"a": deep, "b": 1}, headers=_auth(local_cluster),
                     timeout=10)
    assert r.status_code == 400 and "nested too deeply" in r.json()["error"]["message"]  # typed, not a 500


def test_get_call_of_a_module_method(local_cluster):
    ctr = rh.module(svc.Counter).to(local_cluster)(start=1, name="get_counter")
    r = requests.get(f"{ctr.endpoint()}/incr/call?by=4", headers=_auth(local_cluster), timeout=10)
    assert r.status_code == 200 and r.json()["result"] == 5


# -- call keywords -------------------------------------------------------------------------------------------------
def test_run_async_and_stream_logs_are_tethers_not_the_functions(local_cluster, capsys):
    seen = rh.function(svc.kwargs_seen).to(local_cluster)
    assert seen(1, stream_logs=False) == {"args": [1], "kwargs": {}}
    assert seen(2, run_async=False, stream_logs=True) == {"args": [2], "kwargs": {}}
    sync_sleep = rh.function(svc.synchronous_sleep).to(local_cluster)
    pending = sync_sleep(0.01, run_async=True)
    assert asyncio.iscoroutine(pending) and asyncio.run(pending) == 0.01
    assert sync_sleep(0.01) == 0.01
    say = rh.function(svc.say).to(local_cluster)
    assert say("quiet-please", stream_logs=False) == "quiet-please"
    assert "quiet-please" not in capsys.readouterr().out  # its output stayed remote
    say("out-loud")
    assert "out-loud" in capsys.readouterr().out
    async_sleep = rh.function(svc.async_sleep).to(local_cluster)
    assert async_sleep(0.01, run_async=False) == 0.01
    assert asyncio.run(async_sleep(0.01)) == 0.01


def test_method_call_keywords(local_cluster):
    ctr = rh.module(svc.Counter).to(local_cluster)(start=0, name="kw_methods")
    assert ctr.incr(by=2, stream_logs=False) == 2
    assert asyncio.run(ctr.incr(run_async=True)) == 3


# -- clusters -----------------------------------------------------------------------------------------------------
def test_region_open_ports_disk_and_image():
    c = rh.cluster(name="rh-gpu", instance_type="A10G:1", provider="aws", region="us-east-1", disk_size=100,
                   open_ports=[8080, "9000-9010"], image_id="docker:nvcr.io/nvidia/pytorch:23.10-py3",
                   autostop_mins=30, use_spot=False)
    spec = c.spec
    assert spec.backend == "sky" and spec.regions == ["us-east-1"] and spec.disk_size == 100
    assert spec.ports == [8080, "9000-9010"] and spec.image_id.startswith("docker:")
    with pytest.raises(rh.ConfigError, match="region"):
        rh.cluster(name="both", instance_type="A10G:1", region="us-east-1", regions=["us-west-2"])


def test_static_cluster_from_ips_and_ssh_creds():
    c = rh.cluster(name="static", ips=["10.0.0.7"], ssh_creds={"ssh_user": "ubuntu", "ssh_private_key": "~/.ssh/k"})
    assert c.spec.backend == "ssh" and c.spec.host == ["10.0.0.7"]
    assert c.spec.ssh_creds == {"user": "ubuntu", "key": "~/.ssh/k"}
    assert c.ips == ["10.0.0.7"]
    with pytest.raises(rh.ConfigError, match="password") as err:
        rh.cluster(name="pw", ips=["10.0.0.7"], ssh_creds={"ssh_user": "u", "password": "hunter2"})
    assert "hunter2" not in str(err.value) and err.value.hint


def test_ondemand_and_kubernetes_clusters():
    c = rh.ondemand_cluster(name="od", instance_type="CPU:8", provider="cheapest", autostop_mins=60)
    assert c.spec.backend == "sky" and c.spec.autostop_mins == 60
    k = rh.kubernetes_cluster(name="k8s-cpu", instance_type="CPU:2", namespace="ml", context="kind-kind")
    assert k.spec.backend == "sky" and k.spec.provider == "kubernetes/kind-kind"
    assert k.spec.kubernetes_namespace == "ml"
    # the namespace reaching SkyPilot's resolver: tests/compute/sky/test_sky_backend.py (the sky environment)
    plain = rh.kubernetes_cluster(name="k8s-any", instance_type="CPU:2")
    assert plain.spec.provider == "kubernetes"
    with pytest.raises(rh.ConfigError):
        rh.ondemand_cluster(name="od-local")  # an on-demand cluster needs an instance type


def test_cluster_ips_on_this_cluster_and_get_remote(local_cluster):
    assert local_cluster.ips == ["127.0.0.1"]
    assert local_cluster.on_this_cluster() is False
    inside = rh.function(svc.on_this_cluster).to(local_cluster)
    assert inside(local_cluster.name) is True
    ctr = rh.module(svc.Counter).to(local_cluster)(start=3, name="live_counter")
    stub = local_cluster.get("live_counter", remote=True)
    assert stub.incr() == 4 and ctr.remote.n == 4  # the same live object
    rh.function(svc.add).to(local_cluster, name="live_add")
    assert local_cluster.get("live_add", remote=True)(2, 3) == 5
    local_cluster.put("plain", {"k": 1})
    assert local_cluster.get("plain") == {"k": 1}
    with pytest.raises(rh.NotFound):
        local_cluster.get("nothing_here", remote=True)
    assert local_cluster.get("nothing_here", None, remote=True) is None
    local_cluster.delete("live_add")
    with pytest.raises(rh.NotFound, match="no longer"):
        stub = local_cluster.get("live_counter", remote=True)
        local_cluster.delete("live_counter")
        stub.incr()  # the stub holds no code: it says so instead of deploying something empty


def test_keep_warm_with_and_without_minutes(local_cluster):
    local_cluster.keep_warm(autostop_mins=30)
    assert local_cluster.daemon_status()["autostop_mins"] == 30
    local_cluster.keep_warm()
    assert local_cluster.daemon_status()["autostop_mins"] is None
    local_cluster.keep_warm(autostop=60)  # the spelling of Runhouse's resources tutorial
    assert local_cluster.daemon_status()["autostop_mins"] == 60
    local_cluster.keep_warm(autostop=-1)
    assert local_cluster.daemon_status()["autostop_mins"] is None


def test_runhouse_resource_names_and_gpus(local_cluster):
    saved = rh.ondemand_cluster(name="~/aws_cluster", instance_type="V100:1", provider="aws")
    assert saved.name == "aws_cluster"  # "~/" marks a local resource in Runhouse
    saved.save()
    assert rh.load("~/aws_cluster").spec.instance_type == "V100:1"
    assert rh.cluster(name="~/aws_cluster").spec.instance_type == "V100:1"
    gpu = rh.cluster(name="multi-gpu", gpus="A10G:1", provider="aws", autostop_minutes=45)
    assert gpu.spec.instance_type == "A10G:1" and gpu.spec.autostop_mins == 45
    assert local_cluster.head_ip == "127.0.0.1"


def test_process_is_an_env_placement(local_cluster):
    fn = rh.function(svc.get_pid).to(local_cluster, process="p1")
    other = rh.function(svc.get_pid).to(local_cluster, name="pid_default")
    assert fn.env.name == "p1" and fn() != other()  # another worker process
    with_vars = rh.function(svc.kwargs_seen).to(local_cluster, process=rh.env(name="p2", env_vars={"X": "1"}))
    assert with_vars.env.name == "p2"
    p3 = local_cluster.ensure_process_created("p3", env_vars={"LOG_LEVEL": "DEBUG"})
    in_p3 = rh.function(svc.env_var).to(local_cluster, process=p3)
    assert in_p3("LOG_LEVEL") == "DEBUG" and "p3" in local_cluster.list_processes()
    with pytest.raises(rh.ConfigError, match="compute"):
        local_cluster.ensure_process_created("p4", compute={"GPU": 1})


def test_env_as_a_list_of_requirements_names_its_env(local_cluster):
    fn = rh.function(svc.add).to(local_cluster, env=[], name="add_reqs")
    assert fn(1, 1) == 2 and fn.env.name == "default"  # no requirements: the default env
    _, env = placement(None, ["numpy", "pandas"])
    _, same = placement(None, ["pandas", "numpy"])
    assert env.name.startswith("reqs-") and env.spec.reqs == ["numpy", "pandas"] and same.name == env.name
    with pytest.raises(rh.ConfigError, match="process"):
        placement(None, "a", process="b")


def test_to_rh_here(module_home):
    here = rh.function(svc.get_pid).to(rh.here)
    assert here.cluster.name == "local" and here() != os.getpid()


# -- sharing -------------------------------------------------------------------------------------------------------
def test_share_gives_a_teammate_a_working_call_with_their_own_token(local_cluster):
    remote = rh.function(svc.add).to(local_cluster, name="shared_add")
    tokens = remote.share(users=["alice@team"], access_level="read", notify_users=False)
    alice = tokens["alice@team"]
    assert alice and alice != local_cluster.token
    r = requests.get(f"{remote.endpoint()}?a=2&b=3", headers={"Authorization": f"Bearer {alice}"}, timeout=10)
    assert r.status_code == 200 and r.json()["result"] == 5
    theirs = rh.cluster(name="alices-view", endpoint=local_cluster.endpoint, token=alice).up()
    assert theirs.get("shared_add", remote=True)(4, 5) == 9  # the Python spelling, with her token
    r = requests.post(f"{local_cluster.endpoint}/other/call", json={"args": []},
                      headers={"Authorization": f"Bearer {alice}"}, timeout=10)
    assert r.status_code == 401 and "lacks read access" in r.json()["error"]["message"]  # this service only
    as_alice = {"Authorization": f"Bearer {alice}"}
    r = requests.post(f"{local_cluster.endpoint}/grants", json={"principal": "alice@team", "services": {"*": "owner"}},
                      headers=as_alice, timeout=10)
    assert r.status_code == 401 and "lacks owner" in r.json()["error"]["message"]  # no raising her own grant
    r = requests.post(f"{remote.endpoint()}/call", data=cloudpickle.dumps(((1, 2), {})), timeout=10,
                      headers={**as_alice, "Content-Type": "application/x-tether-pickle"})
    assert r.status_code == 401 and "JSON" in r.json()["error"]["message"]  # a pickle would run her code
    issued = Path(os.environ["TETHER_HOME"]) / "clusters" / "issued-tokens.json"
    assert issued.stat().st_mode & 0o777 == 0o600
    assert {"principal": "alice@team", "access_level": "read"} in [
        {k: g[k] for k in ("principal", "access_level")} for g in remote.shared_with()]
    remote.revoke(users=["alice@team"])
    r = requests.get(f"{remote.endpoint()}?a=2&b=3", headers={"Authorization": f"Bearer {alice}"}, timeout=10)
    assert r.status_code == 401


def test_sharing_the_cluster_grants_every_service(local_cluster):
    rh.function(svc.add).to(local_cluster, name="cluster_add")
    tokens = local_cluster.share(users=["carol"], access_level="read", notify_users=False)
    carol = {"Authorization": f"Bearer {tokens['carol']}"}
    r = requests.get(f"{local_cluster.endpoint}/cluster_add?a=1&b=1", headers=carol, timeout=10)
    assert r.status_code == 200 and r.json()["result"] == 2
    again = local_cluster.share(users=["carol"])  # sharing again keeps the token she holds
    assert again == tokens
    local_cluster.stop()
    local_cluster.up()  # a restarted daemon (a new port) keeps its grants, and sharing again keeps her token
    carol_ep = f"{local_cluster.endpoint}/cluster_add?a=2&b=2"
    assert requests.get(carol_ep, headers=carol, timeout=10).json()["result"] == 4
    assert local_cluster.share(users=["carol"]) == tokens
    local_cluster.revoke(users=["carol"])
    assert requests.get(f"{local_cluster.endpoint}/cluster_add?a=1&b=1", headers=carol, timeout=10).status_code == 401


def test_share_refuses_unknown_access_levels(local_cluster):
    remote = rh.function(svc.add).to(local_cluster, name="shared_bad")
    with pytest.raises(rh.ConfigError, match="access"):
        remote.share(users=["bob"], access_level="admin")


def test_history_lists_saved_versions(local_cluster):
    remote = rh.function(svc.add).to(local_cluster, name="hist_add")
    remote.save()
    remote.save()
    versions = remote.history()
    assert [v.version for v in versions] == [1, 2]
    assert rh.function(name="hist_add")(1, 2) == 3


def test_saved_module_instance_loads_by_name(local_cluster, tmp_path: Path):
    remote = svc.PIDModule(a=4).to(local_cluster, name="pid_saved")
    remote.save()
    loaded = rh.load("pid_saved")
    assert loaded.getpid() - 4 != os.getpid()
