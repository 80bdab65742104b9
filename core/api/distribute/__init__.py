"""``service.distribute(kind, ...)``: hand a deployed function to a distributed engine on the cluster's nodes.

- ``"pool"``: N replicas spread over the nodes, calls balanced by outstanding work (:class:`Pool`);
- ``"pytorch"``: every rank runs the function with torchrun's environment contract (:class:`Ranks`);
- ``"ray"``: a Ray cluster over the nodes, the function on the head with ``ray.init(address="auto")``;
- ``"dask"``: a scheduler on the head and a worker per node, the function gets a connected ``Client``
  (:class:`Engine` for both).

tether starts and stops these engines; it schedules nothing itself beyond the replica pool's balancing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tether.api.distribute.engines import Engine
from tether.api.distribute.placement import cluster_nodes, cluster_status
from tether.api.distribute.pool import Pool
from tether.api.distribute.ranks import Ranks
from tether.errors import ConfigError

if TYPE_CHECKING:
    from tether.api.services import _Service

__all__ = ["KINDS", "Engine", "Pool", "Ranks", "cluster_nodes", "cluster_status", "distribute"]

KINDS = ("pool", "pytorch", "ray", "dask")


def distribute(service: _Service, kind: str, *, num_replicas: int | None = None,
               replicas_per_node: int | None = None, **options: Any) -> Pool | Ranks | Engine:
    """The distributed form of a deployed ``service`` (see the module docstring for the kinds)."""
    if kind == "pool":
        return Pool(service, num_replicas or 1, replicas_per_node, **options)
    if kind == "pytorch":
        return Ranks(service, num_replicas, replicas_per_node, **options)
    if kind in ("ray", "dask"):
        return Engine(service, kind, **options)
    raise ConfigError(f"unknown distribution {kind!r}", hint=f"one of {', '.join(KINDS)}")
