"""``.distribute("ray")`` and ``.distribute("dask")``: tether starts the engine over the cluster's nodes and
runs the function on the head against it.

- Ray: ``ray start --head`` on node 0, ``ray start --address`` on every other node; the function runs on the
  head with ``RAY_ADDRESS`` set, so ``ray.init(address="auto")`` inside it joins that cluster.
- Dask: ``dask scheduler`` on the head and one ``dask worker`` on every node (the head too); the function gets a
  connected ``distributed.Client`` as its first argument.

Each engine process belongs to a worker of an env of its own on its node (``<env>.<service>.ray0``, ...) and dies with it
(:mod:`tether.api.distribute.nodeside`): :meth:`Engine.stop`, deleting the env, stopping or tearing down the
cluster all stop the engine. The engine needs its package (``ray[default]``, ``distributed``) in the env.
"""

from __future__ import annotations

import contextlib
import secrets
from typing import TYPE_CHECKING, Any

from tether.api.distribute.placement import Copy, cluster_nodes, gather_all, prefixed, remove_copies
from tether.api.placement import Held, assign, held, node_facts, node_index, with_gpus
from tether.client.loop import run_sync
from tether.client.transport import new_call_id
from tether.compute.nodes import Node, node_code_root
from tether.errors import CallTimeout, ConfigError, TetherError
from tether.specs import CodeRef, ServiceSpec

if TYPE_CHECKING:
    from tether.api.services import _Service

__all__ = ["Engine"]

_SIDE = "tether.api.distribute.nodeside"


