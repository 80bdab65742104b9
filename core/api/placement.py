"""Where an env goes: a cluster's nodes, what each has (CPUs, memory, GPUs) and what its envs already asked for,
and the node (and GPUs) an env that asks for resources (``tether.env(compute=..., node=...)``) is given.

Node facts are read on each node (``/proc``, NVML or nvidia-smi, as :func:`tether.api.box.usage`);
``TETHER_NODE_GPUS`` (one count, or one per node, comma-separated) overrides the GPU count seen, for tests on
machines without GPUs. What a node's envs hold comes from its daemon (``GET /envs``): their ``compute`` and the
``CUDA_VISIBLE_DEVICES`` tether gave them, so GPUs are partitioned across the envs of a node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tether.api import box
from tether.api.envs import Env
from tether.compute.nodes import Node, head_node, node_code_root, nodes_status
from tether.errors import CapacityError, ConfigError, NotFound
from tether.specs import EnvSpec

if TYPE_CHECKING:
    from tether.api.clusters import Cluster

__all__ = ["Facts", "Held", "assign", "cluster_nodes", "cluster_status", "code_root_on", "held", "node_facts",
           "node_index", "place_env", "resolve_env", "with_gpus"]


def cluster_nodes(cluster: Cluster) -> list[Node]:
    """The cluster's nodes, head first (a single-node backend: its daemon alone)."""
    handle = cluster.up_if_not().handle
    nodes = getattr(cluster.backend, "nodes", None)
    if nodes is None:
        return [head_node(handle.endpoint, handle.token)]
    return list(nodes(cluster.spec, handle))


def cluster_status(cluster: Cluster) -> list[dict[str, Any]]:
    """Every node of the cluster with its daemon's workers and services (the client asks the head's tunnel
    and the tunnels through the head)."""
    return nodes_status(cluster_nodes(cluster))


@dataclass
class Facts:
    """What one node has."""

    cpus: float
    memory: int | None
    """Total memory in bytes (None: unknown)."""
    gpus: int


@dataclass
class Held:
    """What a node's envs already asked for."""

    cpus: float = 0.0
    memory: float = 0.0
    gpu_ids: set[int] = field(default_factory=set)


def _fake_gpus(index: int) -> int | None:
    raw = os.environ.get("TETHER_NODE_GPUS", "").strip()
    if not raw:
        return None
    counts = [int(x) for x in raw.split(",")]
    return counts[min(index, len(counts) - 1)]


def node_facts(cluster: Cluster, nodes: list[Node] | None = None) -> list[Facts]:
    """Each node's CPUs, memory and GPUs, in node order (read on the node)."""
    nodes = nodes if nodes is not None else cluster_nodes(cluster)
    try:
        places = {p.index: p for p in box.places(cluster, "all")}
    except ConfigError:  # an endpoint: no shell on its machines
        places = {}
    out = []
    for node in nodes:
        place = places.get(node.index)
        data = box.usage(place, []) if place is not None else {}
        fake = _fake_gpus(node.index)
        out.append(Facts(cpus=float(data.get("cpus") or 0), memory=data.get("memory_total"),
                         gpus=fake if fake is not None else len(data.get("gpus") or [])))
    return out


def _gpu_ids(spec: dict[str, Any]) -> set[int]:
    raw = str((spec.get("env_vars") or {}).get("CUDA_VISIBLE_DEVICES", ""))
    return {int(x) for x in raw.split(",") if x.strip().isdigit()}


def held(node: Node, skip: set[str] | None = None) -> Held:
    """What the envs on ``node``'s daemon asked for (``skip``: env names not to count, e.g. being replaced)."""
    out = Held()
    for name, spec in node.client().sync.envs().items():
        compute = spec.get("compute") or {}
        if name in (skip or set()) or not compute:
            continue
        out.cpus += float(compute.get("CPU", 0))
        out.memory += float(compute.get("memory", 0))
        if compute.get("GPU"):
            out.gpu_ids |= _gpu_ids(spec)
    return out


def node_index(nodes: list[Node], node: int | str) -> int:
    """The index of ``node`` (an index or a host) among ``nodes``; a ConfigError naming the nodes otherwise."""
    for n in nodes:
        if node in (n.index, n.host, n.address):
            return n.index
    raise ConfigError(f"the cluster has no node {node!r}",
                      hint=f"nodes: {', '.join(f'{n.index} ({n.host})' for n in nodes)}",
                      details={"node": node, "nodes": [n.host for n in nodes]})


