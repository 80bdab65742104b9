"""A stand-in for the clouds behind SkyPilot's client API (``sky.launch`` / ``exec`` / ``status`` / ``stop`` /
``down`` / ``start`` / ``autostop`` / ``cancel`` and ``get`` / ``stream_and_get``), built to fail for the reasons
the real one does:

- every call is bound to the real ``sky.client.sdk`` function's signature (a wrong keyword is a TypeError);
- tasks and resources are SkyPilot's own (``sky.Task``, ``sky.Resources``), names are checked by SkyPilot's own
  ``check_cluster_name_is_valid``, features by the cloud classes' own ``check_features_are_supported`` (Kubernetes
  and SSH node pools, which would ask a kube API, by the reasons SkyPilot gives for them);
- launch failures are ``ResourcesUnavailableError`` with the real causes in ``failover_history``, as
  ``CloudVmRayBackend``'s provisioner raises them; setup failures are ``CommandError`` with the cluster left UP;
- ``status`` answers from SkyPilot's cached table unless asked to refresh, with real ``StatusResponse`` records
  and ``CloudVmRayResourceHandle`` handles; ``stop``/``down`` of a missing cluster raise ``ClusterDoesNotExist``.

The node image is modelled on SkyPilot's default one: Python 3.10 as ``python3``, ``uv`` in ``~/.local/bin``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import pytest
import sky
from sky import clouds
from sky import exceptions as sx
from sky.backends.cloud_vm_ray_backend import CloudVmRayResourceHandle
from sky.client import sdk
from sky.schemas.api.responses import StatusResponse
from sky.utils import common, common_utils
from sky.utils.status_lib import ClusterStatus

_NO_STOP = {"kubernetes": "Kubernetes", "ssh": "SSH"}


def _unavailable(cause: Exception) -> sx.ResourcesUnavailableError:
    """How the provisioner ends a pinned launch that failed: the cause in the history, a generic message."""
    return sx.ResourcesUnavailableError(
        "Failed to provision all possible launchable resources. Relax the task's resource requirements: 1x "
        "(...)\nTo keep retrying until the cluster is up, use the `--retry-until-up` flag.",
        failover_history=[cause],
    )


@dataclass
class Node:
    """One cluster: what the cloud has (``status``) and what SkyPilot's table says without a refresh."""

    name: str
    resources: Any
    status: ClusterStatus | None
    cached: ClusterStatus
    autostop: int = -1
    to_down: bool = False
    wait_for: Any = None
    jobs: list[str] = field(default_factory=list)
    setups: list[str] = field(default_factory=list)
    file_mounts: dict[str, str] = field(default_factory=dict)
    daemon_alive: bool = False
    probes: int = 0
    num_nodes: int = 1


