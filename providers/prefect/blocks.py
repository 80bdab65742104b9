"""``TetherCluster``: a Prefect Block holding where tether calls go (a running daemon, or a cluster spec)."""

from __future__ import annotations

from typing import Any, ClassVar

from prefect.blocks.core import Block
from pydantic import Field, SecretStr, field_validator

import tether
import tether.runs
from tether.errors import ConfigError

__all__ = ["TetherCluster"]


class TetherCluster(Block):
    """Where a flow's tether calls run, saved services included: an already running daemon (``endpoint`` +
    ``token``), or a cluster brought up on first use from ``cluster_spec`` / ``cluster_name``.

    A flow never starts a tether daemon on the machine it runs on unasked: an empty block, or a
    ``cluster_name`` alone that names a local cluster that is not running, fails the call with a
    ``ConfigError`` (opt in with ``allow_local_daemon=True`` on the call, or ``TETHER_ALLOW_LOCAL_DAEMON=1``).
    """

    _block_type_name: ClassVar[str] = "Tether Cluster"
    _block_type_slug: ClassVar[str] = "tether-cluster"
    _description: ClassVar[str] = (
        "Where tether services run: the address and token of a tether daemon, or a cluster spec to bring up."
    )
    _code_example: ClassVar[str] = """
from prefect import flow
from tether.providers.prefect import TetherCluster, tether_task

TetherCluster(endpoint="https://10.0.0.5:32300", token="...").save("BLOCK_NAME")

@tether_task(service="embed", cluster="BLOCK_NAME", retries=2)  # the block is loaded when the task runs
def embed(text: str) -> list[float]: ...

@flow
def pipeline(text: str) -> list[float]:
    return embed(text)
"""

    endpoint: str | None = Field(
        default=None,
        description="Base URL of a running tether daemon, e.g. https://10.0.0.5:32300. Calls never create or "
        "tear it down.",
    )
    token: SecretStr | None = Field(
        default=None, description="Bearer token of the daemon (stored encrypted)."
    )
    cluster_name: str | None = Field(
        default=None, description="Name of the tether cluster; with no spec, a cluster saved under that name."
    )
    cluster_spec: dict[str, Any] | None = Field(
        default=None,
        description="tether ClusterSpec fields (instance_type, provider, autostop_mins, ...) used to bring the "
        "cluster up when it is not running.",
    )

    @field_validator("cluster_spec")
    @classmethod
    def _valid_spec(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:  # fail at save time, not in the middle of a flow run
            try:
                tether.Cluster.from_config(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    def get_cluster(self) -> Any:
        """The ``tether`` cluster this block points at (connected, not yet brought up); None: none given."""
        return self.where().cluster

    def where(self, *, allow_local_daemon: bool | None = None) -> tether.runs.Where:
        """Where calls through this block go, and what to set when that is nowhere."""
        name = self._block_document_name
        return tether.runs.where(
            self.cluster_spec,
            setting=f"the TetherCluster block {name!r} (endpoint, cluster_name or cluster_spec)"
            if name
            else "a TetherCluster block (endpoint, cluster_name or cluster_spec) as cluster=",
            name=self.cluster_name,
            endpoint=self.endpoint,
            token=self.token.get_secret_value() if self.token is not None else None,
            default_name="prefect",
            allow_local_daemon=allow_local_daemon,
            opt_in="allow_local_daemon=True",
        )
