"""Where the copies of a distributed service live: one env (so one worker process) per replica or rank, spread
over the cluster's nodes, deployed to each node's daemon (reached through the head, see
:mod:`tether.compute.nodes`)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from tether.api.placement import (
    Held,
    assign,
    cluster_nodes,
    cluster_status,
    held,
    node_facts,
    node_index,
    with_gpus,
)
from tether.client import LogSink
from tether.client.loop import run_sync
from tether.compute.nodes import Node, node_code_root
from tether.errors import ConfigError, NotFound, TetherError
from tether.specs import CodeRef, ServiceSpec

if TYPE_CHECKING:
    from tether.api.services import _Service

__all__ = ["Copy", "Placement", "cluster_nodes", "cluster_status", "gpu_slice", "prefixed", "spread"]

T = TypeVar("T")


def spread(count: int, nodes: int, per_node: int | None) -> list[int]:
    """The node of each of ``count`` copies: ``per_node`` on each node in order, or round robin without it."""
    if count < 1:
        raise ConfigError(f"num_replicas must be at least 1, not {count}")
    if per_node is None:
        return [i % nodes for i in range(count)]
    if per_node < 1 or count > per_node * nodes:
        raise ConfigError(f"{count} replicas do not fit {nodes} node(s) x {per_node} per node",
                          hint="raise replicas_per_node or the cluster's nodes", details={"nodes": nodes})
    return [i // per_node for i in range(count)]


def prefixed(sink: LogSink | None, prefix: str) -> LogSink | None:
    """A log sink that puts ``prefix`` before every line of a copy's output."""
    if sink is None:
        return None

    def emit(event: dict[str, Any]) -> None:
        event = dict(event)
        if "text" in event:
            text = str(event["text"])
            ends = text.endswith("\n")
            lines = text[:-1].split("\n") if ends else text.split("\n")
            event["text"] = "\n".join(f"{prefix}{line}" for line in lines) + ("\n" if ends else "")
        else:
            event["msg"] = f"{prefix}{event.get('msg', '')}"
        sink(event)

    return emit


@dataclass
class Copy:
    """One replica or rank: a service in its own env on one node."""

    index: int
    node: Node
    service: str
    env: str
    spec: ServiceSpec
    outstanding: int = 0


@dataclass
class Placement:
    """The copies of one service, as deployed (``deploy``) and removed (``remove``)."""

    service: _Service
    kind: str
    count: int
    per_node: int | None = None
    env_vars: Callable[[int, list[Copy]], dict[str, str]] | None = None
    gpus_per_copy: int | None = None
    """Partition each node's GPUs: copy ``j`` of a node sees GPUs ``j*g .. j*g+g-1`` (``CUDA_VISIBLE_DEVICES``)."""
    nodes: list[Node] = field(default_factory=list)
    copies: list[Copy] = field(default_factory=list)

    def plan(self) -> list[Copy]:
        """Choose the nodes and make the copies' specs (nothing deployed yet)."""
        svc = self.service
        if svc.spec is None or svc.cluster is None or svc.name is None:
            raise ConfigError(f"{svc!r} is not deployed", hint="call .to(cluster) before .distribute()")
        self.nodes = cluster_nodes(svc.cluster)
        where = spread(self.count, len(self.nodes), self.per_node)
        base: ServiceSpec = svc.spec
        names = [f"{base.env.name}.{svc.name}.{self.kind}{i}" for i in range(self.count)]
        gpus: list[list[int]] = [[] for _ in names]
        if base.env.compute or base.env.node is not None:
            where, gpus = self._by_resources(base, where, names)
        copies = []
        source = self.nodes[node_index(self.nodes, base.env.node) if base.env.node is not None else 0]  # the base's
        for i, n in enumerate(where):
            node = self.nodes[n]
            env = with_gpus(base.env.model_copy(update={"name": names[i]}), gpus[i])
            code = base.code
            if code.root:
                code = CodeRef(**{**code.model_dump(), "root": node_code_root(code.root, source, node)})
            spec = base.model_copy(update={"name": f"{svc.name}.{self.kind}{i}", "env": env, "code": code})
            copies.append(Copy(i, node, spec.name, env.name, spec))
        for c in copies:
            extra = self.env_vars(c.index, copies) if self.env_vars is not None else {}
            if self.gpus_per_copy:
                extra["CUDA_VISIBLE_DEVICES"] = gpu_slice(c, copies, self.gpus_per_copy)
            if extra:
                env = c.spec.env.model_copy(update={"env_vars": {**c.spec.env.env_vars, **extra}})
                c.spec = c.spec.model_copy(update={"env": env})
        self.copies = copies
        return copies

    def _by_resources(self, base: ServiceSpec, where: list[int], names: list[str]) -> tuple[list[int],
                                                                                            list[list[int]]]:
        """Nodes (and GPUs) for copies of an env that asks for resources or a node: each copy on the first node
        from its spread place on with room, counting what the nodes' other envs hold (the copies' own envs and
        the base env, which the copies stand in for, aside). CapacityError when a copy fits nowhere."""
        assert self.service.cluster is not None
        facts = node_facts(self.service.cluster, self.nodes)
        skip = {base.env.name, *names}
        used: list[Held] = [held(n, skip) for n in self.nodes]
        placed = [assign(base.env, self.nodes, facts, used, start=w, cluster=self.service.cluster.name)
                  for w in where]
        return [p[0] for p in placed], [p[1] for p in placed]

    def reconnect(self, c: Copy) -> None:
        """The client lost its tunnel to ``c``'s node (its ssh connection dropped): look the nodes up again,
        which reopens every dead tunnel, and point the copies on that node at the new one."""
        cluster = self.service.cluster
        assert cluster is not None
        cluster.forget_nodes()  # the cluster's own per-node clients (tether.env(node=k) services) too
        self.nodes = cluster_nodes(cluster)
        fresh = self.nodes[c.node.index]
        for x in self.copies:
            if x.node.index == fresh.index:
                x.node = fresh

    def deploy(self, *, replace_env: bool = True) -> list[Copy]:
        """Deploy every copy (in parallel): each starts its worker and imports the service there."""
        copies = self.copies or self.plan()
        run_sync(gather_all([_deploy(c, replace_env) for c in copies]))
        return copies

    def remove(self) -> None:
        """Delete every copy's env on its node: its worker stops and its running calls end (``WorkerDied``)."""
        run_sync(remove_copies(self.copies))


def gpu_slice(c: Copy, copies: list[Copy], per_copy: int) -> str:
    """The GPUs copy ``c`` sees: its own ``per_copy`` of its node's, by its place among that node's copies."""
    j = [x.index for x in copies if x.node.index == c.node.index].index(c.index)
    return ",".join(str(j * per_copy + k) for k in range(per_copy))


async def _deploy(c: Copy, replace_env: bool) -> None:
    await c.node.client().deploy(c.spec, replace_env=replace_env)


async def remove_copies(copies: list[Copy]) -> None:
    """Delete the copies' envs (those already gone are fine)."""
    async def one(c: Copy) -> None:
        with contextlib.suppress(NotFound):
            await c.node.client().delete_env(c.env)

    await gather_all([one(c) for c in copies])


async def gather_all(aws: list[Awaitable[T]]) -> list[T]:
    """Run all; when one fails, wait for the rest, then raise the first failure (a TetherError first)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        raise next((e for e in errors if isinstance(e, TetherError)), errors[0])
    return list(results)  # type: ignore[arg-type]
