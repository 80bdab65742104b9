"""``tether.cluster``: a spec plus a compute backend; the object store and lifecycle of a running daemon."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from pydantic import SecretStr

from tether.api import box, placement, sharing
from tether.api import secrets as cluster_secrets
from tether.api.compat import cluster_fields, process_env
from tether.api.envs import Env
from tether.api.records import save_resource
from tether.client import AsyncClient
from tether.compute import ClusterHandle, get_backend
from tether.compute.nodes import Node
from tether.compute.state import load_state, state_backend, write_private
from tether.errors import AuthError, ClusterUnavailable, ConfigError, NotFound
from tether.home import clusters_dir
from tether.specs import ClusterSpec, build

__all__ = ["Cluster", "bind_loaded", "endpoint_bindings", "new_cluster", "remember_endpoint"]

#: the fields of a cluster config that say where its daemon is; a loaded config may not change them
CONNECTION_FIELDS: tuple[str, ...] = ("backend", "endpoint", "host", "ssh_creds", "server_port",
                                      "server_connection_type")
#: backends whose daemon someone chose by address; the reader must have connected to it themselves
_ADDRESSED = ("endpoint", "ssh")


def _norm(field: str, value: Any) -> Any:
    return value.rstrip("/") if field == "endpoint" and isinstance(value, str) else value


def _endpoints_path() -> Path:
    return clusters_dir() / "endpoints.json"


def endpoint_bindings() -> dict[str, dict[str, Any]]:
    """The endpoints this user connected to, by cluster name: ``{name: {"endpoint", "token"}}`` (0600 file
    ``$TETHER_HOME/clusters/endpoints.json``, apart from the backends' state files so it never takes a name)."""
    try:
        data = json.loads(_endpoints_path().read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def remember_endpoint(name: str, endpoint: str, token: str | None) -> None:
    """Bind ``token`` to cluster ``name`` at ``endpoint``: what a loaded config naming that cluster (and that
    endpoint) will use. Called when this user connects to an endpoint themselves."""
    bindings = endpoint_bindings()
    entry = {"endpoint": endpoint.rstrip("/"), "token": token}
    if bindings.get(name) != entry:
        bindings[name] = entry
        write_private(_endpoints_path(), json.dumps(bindings, indent=2).encode())


def _own_state(name: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the spec fields this user's state records for cluster ``name``, the token bound to it)."""
    state = load_state(name)
    saved = state.get("spec") if state else None
    if state is not None and isinstance(saved, dict):
        return {**saved, "backend": state_backend(state)}, None
    bound = endpoint_bindings().get(name)
    if bound is not None and isinstance(bound.get("endpoint"), str):
        token = bound.get("token")
        return ({"name": name, "backend": "endpoint", "endpoint": bound["endpoint"]},
                token if isinstance(token, str) else None)
    return None, None


def bind_loaded(spec: ClusterSpec, *, own: bool = False) -> ClusterSpec:
    """A cluster spec that came from a saved config (someone else may have written it), bound to this user's own
    state: where the daemon is and its token are looked up by the cluster's name in ``$TETHER_HOME/clusters``
    (a backend's state file, or the endpoint bindings of :func:`remember_endpoint`),
    never taken from the config (a token in it is dropped, ``TETHER_CLUSTER_TOKEN`` is not used).

    Raises :class:`AuthError` naming the cluster when the config would send this user's token or arguments
    somewhere they never connected to: an endpoint or ssh cluster they have no state for, or one whose state
    says another address, hosts or credentials. ``own``: the user saved this config themselves, so a cluster they
    have no state for yet is theirs to connect to (with their own credentials); a redirect is refused still."""
    where = {"cluster": spec.name, "backend": spec.backend, "endpoint": spec.endpoint, "host": spec.host}
    mine, token = _own_state(spec.name)
    if mine is None:
        if spec.backend in _ADDRESSED and not own:
            raise AuthError(
                f"the loaded config runs on cluster {spec.name!r} at {spec.endpoint or spec.host}, a daemon you "
                "have never connected to: no token of yours goes there",
                hint="if you trust that daemon, connect to it yourself once (tether.cluster(name=..., endpoint=..., "
                     "token=...).up()); a saved config never chooses where your token goes",
                details={**where, "reason": "no_token"})
        return spec.model_copy(update={"token": None})
    theirs = spec.model_dump(mode="json")
    with contextlib.suppress(ConfigError, ValueError):
        mine = build(ClusterSpec, mine).model_dump(mode="json")
    fields = CONNECTION_FIELDS if _ADDRESSED.count(mine.get("backend")) or spec.backend in _ADDRESSED else \
        ("backend",)  # a local or sky cluster of this name is this user's own: its state says where it is
    differs = [f for f in fields if _norm(f, mine.get(f)) != _norm(f, theirs.get(f))]
    if differs:
        raise AuthError(
            f"the loaded config moves your cluster {spec.name!r} elsewhere ({', '.join(differs)} differ from what "
            "you connected to): no token of yours goes there",
            hint="load it with your own cluster (handle.with_cluster(tether.cluster(name=...))) or ask its writer",
            details={**where, "fields": differs, "reason": "redirect"})
    token = token if spec.backend == "endpoint" else None
    return spec.model_copy(update={"token": SecretStr(token) if isinstance(token, str) else None,
                                   "endpoint": _norm("endpoint", spec.endpoint)})


class Cluster:
    """A cluster: where services run. ``up_if_not()`` brings it up; the rest talks to its daemon."""

    live_stub: ClassVar[Callable[[Cluster, str], Any] | None] = None
    """Makes ``get(name, remote=True)``'s stub (set by ``tether.api.module``, which knows the handle types)."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self._handle: ClusterHandle | None = None
        self._refused: AuthError | None = None  # a loaded config that would redirect this user's token
        self._synced: dict[str, str] = {}
        self._nodes: tuple[str, list[Node], dict[int, AsyncClient]] | None = None  # by the head's endpoint

    # -- lifecycle ----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def backend(self) -> Any:
        assert self.spec.backend is not None
        return get_backend(self.spec.backend)

    def _allowed(self) -> None:
        """Raise the AuthError of a loaded config that names a daemon this user never connected to, before
        anything is sent anywhere."""
        if self._refused is not None:
            raise self._refused

    def up(self) -> Cluster:
        """Bring the cluster up (idempotent) and connect to its daemon."""
        self._allowed()
        self._handle = self.backend.up(self.spec)
        self._client = None
        if self.spec.backend == "endpoint":
            self._bind_token()
        return self

    def _bind_token(self) -> None:
        """Remember the token this user connected to an endpoint with (:func:`remember_endpoint`): a saved config
        naming this cluster, at this same endpoint, later finds it there, and nowhere else."""
        remember_endpoint(self.name, self.handle.endpoint, self.handle.token)

    def up_if_not(self) -> Cluster:
        """Bring the cluster up unless it already is; returns self."""
        self._allowed()
        if self._handle is None or not self.is_up():
            self.up()
        return self

    def is_up(self) -> bool:
        return self.status() == "up"

    def status(self) -> str:
        """``"up"``, ``"stopped"`` or ``"down"``."""
        self._allowed()
        return box.StatusReport(self.backend.status(self.spec), self)  # a str, with .workers / .details()

    def stop(self) -> None:
        """Stop the cluster's daemon; its services come back on the next ``up``."""
        self.backend.stop(self.spec)
        self._handle = self._nodes = None

    def teardown(self) -> None:
        """Bring the cluster down and delete what it held."""
        self.backend.down(self.spec)
        self._handle = self._nodes = None

    down = teardown

    def plan(self) -> Any:
        """The ranked candidates this cluster's spec would launch on, with reasons (launches nothing)."""
        from tether.compute.routing import plan

        return plan(self.spec)

    @property
    def handle(self) -> ClusterHandle:
        if self._handle is None:
            raise ClusterUnavailable(f"cluster {self.name!r} is not up", hint="call cluster.up_if_not() first")
        return self._handle

    @property
    def endpoint(self) -> str:
        """Base URL of the daemon, for callers that speak plain HTTP."""
        return self.handle.endpoint

    @property
    def token(self) -> str | None:
        """Bearer token of the daemon (None when auth is off)."""
        return self.handle.token

    @property
    def client(self) -> AsyncClient:
        client = getattr(self, "_client", None)
        if client is None or client.endpoint != self.handle.endpoint.rstrip("/"):
            h = self.handle
            client = self._client = AsyncClient(h.endpoint, h.token, h.tls_fingerprint, h.unix_socket)
        return client

    def _node_table(self) -> tuple[list[Node], dict[int, AsyncClient]]:
        key = self.handle.endpoint
        if self._nodes is None or self._nodes[0] != key:
            self._nodes = (key, placement.cluster_nodes(self), {})
        return self._nodes[1], self._nodes[2]

    def forget_nodes(self) -> None:
        """Look the nodes up again at their next use (which reopens a dead tunnel to one), new clients with them."""
        self._nodes = None

    def node(self, node: int | str) -> Node:
        """Node ``node`` (an index or a host) of the cluster, its daemon reached through the head; a ConfigError
        naming the nodes when there is no such node."""
        nodes, _ = self._node_table()
        return nodes[placement.node_index(nodes, node)]

    def node_client(self, node: int | str | None) -> AsyncClient:
        """The client of node ``node``'s daemon (``None`` or 0: the head's, :attr:`client`), kept per node."""
        if node is None or node == 0:
            return self.client
        nodes, clients = self._node_table()
        n = nodes[placement.node_index(nodes, node)]
        if n.is_head:
            return self.client
        client = clients.get(n.index)
        if client is None or client.endpoint != n.endpoint.rstrip("/"):
            client = clients[n.index] = n.client()
        return client

    def connected(self) -> Cluster:
        """Connect to an already-running cluster without launching it."""
        self._allowed()
        if self._handle is None:
            handle = getattr(self.backend, "handle", lambda spec: None)(self.spec)
            if handle is None:
                raise ClusterUnavailable(f"cluster {self.name!r} is not running", hint="call up_if_not()")
            self._handle = handle
        return self

    def refresh(self) -> bool:
        """Adopt the daemon another process (re)started for this cluster, with its new endpoint and token:
        re-read the backend's state; whether anything changed (and this object now talks to that daemon)."""
        self._allowed()
        current = getattr(self.backend, "handle", lambda spec: None)(self.spec)
        if current is None:
            return False
        old = self._handle
        if old is not None and (old.endpoint, old.token, old.tls_fingerprint, old.unix_socket, old.pid) == (
                current.endpoint, current.token, current.tls_fingerprint, current.unix_socket, current.pid):
            return False
        self._handle = current
        self._client = None
        self._nodes = None
        return True

    def sync(self, root: Path) -> str:
        """Copy a code tree to the cluster (cached per root for this process); returns its path there."""
        key = str(root)
        if key not in self._synced or self.spec.backend != "local":
            self._synced[key] = self.backend.sync_code(self.spec, self.handle, root)
        return self._synced[key]

    # -- object store ---------------------------------------------------------------------------------------------
    def put(self, key: str, obj: Any, env: str = "default") -> None:
        """Store ``obj`` under ``key`` in the env's worker."""
        self.client.sync.put_object(key, obj, env=env)

    def get(self, key: str, default: Any = ..., *, remote: bool = False) -> Any:
        """The object stored (or service held) under ``key``, by value. ``remote=True``: a stub of the live
        service ``key`` instead (its calls and attributes go to the running object)."""
        if remote:
            if Cluster.live_stub is None:
                raise ConfigError("get(remote=True) needs tether's service handles", hint="import tether.api.module")
            try:
                return Cluster.live_stub(self, key)
            except NotFound:
                if default is ...:
                    raise
                return default
        try:
            return self.client.sync.get_object(key)
        except NotFound:
            if default is ...:
                raise
            return default

    def keys(self) -> list[str]:
        """Names of all services and objects on the cluster."""
        return list(self.client.sync.keys())

    def delete(self, name: str) -> None:
        """Delete a service or object; an env's name deletes the env's worker and everything in it."""
        try:
            self.client.sync.delete_object(name)
        except NotFound:
            self.client.sync.delete_env(name)

    def rename(self, old: str, new: str) -> None:
        self.client.sync.rename_object(old, new)

    def ls(self) -> list[dict[str, Any]]:
        """Services and objects with their kind and env."""
        return list(self.client.sync.services())

    def daemon_status(self) -> dict[str, Any]:
        return dict(self.client.sync.daemon_status())

    def keep_warm(self, autostop_mins: float | None = None, *, autostop: float | None = None) -> None:
        """Never autostop this cluster (``autostop_mins``, or Runhouse's ``autostop``: stop after that many idle
        minutes instead; -1: never)."""
        mins = autostop_mins if autostop_mins is not None else autostop
        self.client.sync.set_autostop(None if mins is None or mins < 0 else mins)

    @property
    def head_ip(self) -> str | None:
        """The head node's address (the first of :attr:`ips`)."""
        return self.ips[0] if self.ips else None

    @property
    def ips(self) -> list[str]:
        """The addresses of the cluster's hosts (the running daemon's when up, else the spec's)."""
        if self._handle is not None and self._handle.hosts:
            return list(self._handle.hosts)
        if self.spec.host:
            return list(self.spec.host)
        return ["127.0.0.1"] if self.spec.backend == "local" else []

    def on_this_cluster(self) -> bool:
        """Whether this code runs in a worker of this cluster's daemon (a service calling back into its own
        cluster), compared by the daemon's process id."""
        mine = os.environ.get("TETHER_DAEMON_PID")
        if not mine:
            return False
        try:
            handle = self.connected().handle
            pid = handle.pid if handle.pid is not None else self.client.sync.health().get("pid")
        except (ClusterUnavailable, NotFound):
            return False
        return str(pid) == mine

    def share(self, users: str | list[str] | None = None, access_level: str = "read", notify_users: bool = False,
              *, allow_pickle: bool = False) -> dict[str, str]:
        """Give ``users`` ``access_level`` on every service of this cluster's daemon; returns their tokens (see
        :func:`tether.api.sharing.grant`; ``notify_users`` is accepted: there is no mail)."""
        return sharing.grant(self.connected(), "*", users, access_level, allow_pickle=allow_pickle)

    def revoke(self, users: str | list[str] | None = None) -> None:
        """Take back what :meth:`share` gave ``users``."""
        sharing.ungrant(self.connected(), "*", users)

    def ensure_process_created(self, name: str, env_vars: dict[str, str] | None = None,
                               compute: dict[str, Any] | None = None) -> Env:
        """Runhouse's process: the env ``name`` (one worker process), to deploy into with ``process=``."""
        return process_env(name, env_vars, compute)

    def list_processes(self) -> dict[str, Any]:
        """The envs (worker processes) the daemon knows, by name."""
        return dict(self.client.sync.envs())

    def pause_autostop(self, paused: bool = True) -> None:
        self.client.sync.set_autostop(paused=paused)

    # -- config ---------------------------------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {"kind": "cluster", **self.spec.model_dump(mode="json")}

    @classmethod
    def from_config(cls, config: dict[str, Any], *, loaded: bool = False, own: bool = False) -> Cluster:
        """The cluster a config describes. ``loaded=True`` (a config from the registry, which others may have
        written): bound to this user's own state by :func:`bind_loaded`; a config it refuses still loads (to
        look at), and its first ``up``/``status``/call raises that :class:`AuthError`, before anything is sent."""
        data = {k: v for k, v in config.items() if k != "kind"}
        if config.get("kind", "cluster") != "cluster":
            raise ConfigError(f"not a cluster config (kind={config.get('kind')!r})")
        spec = build(ClusterSpec, data)
        if not loaded:
            return cls(spec)
        try:
            return cls(bind_loaded(spec, own=own))
        except AuthError as exc:
            refused = cls(spec.model_copy(update={"token": None}))
            refused._refused = exc
            return refused

    def derive(self, name: str, **fields: Any) -> Cluster:
        """Another cluster described by ``fields`` (an escalation rung, say); nothing is launched."""
        return new_cluster(name, **fields)

    def save(self, name: str | None = None) -> Any:
        return save_resource(name or self.name, self.config())

    def __repr__(self) -> str:
        return f"Cluster({self.name!r}, backend={self.spec.backend!r})"

    # -- hands on the box, secrets, images (tether.api.box, tether.api.secrets): thin delegates ---------------
    def run(self, commands: str | list[str], *, env: dict[str, str] | None = None, node: int | str | None = None,
            cwd: str | None = None, stream: bool = True) -> list[Any]:
        """Shell commands on the head (``node``: an index, a host or ``"all"``), output streamed as it comes;
        one ``CommandResult(returncode, stdout, stderr, host, command)`` each (a node stops at a failure)."""
        self._allowed()
        return box.run(self, commands, env=env, node=node, cwd=cwd, stream=stream)

    def rsync(self, source: str, dest: str, *, up: bool = True, node: int | str | None = None,
              contents: bool = False) -> None:
        """Copy local ``source`` to ``dest`` on every node (``up``), or from the head to local ``dest``."""
        self._allowed()
        box.rsync(self, source, dest, up=up, node=node, contents=contents)

    def ssh(self, node: int | str | None = None, command: str | None = None) -> int:
        """An interactive shell on a node (``command``: run that instead); its exit code."""
        self._allowed()
        return box.shell(self, node, command)

    def restart_server(self) -> Cluster:
        """Restart the daemon (its services come back from its manifest); returns self."""
        self.stop()
        return self.up()

    def sync_secrets(self, secrets: list[Any], node: int | str | None = "all") -> list[str]:
        """Deliver secrets (``tether.secret`` objects or names) to every env's workers on the cluster, and their
        files into each remote host's HOME in the tool's layout; returns the names."""
        self._allowed()
        return cluster_secrets.sync_to_cluster(self, secrets, all_envs=True, to_home=True, node=node)

    def delete_secrets(self, names: list[str]) -> None:
        """Remove secrets from the cluster's secret store (workers lose them at their next start)."""
        self._allowed()
        cluster_secrets.delete_from_cluster(self, names)

    # -- nodes (tether.api.placement): thin delegates -----------------------------------------------------------
    def nodes(self) -> list[dict[str, Any]]:
        """Every node, head first: host, address, index, ``head``, ``status`` (``"up"``/``"unreachable"``) and
        its daemon's ``workers`` (env, pid, alive) and ``services`` (see :func:`tether.api.placement.cluster_status`)."""
        self._allowed()
        return placement.cluster_status(self)


def new_cluster(name: str | None = None, **fields: Any) -> Cluster:
    """A cluster from its fields, never loaded from the registry (see ``tether.cluster`` for that)."""
    return Cluster(build(ClusterSpec, cluster_fields(dict(name=name or "local", **fields))))