@dataclass
class FakeSky:
    no_capacity: set[tuple[str, str]] = field(default_factory=set)
    no_quota: set[tuple[str, str]] = field(default_factory=set)
    no_auth: set[str] = field(default_factory=set)
    not_enabled: set[str] = field(default_factory=set)  # clouds `sky check` did not enable (no credentials at all)
    setup_fails: str | None = None
    node_python: str = "3.10.12"
    ssh_port: int = 22
    docker_user: str | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    launches: list[dict[str, Any]] = field(default_factory=list)
    execs: list[tuple[str, Any]] = field(default_factory=list)
    cancels: list[str] = field(default_factory=list)
    autostops: list[tuple[str, int, bool]] = field(default_factory=list)
    starts: list[tuple[str, int | None]] = field(default_factory=list)
    downs: list[str] = field(default_factory=list)
    status_calls: list[dict[str, Any]] = field(default_factory=list)
    tunnels: list[Any] = field(default_factory=list)  # the ssh targets tunnels were opened to
    daemon_autostop: list[float | None] = field(default_factory=list)  # POST /autostop to the daemon
    daemon_checks: int = 0  # `is the daemon's process running` asked over ssh
    daemon_start_probes: int = 0  # how many /health tries fail after a job starts before the daemon answers

    # the old fake's view, kept for the first tests
    @property
    def clusters(self) -> dict[str, ClusterStatus]:
        return {n: node.status for n, node in self.nodes.items() if node.status is not None}

    # -- the cloud's side -----------------------------------------------------------------------------------
    def cloud_stops(self, name: str) -> None:
        """Autostop or a preemption on the cloud; SkyPilot's table still says UP until refreshed."""
        node = self.nodes[name]
        node.status, node.daemon_alive = ClusterStatus.STOPPED, False

    def daemon_dies(self, name: str) -> None:
        self.nodes[name].daemon_alive = False

    # -- requests ---------------------------------------------------------------------------------------------
    def _request(self, op: str, *args: Any, **kwargs: Any) -> tuple[str, dict[str, Any]]:
        bound = inspect.signature(getattr(sdk, op)).bind(*args, **kwargs)
        bound.apply_defaults()
        return (op, dict(bound.arguments))

    def get(self, request: tuple[str, dict[str, Any]]) -> Any:
        op, a = request
        return getattr(self, f"_do_{op}")(a)

    stream_and_get = get

    def _do_launch(self, a: dict[str, Any]) -> Any:
        task, name = a["task"], a["cluster_name"]
        res = sorted(task.resources, key=lambda r: str(r.zone))[0]  # several: any_of (one per allowed zone)
        cloud, region = str(res.cloud).lower(), res.region
        self.launches.append({"where": (cloud, region), "instance_type": res.instance_type,
                              "accelerators": res.accelerators, "use_spot": res.use_spot, "cluster": name,
                              "zones": sorted(str(r.zone) for r in task.resources if r.zone),
                              "num_nodes": task.num_nodes,
                              "task": task, **{k: v for k, v in a.items() if k not in ("task", "cluster_name")}})  # fmt: skip
        node = self.nodes.get(name)
        if node is None or node.status is None:
            try:
                common_utils.check_cluster_name_is_valid(name)
            except sx.InvalidClusterNameError as exc:
                raise _unavailable(exc) from None
            if cloud in self.not_enabled:  # sky.optimizer, before any provisioning: no failover_history
                raise sx.ResourcesUnavailableError(
                    f"Task {task.name!r} requires {cloud.upper()} which is not enabled. To enable access, change the "
                    f"task cloud requirement or run: sky check {cloud}")  # fmt: skip
            if cloud in self.no_auth:
                raise _unavailable(sx.CloudUserIdentityError(
                    f"Failed to get {cloud} user identity with unknown exception.\n  Reason: credentials are not "
                    "valid"))  # fmt: skip
            idle = a["idle_minutes_to_autostop"]
            if idle is not None and idle >= 0:
                feature = clouds.CloudImplementationFeatures.AUTODOWN if a["down"] else (
                    clouds.CloudImplementationFeatures.AUTOSTOP)
                if cloud in _NO_STOP:
                    if feature == clouds.CloudImplementationFeatures.AUTOSTOP:
                        raise _unavailable(sx.NotSupportedError(
                            f"The following features are not supported by {_NO_STOP[cloud]}:\n\tautostop  "
                            f"Auto-stop is not supported on {_NO_STOP[cloud]}."))  # fmt: skip
                else:
                    try:
                        type(res.cloud).check_features_are_supported(res, {feature})
                    except sx.NotSupportedError as exc:
                        raise _unavailable(exc) from None
            if (cloud, region) in self.no_quota:
                raise _unavailable(sx.ResourcesUnavailableError(
                    f"Failed to acquire resources in {region}: Quota exceeded for quota metric "
                    "'VcpuLimitExceeded'"))  # fmt: skip
            if (cloud, region) in self.no_capacity:
                raise _unavailable(sx.ResourcesUnavailableError(f"Failed to acquire resources in {region}"))
            node = self.nodes[name] = Node(name, res, ClusterStatus.INIT, ClusterStatus.INIT,
                                           num_nodes=task.num_nodes)
        # an existing cluster is reused where it is (no failover); a stopped one is started
        node.status = node.cached = ClusterStatus.UP
        node.file_mounts.update(task.file_mounts or {})
        if task.setup:
            node.setups.append(task.setup)
            self._run_setup(name, task.setup)
        idle = a["idle_minutes_to_autostop"]
        if idle is not None:
            node.autostop, node.to_down, node.wait_for = max(idle, 1) if idle >= 0 else -1, a["down"], a["wait_for"]
        self._job(node, task)
        return (len(node.jobs), self._handle(node))

    def _run_setup(self, name: str, setup: str) -> None:
        """The node image: ``python3`` is 3.10 (tether needs >= 3.11), ``~/.local/bin/uv`` can make any venv."""
        if "python3 -m venv" in setup and "uv" not in setup.split("python3 -m venv")[0][-40:]:
            raise sx.CommandError(1, setup, "Failed to run setup command.", f"ERROR: Package 'tether' requires a "
                                  f"different Python: {self.node_python} not in '>=3.11'")  # fmt: skip
        if self.setup_fails:
            raise sx.CommandError(1, setup, "Failed to run setup command.", self.setup_fails)

    def _job(self, node: Node, task: Any) -> None:
        node.jobs.append(task.run)
        node.daemon_alive, node.probes = True, 0

    def _do_exec(self, a: dict[str, Any]) -> Any:
        node = self.nodes.get(a["cluster_name"])
        if node is None or node.status != ClusterStatus.UP:
            raise sx.ClusterNotUpError(f"Cluster {a['cluster_name']!r} is not up.", cluster_status=None)
        self.execs.append((a["cluster_name"], a["task"]))
        self._job(node, a["task"])
        return (len(node.jobs), self._handle(node))

    def _do_cancel(self, a: dict[str, Any]) -> None:
        node = self.nodes.get(a["cluster_name"])
        if node is None or node.status != ClusterStatus.UP:
            raise sx.ClusterNotUpError(f"Cluster {a['cluster_name']!r} is not up.", cluster_status=None)
        self.cancels.append(a["cluster_name"])
        node.daemon_alive = False

    def _do_status(self, a: dict[str, Any]) -> list[StatusResponse]:
        self.status_calls.append(a)
        out = []
        for n in a["cluster_names"] or list(self.nodes):
            node = self.nodes.get(n)
            if node is None:
                continue
            refresh = a["refresh"]
            if refresh == common.StatusRefreshMode.FORCE or (refresh == common.StatusRefreshMode.AUTO and (
                    node.autostop >= 0 or node.resources.use_spot)):  # fmt: skip
                if node.status is None:
                    continue
                node.cached = node.status
            out.append(self._record(node, a["_include_credentials"]))
        return out

    def _record(self, node: Node, credentials: bool) -> StatusResponse:
        creds = None
        if credentials:
            creds = {"ssh_user": "ubuntu", "ssh_private_key": "~/.sky/clients/abc/ssh/sky-key",
                     "ssh_control_name": node.name, "ssh_proxy_command": None,
                     "ssh_private_key_content": "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n"}  # fmt: skip
        return StatusResponse(name=node.name, launched_at=1, handle=self._handle(node), status=node.cached,
                              autostop=node.autostop, to_down=node.to_down, cluster_hash="h", cluster_ever_up=True,
                              user_hash="u", user_name="me", workspace="default", is_managed=False, nodes=node.num_nodes,
                              credentials=creds)  # fmt: skip

    def _handle(self, node: Node) -> CloudVmRayResourceHandle:
        handle = CloudVmRayResourceHandle(cluster_name=node.name, cluster_name_on_cloud=f"{node.name}-2ea4",
                                          cluster_yaml=None, launched_nodes=node.num_nodes,
                                          launched_resources=node.resources,
                                          stable_internal_external_ips=[(f"10.0.0.{2 + i}", f"203.0.113.{7 + i}")
                                                                        for i in range(node.num_nodes)],
                                          stable_ssh_ports=[self.ssh_port])  # fmt: skip
        handle.docker_user = self.docker_user
        return handle

    def _existing(self, name: str) -> Node:
        node = self.nodes.get(name)
        if node is None or node.status is None:
            raise sx.ClusterDoesNotExist(f"Cluster {name!r} does not exist.")
        return node

    def _do_stop(self, a: dict[str, Any]) -> None:
        node = self._existing(a["cluster_name"])
        cloud = str(node.resources.cloud).lower()
        if cloud in _NO_STOP or cloud == "lambda" or node.resources.use_spot:
            raise sx.NotSupportedError(f"Stopping cluster {a['cluster_name']!r} is not supported on {cloud}.")
        node.status = node.cached = ClusterStatus.STOPPED
        node.daemon_alive = False

    def _do_down(self, a: dict[str, Any]) -> None:
        self._existing(a["cluster_name"])
        self.downs.append(a["cluster_name"])
        del self.nodes[a["cluster_name"]]

    def _do_start(self, a: dict[str, Any]) -> Any:
        node = self._existing(a["cluster_name"])
        self.starts.append((a["cluster_name"], a["idle_minutes_to_autostop"]))
        node.status = node.cached = ClusterStatus.UP
        return self._handle(node)

    def _do_autostop(self, a: dict[str, Any]) -> None:
        node = self._existing(a["cluster_name"])
        if not a["down"] and a["idle_minutes"] >= 0 and str(node.resources.cloud).lower() in _NO_STOP:
            raise sx.NotSupportedError("Auto-stop is not supported on Kubernetes.")
        self.autostops.append((a["cluster_name"], a["idle_minutes"], a["down"]))
        node.autostop, node.to_down = a["idle_minutes"], a["down"]

    def install(self, mp: pytest.MonkeyPatch) -> FakeSky:
        for op in ("launch", "exec", "status", "stop", "down", "start", "autostop", "cancel"):
            mp.setattr(sky, op, (lambda o: lambda *a, **k: self._request(o, *a, **k))(op))
        mp.setattr(sky, "get", self.get)
        mp.setattr(sky, "stream_and_get", self.stream_and_get)
        return self


