"""The compute seam: one small Protocol every backend (local, ssh, sky, ...) implements."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal, Protocol, runtime_checkable

from pydantic import BaseModel, Field

from tether.specs import ClusterSpec

__all__ = ["Backend", "ClusterHandle", "ClusterStatus"]

ClusterStatus = Literal["up", "stopped", "down"]


class ClusterHandle(BaseModel):
    """Where a running cluster's daemon is and what it runs on."""

    endpoint: str = Field(description="base URL of the head daemon as the client reaches it")
    token: str | None = Field(None, repr=False, description="bearer token, when auth is on")
    hosts: list[str] = Field(default_factory=list)
    instance_type: str | None = None
    cloud: str | None = None
    region: str | None = None
    price_per_hour: float | None = None
    tls_fingerprint: str | None = Field(None, description="sha256 of the daemon's certificate, pinned by the client")
    pid: int | None = Field(None, description="local backend: the daemon's process id")
    unix_socket: str | None = Field(None, description="local backend: the daemon's unix socket (faster than TCP)")


@runtime_checkable
class Backend(Protocol):
    """Brings clusters up and down and puts code on them. Adding a backend is adding a file."""

    name: ClassVar[str]

    def up(self, spec: ClusterSpec) -> ClusterHandle:
        """Make sure the daemon runs; idempotent."""
        ...

    def status(self, spec: ClusterSpec) -> ClusterStatus: ...

    def stop(self, spec: ClusterSpec) -> None: ...

    def down(self, spec: ClusterSpec) -> None: ...

    def sync_code(self, spec: ClusterSpec, handle: ClusterHandle, root: Path) -> str:
        """Copy the code tree at ``root`` to the cluster; return its path there."""
        ...