class Engine:
    """A Ray or Dask cluster over the nodes, started on the first call; call it like the function."""

    def __init__(self, service: _Service, kind: str, *, port: int | None = None) -> None:
        if service.spec is None or service.cluster is None or service.name is None:
            raise ConfigError(f"{service!r} is not deployed", hint="call .to(cluster) before .distribute()")
        self.service = service
        self.kind = kind
        self.port = port or 20000 + secrets.randbelow(30000)
        self.engines: list[Copy] = []
        self.runner: Copy | None = None
        self.started = False
        self.gpus: list[list[int]] | None = None
        """Per node, the GPU ids its engine offers, when the env asks for resources (``compute``)."""
        if service.spec.env.compute:
            self.gpus = self._place(cluster_nodes(service.cluster))

    def _place(self, nodes: list[Node]) -> list[list[int]]:
        """The env's ``compute`` is what the engine offers on every node: each node must have it (counting what
        its other envs hold; the service's own env, which the engine stands for, aside). The GPU ids of each
        node's engine; a CapacityError naming what a node lacks."""
        svc = self.service
        assert svc.spec is not None and svc.cluster is not None
        skip = {svc.spec.env.name, self._env_name(), *(self._env_name(n.index) for n in nodes)}
        facts = node_facts(svc.cluster, nodes)
        used: list[Held] = [held(n, skip) for n in nodes]
        return [assign(svc.spec.env.model_copy(update={"node": n.index}), nodes, facts, used,
                       cluster=svc.cluster.name)[1] for n in nodes]  # fmt: skip

    def _env_name(self, node: int | None = None) -> str:
        """The env of this engine's process on node ``node`` (None: the runner's, on the head); envs of its own,
        so another service's engine is another env."""
        assert self.service.spec is not None
        base = f"{self.service.spec.env.name}.{self.service.name}.{self.kind}"
        return base if node is None else f"{base}{node}"

    @property
    def address(self) -> str:
        head = self.engines[0].node.address if self.engines else "127.0.0.1"
        return f"tcp://{head}:{self.port}" if self.kind == "dask" else f"{head}:{self.port}"

    def _side(self, node: Any, name: str, env_name: str, qualname: str, env_vars: dict[str, str]) -> Copy:
        """A copy of the service's env on ``node`` running one of nodeside's functions: an engine's holds the
        env's ``compute`` on its node (and its GPUs); the runner, beside the head's engine, holds none."""
        assert self.service.spec is not None
        base = self.service.spec.env
        env = base.model_copy(update={"name": env_name, "env_vars": {**base.env_vars, **env_vars}, "node": node.index})
        if qualname == "start_engine" and self.gpus is not None:
            env = with_gpus(env, self.gpus[node.index])
        elif qualname != "start_engine":
            env = env.model_copy(update={"compute": {}})
        spec = ServiceSpec(name=name, kind="function", env=env, code=CodeRef(import_path=_SIDE, qualname=qualname))
        return Copy(node.index, node, name, env_name, spec)

    def start(self) -> Engine:
        """Start the engine on every node (idempotent) and wait until every node has joined."""
        if self.started:
            return self
        svc, spec = self.service, self.service.spec
        assert spec is not None and svc.cluster is not None
        nodes = cluster_nodes(svc.cluster)
        self.engines = [self._side(n, f"{svc.name}.{self.kind}{n.index}", self._env_name(n.index), "start_engine", {})
                        for n in nodes]  # fmt: skip
        head = nodes[0]
        extra = {"RAY_ADDRESS": self.address} if self.kind == "ray" else {}
        self.runner = self._side(head, f"{svc.name}.{self.kind}-run", self._env_name(), "run_function", extra)
        user = spec.model_copy(update={"name": f"{svc.name}.{self.kind}", "env": self.runner.spec.env})
        if user.code.root:  # the user's code on the head's sys.path, beside the runner (the service may be on another)
            source = nodes[node_index(nodes, spec.env.node)] if spec.env.node is not None else head
            user.code = CodeRef(**{**user.code.model_dump(), "root": node_code_root(user.code.root, source, head)})
        run_sync(self._start(user))
        self.started = True
        return self

    async def _start(self, user: ServiceSpec) -> None:
        assert self.runner is not None
        await gather_all([c.node.client().deploy(c.spec, replace_env=True) for c in [*self.engines, self.runner]])
        await gather_all([c.node.client().deploy(self._stopper(c)) for c in self.engines])
        await self.runner.node.client().deploy(user, replace_env=True)
        head, rest = self.engines[0], self.engines[1:]
        addr = head.node.address
        first = "head" if self.kind == "ray" else "scheduler"
        res = self._resources
        await self._side_call(head, "start_engine", (self.kind, first, addr, self.port, addr, 120, res(head)))
        if self.kind == "dask":  # the head node runs a worker too: one worker per node
            rest = self.engines
        await gather_all([self._side_call(c, "start_engine", (self.kind, "worker", c.node.address, self.port, addr,
                                                              120, res(c))) for c in rest])  # fmt: skip
        await self._side_call(self.runner, "wait_nodes", (self.kind, self.address, len(self.engines)))

    def _resources(self, c: Copy) -> dict[str, float] | None:
        """What node ``c``'s engine offers: the env's ``compute`` (its GPUs: as many as it was given)."""
        if self.gpus is None:
            return None
        res = dict(self.service.spec.env.compute) if self.service.spec is not None else {}
        if "GPU" in res:
            res["GPU"] = float(len(self.gpus[c.node.index]))
        return res

    async def _side_call(self, c: Copy, what: str, args: tuple[Any, ...]) -> Any:
        sink = prefixed(self.service.options.on_log, f"[{self.kind} node {c.node.index}] ")
        name = c.service if what == "start_engine" else c.service.rsplit("-run", 1)[0] + "-wait"
        if what == "wait_nodes":  # a second service of the runner's env
            spec = c.spec.model_copy(update={"name": name, "code": CodeRef(import_path=_SIDE, qualname=what)})
            await c.node.client().deploy(spec)
        return await c.node.client().call(name, None, args, {}, call_id=new_call_id(), on_log=sink)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.call(args, kwargs)

    def call(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> Any:
        """Run the function on the head against the engine (started first if needed)."""
        self.start()
        assert self.runner is not None and self.service.spec is not None
        code = self.service.spec.code
        ref = {"import_path": code.import_path, "qualname": code.qualname, "pickled_b64": code.pickled_b64}
        client = self.runner.node.client()
        call_id = new_call_id()

        async def run() -> Any:
            try:
                return await client.call(self.runner.service, None, (self.kind, self.address, ref, tuple(args),  # type: ignore[union-attr]
                                                                      dict(kwargs or {})), {}, call_id=call_id,
                                         on_log=self.service.options.on_log)  # fmt: skip
            except BaseException as exc:
                if not isinstance(exc, Exception):  # interrupted: stop the function and every engine process
                    await remove_copies([*self.engines, self.runner])  # type: ignore[list-item]
                    self.started = False
                raise

        try:
            return run_sync(run(), timeout=timeout)
        except TimeoutError as exc:
            raise CallTimeout(f"{self.service.name!r} on {self.kind} did not finish within {timeout}s",
                              details={"service": self.service.name}) from exc

    @staticmethod
    def _stopper(c: Copy) -> ServiceSpec:
        return c.spec.model_copy(update={"name": f"{c.service}-stop",
                                         "code": CodeRef(import_path=_SIDE, qualname="stop_engines")})

    async def _stop(self) -> None:
        async def one(c: Copy) -> None:
            with contextlib.suppress(TetherError):  # a gone env: its engine died with its worker
                await c.node.client().call(f"{c.service}-stop", None, (), {}, call_id=new_call_id(), on_log=None)

        await gather_all([one(c) for c in self.engines])  # the engine's processes have exited when it returns
        await remove_copies([*self.engines, *([self.runner] if self.runner else [])])

    def stop(self) -> None:
        """Stop the engine on every node (waiting for its processes to exit) and the function's env."""
        run_sync(self._stop())
        self.started = False

    delete = stop

    def __repr__(self) -> str:
        return f"Engine({self.kind!r}, {self.service.name!r}, nodes={len(self.engines)})"
