"""``.distribute("pytorch", num_replicas=W, replicas_per_node=P)``: every rank runs the function, as torchrun
would run it: fresh processes per call, one per rank, each with torchrun's environment (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``GROUP_RANK``,
``OMP_NUM_THREADS=1``), so ``torch.distributed.init_process_group()`` finds its peers.

A call returns one result per rank, in rank order; each rank's output comes back prefixed ``[rank r] ``. When
a rank fails, the others are stopped (their workers killed: a collective blocked on a dead peer never
returns on its own) and the failing rank's own exception is raised, with its remote traceback. Cancelling,
a timeout or an interrupt stops every rank the same way; when the call ends, its rank processes are gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
from typing import TYPE_CHECKING, Any

from tether.api.distribute.placement import (
    Copy,
    Placement,
    cluster_nodes,
    gather_all,
    prefixed,
    remove_copies,
)
from tether.client.loop import run_sync
from tether.client.transport import new_call_id
from tether.errors import CallCancelled, CallTimeout, ConfigError, TetherError, WorkerDied
from tether.escalation import Ladder
from tether.specs import CodeRef, ServiceSpec

if TYPE_CHECKING:
    from tether.api.services import _Service

__all__ = ["Ranks", "torchrun_env"]


def torchrun_env(rank: int, copies: list[Copy], port: int) -> dict[str, str]:
    """torchrun's environment for ``rank`` of the group ``copies`` (rank 0's node is the master)."""
    me = copies[rank]
    local = [c for c in copies if c.node.index == me.node.index]
    return {
        "MASTER_ADDR": copies[0].node.address, "MASTER_PORT": str(port), "RANK": str(rank),
        "WORLD_SIZE": str(len(copies)), "LOCAL_RANK": str(local.index(me)), "LOCAL_WORLD_SIZE": str(len(local)),
        "GROUP_RANK": str(me.node.index), "ROLE_RANK": str(rank), "ROLE_WORLD_SIZE": str(len(copies)),
        "OMP_NUM_THREADS": "1", "TORCHELASTIC_RUN_ID": "tether",
    }  # fmt: skip


class Ranks:
    """A function run by every rank of a torch.distributed group; call it like the function."""

    def __init__(self, service: _Service, num_replicas: int | None = None, replicas_per_node: int | None = None,
                 *, master_port: int | None = None) -> None:
        if service.cluster is None:
            raise ConfigError(f"{service!r} is not deployed", hint="call .to(cluster) before .distribute()")
        self.service = service
        self.per_node = replicas_per_node
        self.world = num_replicas or len(cluster_nodes(service.cluster)) * (replicas_per_node or 1)
        self.master_port = master_port
        self.last: Placement | None = None
        self._cancelled = False
        self._rung: tuple[int, Any, _Service | None] = (0, None, None)
        """Where escalated calls start: the rung index, its cluster and the service copied there."""
        self._running = threading.Lock()  # one group run at a time: the ranks' envs and ports are the group's

    def _placement(self, service: _Service) -> Placement:
        port = self.master_port or 20000 + secrets.randbelow(30000)
        return Placement(service, "rank", self.world, self.per_node,
                         env_vars=lambda i, copies: torchrun_env(i, copies, port))  # fmt: skip

    def __call__(self, *args: Any, **kwargs: Any) -> list[Any]:
        return self.call(args, kwargs)

    def call(self, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None, *,
             timeout: float | None = None) -> list[Any]:
        """Run every rank; one result per rank. ``timeout``: :class:`CallTimeout` after stopping every rank.

        With the service's ``on_oom`` policy, a rank killed for memory makes the whole group run again on the
        next rung (every rank there); later calls start on the rung that worked. Calls from several threads run
        one after another (a group runs one job at a time)."""
        with self._running:
            return self._call(args, kwargs, timeout)

    def _call(self, args: tuple[Any, ...], kwargs: dict[str, Any] | None, timeout: float | None) -> list[Any]:
        policy = self.service.options.on_oom
        if policy is None:
            return self._call_on(self.service, args, kwargs, timeout)
        assert self.service.cluster is not None
        start, start_cluster, target = self._rung
        ladder = Ladder(policy, self.service.cluster, start=start, start_cluster=start_cluster,
                        on_attempt=self.service.options.on_attempt)
        while True:
            step = ladder.next_step()
            try:
                if target is None:  # the first attempt starts where the last call succeeded
                    target = self._on_rung(step.cluster)
                ladder.calling(step)
                results = self._call_on(target, args, kwargs, timeout)
            except BaseException as exc:
                target = None
                ladder.failed(step, exc)  # raises unless the next rung may help
                continue
            ladder.succeeded(step)
            self._rung = (ladder.rung_index(step), step.cluster, target)
            return results

    def _on_rung(self, cluster: Any) -> _Service:
        """The service (escalation off) deployed on ``cluster``, in the same env: what a rung's ranks copy."""
        if cluster is self.service.cluster:
            return self.service.with_options(on_oom=None)
        cluster.up_if_not()
        return self.service.with_options(on_oom=None).with_cluster(cluster, env=self.service.env)

    def _call_on(self, service: _Service, args: tuple[Any, ...], kwargs: dict[str, Any] | None,
                 timeout: float | None) -> list[Any]:
        """One run of every rank, copies of ``service`` (the deployed one, or its copy on an escalation rung)."""
        placement = self._placement(service)
        placement.plan()
        self.last, self._cancelled = placement, False
        try:
            return run_sync(self._run(placement, tuple(args), dict(kwargs or {})), timeout=timeout)
        except TimeoutError as exc:
            raise CallTimeout(f"the ranks of {self.service.name!r} did not finish within {timeout}s",
                              details={"service": self.service.name, "world_size": self.world}) from exc

    async def _rank(self, c: Copy, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        sink = prefixed(self.service.options.on_log, f"[rank {c.index}] ")
        code = c.spec.code
        ref = {"import_path": code.import_path, "qualname": code.qualname, "pickled_b64": code.pickled_b64}
        return await c.node.client().call(f"{c.service}-run", None, (ref, args, kwargs), {}, call_id=new_call_id(),
                                          on_log=sink, caller=self.service.options.caller)  # fmt: skip

    @staticmethod
    def _runner(c: Copy) -> ServiceSpec:
        """The rank's runner beside the user's service in its env (which puts the user's code on its path)."""
        return ServiceSpec(name=f"{c.service}-run", kind="function", env=c.spec.env,
                           code=CodeRef(import_path="tether.api.distribute.nodeside", qualname="run_rank"))

    async def _run(self, placement: Placement, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Any]:
        copies = placement.copies
        tasks: list[asyncio.Future[Any]] = []
        try:
            await remove_copies(copies)  # what an earlier call on these names may have left
            await gather_all([c.node.client().deploy(c.spec, replace_env=True) for c in copies])
            await gather_all([c.node.client().deploy(self._runner(c)) for c in copies])
            tasks += [asyncio.ensure_future(self._rank(c, args, kwargs)) for c in copies]
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = [(c, t.exception()) for c, t in zip(copies, tasks, strict=True)
                      if t.done() and not t.cancelled() and t.exception() is not None]
            if failed:
                await remove_copies(copies)  # the others may wait forever on the failed peer: stop them
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                if self._cancelled:
                    raise CallCancelled(f"the ranks of {self.service.name!r} were cancelled",
                                        details={"service": self.service.name, "world_size": len(copies)})
                c, exc = _first_cause(failed)
                assert exc is not None
                exc.add_note(f"raised by rank {c.index} of {len(copies)} (node {c.node.index}, {c.node.host}); "
                             "the other ranks were stopped")
                raise exc
            return [t.result() for t in tasks]
        finally:
            with contextlib.suppress(Exception):  # the ranks' processes end with the call, whatever ended it
                await asyncio.shield(remove_copies(copies))
            for t in tasks:
                t.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.shield(asyncio.gather(*tasks, return_exceptions=True))

    def cancel(self) -> None:
        """Stop every rank of the call running now (from another thread); that call raises ``CallCancelled``."""
        if self.last is not None:
            self._cancelled = True
            run_sync(remove_copies(self.last.copies))

    def __repr__(self) -> str:
        return f"Ranks({self.service.name!r}, world_size={self.world})"


def _first_cause(failed: list[tuple[Copy, BaseException | None]]) -> tuple[Copy, BaseException | None]:
    """The rank that failed on its own: its user exception before a dead worker, before a cancellation."""
    def weight(item: tuple[Copy, BaseException | None]) -> int:
        exc = item[1]
        if isinstance(exc, CallCancelled):
            return 3
        if isinstance(exc, WorkerDied):
            return 2
        return 1 if isinstance(exc, TetherError) else 0

    return min(failed, key=weight)
