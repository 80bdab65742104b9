"""A cluster that is just a running daemon's URL (and token): ``tether.cluster(endpoint=..., token=...)``.

Whoever started that daemon owns its lifecycle, so "up" is a health check and stop/down are refused. Import-path
code must already be importable at the same path on its host (e.g. a shared checkout).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from tether.client.health import probe_health
from tether.compute.base import ClusterHandle, ClusterStatus
from tether.errors import ClusterUnavailable, ConfigError
from tether.specs import ClusterSpec


def _token(spec: ClusterSpec) -> str | None:
    if spec.token is not None:
        return spec.token.get_secret_value()
    return os.environ.get("TETHER_CLUSTER_TOKEN") or None


class EndpointBackend:
    """Connects to a daemon someone else runs."""

    name: ClassVar[str] = "endpoint"

    def _url(self, spec: ClusterSpec) -> str:
        assert spec.endpoint is not None
        return spec.endpoint.rstrip("/")

    def handle(self, spec: ClusterSpec) -> ClusterHandle | None:
        return ClusterHandle(endpoint=self._url(spec), token=_token(spec), instance_type=spec.instance_type)

    def up(self, spec: ClusterSpec) -> ClusterHandle:
        if self.status(spec) != "up":
            raise ClusterUnavailable(f"no tether daemon answers at {self._url(spec)}",
                                     hint="start it where it runs, or fix endpoint=")
        handle = self.handle(spec)
        assert handle is not None
        return handle

    def status(self, spec: ClusterSpec) -> ClusterStatus:
        return "up" if probe_health(self._url(spec), timeout=5) is not None else "down"

    def stop(self, spec: ClusterSpec) -> None:
        raise ConfigError(f"{self._url(spec)} is not managed from here", hint="stop it where it was started")

    def down(self, spec: ClusterSpec) -> None:
        raise ConfigError(f"{self._url(spec)} is not managed from here", hint="tear it down where it runs")

    def sync_code(self, spec: ClusterSpec, handle: ClusterHandle, root: Path) -> str:
        return str(root)
