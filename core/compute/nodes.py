"""A cluster's nodes: where each node's daemon is, how the client reaches it (through the head), and how the
other nodes reach it (its address on the cluster's network: ``MASTER_ADDR``, the Ray head, the Dask scheduler).

Every node of a multi-node cluster runs its own daemon on its loopback, like the head. The client reaches
only the head over the network: a non-head node's daemon is reached by an ``ssh -L`` tunnel whose ssh
connection is itself carried through the head (``ProxyCommand ssh ... -W node:22 head``), so a node needs no
route from the client. The tunnels' pids and ports are kept in the cluster's state file under
``node_tunnels`` and closed with the head's tunnel on ``stop``/``down``.
"""

from __future__ import annotations

import shlex
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from tether.client import DaemonClient
from tether.compute.bootstrap import DEFAULT_PORT, SSHTarget
from tether.compute.state import load_state, save_state, write_private
from tether.compute.tunnel import close_tunnel, open_tunnel, tunnel_alive
from tether.errors import ClusterUnavailable, TetherError
from tether.home import clusters_dir, file_lock

__all__ = ["Node", "close_node_tunnels", "head_node", "node_code_root", "nodes_status", "ssh_nodes", "via_head"]


@dataclass(frozen=True)
class Node:
    """One node of a cluster."""

    index: int
    """0 is the head."""
    host: str
    """How the client names the node (an ssh host or alias)."""
    address: str
    """The node's address on the cluster's network: how the other nodes reach it."""
    endpoint: str
    """Base URL of the node's daemon as the client reaches it (a tunnel through the head)."""
    token: str | None = None
    remote_dir: str | None = None
    """tether's folder on the node (code trees are synced under it)."""

    @property
    def is_head(self) -> bool:
        return self.index == 0

    def client(self) -> DaemonClient:
        """A client of this node's daemon."""
        return DaemonClient(self.endpoint, self.token)

    def describe(self) -> dict[str, Any]:
        """JSON-able, without the token."""
        return {k: v for k, v in asdict(self).items() if k != "token"} | {"head": self.is_head}


def head_node(endpoint: str, token: str | None, host: str = "127.0.0.1") -> Node:
    """The only node of a single-node cluster (the local daemon, an endpoint)."""
    return Node(0, host, host, endpoint, token)


def node_code_root(root: str, source: Node, node: Node) -> str:
    """Where a code tree synced to every node lies on ``node``, given its path ``root`` on ``source`` (the same
    path under each node's own tether folder)."""
    if node.index == source.index or not source.remote_dir or not node.remote_dir \
            or not root.startswith(source.remote_dir):
        return root
    return node.remote_dir + root[len(source.remote_dir):]


def via_head(name: str, head: SSHTarget, node: SSHTarget, address: str, index: int) -> SSHTarget:
    """``node`` reached through ``head``: an ssh config (private, under the cluster's folder) whose entry for
    the node carries its connection through the head, so the client needs a route to the head only."""
    proxy = " ".join(shlex.quote(a) for a in ["ssh", *head.options(), "-W", "%h:%p", head.dest])
    lines = [f"Host tether-node-{index}", f"  HostName {address}", f"  ProxyCommand {proxy}"]
    cfg = clusters_dir() / f"{name}.nodes.ssh"
    cfg.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = cfg / f"node{index}.config"
    write_private(path, ("\n".join(lines) + "\n").encode())
    return SSHTarget(host=f"tether-node-{index}", user=node.user, key=node.key, port=node.port,
                     known_hosts=node.known_hosts, connect_timeout=max(node.connect_timeout, 10),
                     config_file=str(path))  # fmt: skip


def ssh_nodes(name: str, targets: list[SSHTarget], head_endpoint: str, token: str | None,
              reach: Callable[[int], SSHTarget] | None = None, *, addresses: list[str] | None = None,
              port: int | None = None) -> list[Node]:
    """The nodes of an ssh-reached cluster whose state file is ``name``'s: the head through its own tunnel
    (``head_endpoint``), every other node through a tunnel carried by the head, opened now if it is not alive
    (on its old local port when free). ``reach(i)``: the ssh target that reaches node ``i`` for its tunnel
    (default: through the head, :func:`via_head`); ``addresses``: the nodes' addresses on the cluster's network
    (default: their ssh hosts); ``port``: the daemons' port (default: each host's as bootstrapped)."""
    with file_lock(clusters_dir() / f"{name}.nodes.lock"):
        st = load_state(name) or {}
        dirs: dict[str, str] = st.get("remote_dirs", {})
        ports: dict[str, int] = st.get("ports", {})
        kept: dict[str, dict[str, Any]] = dict(st.get("node_tunnels") or {})
        addrs = addresses or [t.host for t in targets]
        nodes = [Node(0, targets[0].host, addrs[0], head_endpoint, token, dirs.get(targets[0].host))]
        changed = False
        for i, t in enumerate(targets[1:], start=1):
            tun = kept.get(t.host) or {}
            if not tunnel_alive(tun.get("pid"), tun.get("local_port")):
                close_tunnel(tun.get("pid"))
                through = reach(i) if reach is not None else via_head(name, targets[0], t, t.host, i)
                remote = int(port or ports.get(t.host) or st.get("remote_port") or DEFAULT_PORT)
                log = clusters_dir() / f"{name}.node{i}.tunnel.log"
                try:
                    opened = open_tunnel(through, remote, local_port=tun.get("local_port"), log=log)
                except TetherError:
                    opened = open_tunnel(through, remote, log=log)
                tun = {"pid": opened.pid, "local_port": opened.local_port}
                kept[t.host] = tun
                changed = True
            nodes.append(Node(i, t.host, addrs[i], f"http://127.0.0.1:{tun['local_port']}", token, dirs.get(t.host)))
        if changed:
            st = load_state(name) or st
            st["node_tunnels"] = kept
            save_state(name, st)
        return nodes


def close_node_tunnels(st: dict[str, Any]) -> None:
    """Close the tunnels to the non-head nodes recorded in a state dict (and forget them there)."""
    for tun in (st.pop("node_tunnels", None) or {}).values():
        close_tunnel(tun.get("pid"))


def nodes_status(nodes: list[Node]) -> list[dict[str, Any]]:
    """Every node with its daemon's workers (env, pid, alive) and services; an unreachable node says so."""
    out = []
    for node in nodes:
        row = node.describe()
        try:
            st = node.client().sync.daemon_status()
        except ClusterUnavailable as exc:
            row.update(status="unreachable", error=str(exc), workers=[], services=[])
        else:
            row.update(status="up", workers=st.get("workers", []),
                       services=[s.get("name") for s in st.get("services", [])])  # fmt: skip
        out.append(row)
    return out
