"""A ``tether.Cluster`` for a daemon that is already running at a known address (a ``TetherCluster`` endpoint).

Stand-in until ``tether.cluster(endpoint=..., token=...)`` exists in core: such a cluster is never launched or
torn down from here, and it is "up" exactly when its daemon answers.
"""

from __future__ import annotations

from tether.clusters import Cluster
from tether.compute import ClusterHandle
from tether.errors import ConfigError, TetherError
from tether.loop import run_sync
from tether.specs import ClusterSpec

__all__ = ["EndpointCluster"]


class EndpointCluster(Cluster):
    """A cluster reached at ``endpoint`` with ``token``; its lifecycle belongs to whoever runs the daemon."""

    def __init__(self, name: str, endpoint: str, token: str | None = None) -> None:
        super().__init__(ClusterSpec(name=name))
        self._fixed = ClusterHandle(endpoint=endpoint.rstrip("/"), token=token)

    @property
    def handle(self) -> ClusterHandle:
        return self._fixed

    def connected(self) -> EndpointCluster:
        return self

    def up(self) -> EndpointCluster:
        return self

    def up_if_not(self) -> EndpointCluster:
        return self

    def status(self) -> str:
        try:
            run_sync(self.client.request("GET", "/health", timeout=10))
        except TetherError:
            return "down"
        return "up"

    def stop(self) -> None:
        raise ConfigError(f"cluster {self.name!r} at {self._fixed.endpoint} is not managed by tether here")

    teardown = down = stop

    def __repr__(self) -> str:
        return f"EndpointCluster({self.name!r}, {self._fixed.endpoint!r})"