@dataclass
class FakeDaemon:
    """The daemon on the head, seen through the tunnel: it answers once its job ran long enough."""

    cloud: FakeSky

    def install(self, mp: pytest.MonkeyPatch) -> FakeDaemon:
        import tether.compute.sky as mod

        ports: dict[int, str] = {}

        def open_tunnel(target: Any, port: int, *, log: Any = None, **kw: Any) -> Any:
            local = 40000 + len(self.cloud.tunnels)
            self.cloud.tunnels.append(target)
            ports[local] = target.host
            return type("T", (), {"pid": 99999, "local_port": local})()

        def probe(endpoint: str, *, token: str | None = None, timeout: float = 2.0, **kw: Any) -> Any:
            # every tunnel goes to the single cluster a test brings up
            (node,) = [n for n in self.cloud.nodes.values() if n.status is not None] or [None]
            if node is None or node.status != ClusterStatus.UP or not node.daemon_alive:
                return None
            node.probes += 1
            return {"status": "ok"} if node.probes > self.cloud.daemon_start_probes else None

        def run(target: Any, command: str, *, step: str, **kw: Any) -> str:
            if step != "daemon running":
                raise AssertionError(f"unexpected ssh step {step!r}: {command}")
            alive = any(n.daemon_alive for n in self.cloud.nodes.values() if n.status == ClusterStatus.UP)
            self.cloud.daemon_checks += 1
            return "running\n" if alive else "gone\n"

        cloud = self.cloud

        class Client:  # tether's own client of the daemon: what it was told
            def __init__(self, endpoint: str, token: str | None = None, *a: Any, **k: Any) -> None:
                self.sync = self

            def set_autostop(self, mins: float | None = None, **k: Any) -> dict[str, Any]:
                cloud.daemon_autostop.append(mins)
                return {"autostop_mins": mins}

        mp.setattr(mod, "DaemonClient", Client)
        mp.setattr(mod.SSHTarget, "run", run)
        mp.setattr(mod, "open_tunnel", open_tunnel)
        mp.setattr(mod, "tunnel_alive", lambda pid, port: False)
        mp.setattr(mod, "close_tunnel", lambda pid: None)
        mp.setattr(mod, "probe_health", probe)
        return self