def _missing(want: dict[str, float], facts: Facts, used: Held) -> list[str]:
    out = []
    if want.get("CPU") and want["CPU"] > facts.cpus - used.cpus:
        out.append(f"CPU {want['CPU']:g} (free {max(facts.cpus - used.cpus, 0):g} of {facts.cpus:g})")
    if want.get("memory"):
        if facts.memory is None:
            out.append("memory (unknown on this node)")
        elif want["memory"] > facts.memory - used.memory:
            free = max(facts.memory - used.memory, 0) / 2**30
            out.append(f"memory {want['memory'] / 2**30:.3g}GiB (free {free:.3g}GiB of {facts.memory / 2**30:.3g}GiB)")
    free_gpus = facts.gpus - len(used.gpu_ids)
    if want.get("GPU") and want["GPU"] > free_gpus:
        out.append(f"GPU {want['GPU']:g} (free {max(free_gpus, 0)} of {facts.gpus})")
    return out


def assign(env: EnvSpec, nodes: list[Node], facts: list[Facts], used: list[Held], *, start: int = 0,
           cluster: str = "") -> tuple[int, list[int]]:
    """The node for ``env`` (its ``node`` if set, else the first from ``start`` on with room) and the GPU ids it
    gets there; ``used`` is updated with what it takes. A CapacityError naming what each node lacks otherwise."""
    want = dict(env.compute)
    if env.node is not None:  # its place in ``nodes`` (which may be some of the cluster's nodes only)
        order = [[n.index for n in nodes].index(node_index(nodes, env.node))]
    else:
        order = [(start + k) % len(nodes) for k in range(len(nodes))]
    lacks: dict[str, list[str]] = {}
    for i in order:
        missing = _missing(want, facts[i], used[i])
        if missing:
            lacks[nodes[i].host] = missing
            continue
        u = used[i]
        ids = [g for g in range(facts[i].gpus) if g not in u.gpu_ids][: int(want.get("GPU", 0))]
        u.cpus += want.get("CPU", 0.0)
        u.memory += want.get("memory", 0.0)
        u.gpu_ids |= set(ids)
        return i, ids
    asked = ", ".join(f"{k}={v:g}" for k, v in want.items())
    raise CapacityError(
        f"no node of cluster {cluster!r} has what env {env.name!r} asks ({asked}): "
        + "; ".join(f"{host} lacks {', '.join(m)}" for host, m in lacks.items()),
        hint="ask for less (compute=...), free the envs holding it (cluster.delete(env)), or add nodes",
        details={"env": env.name, "compute": want, "missing": lacks})


def with_gpus(env: EnvSpec, ids: list[int]) -> EnvSpec:
    """``env`` with ``CUDA_VISIBLE_DEVICES`` naming the GPUs it was given (unchanged when it asked for none)."""
    if not env.compute.get("GPU"):
        return env
    return env.model_copy(update={"env_vars": {**env.env_vars, "CUDA_VISIBLE_DEVICES": ",".join(map(str, ids))}})


def place_env(cluster: Cluster, env: Env) -> Env:
    """``env`` placed for a single service, to pass to ``.to(cluster, env=...)``: on its ``node`` (made an index)
    or the head, checked against what that node has and given its share of the node's GPUs when it asks for
    resources. A ConfigError when the cluster has no such node, a CapacityError when the node lacks what the env
    asks; an env already deployed under this name is not counted against itself."""
    nodes = cluster_nodes(cluster)
    spec = env.spec
    if spec.node is not None:
        spec = spec.model_copy(update={"node": node_index(nodes, spec.node)})
    if not spec.compute:
        return Env(spec, env.secret_objects)
    node = [nodes[spec.node or 0]]  # an index is the node's place among the cluster's nodes
    _, ids = assign(spec, node, node_facts(cluster, node), [held(node[0], {env.name})], cluster=cluster.name)
    return Env(with_gpus(spec, ids), env.secret_objects)


def code_root_on(cluster: Cluster, node: int | str | None, root: str | None) -> str | None:
    """Where a code tree synced to every node lies on ``node``, given its path on the head."""
    if root is None or node is None or node == 0:
        return root
    return node_code_root(root, cluster.node(0), cluster.node(node))


def resolve_env(cluster: Cluster, env: Env | str | None) -> Env:
    """``env`` as an Env: a name (or none: ``"default"``) means that env as the cluster has it, or a new empty one
    when the cluster does not know it."""
    if isinstance(env, Env):
        return env
    name = env or "default"
    try:
        known = cluster.client.sync.envs().get(name)
    except NotFound:  # a daemon from before envs were listed: it knows no env by name
        known = None
    return Env.from_config(known if known is not None else {"name": name})
