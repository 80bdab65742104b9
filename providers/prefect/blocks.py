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
    """Where a flow's tether calls run: an already running daemon (``endpoint`` + ``token``), or a cluster
    brought up on first use from ``cluster_spec`` / ``cluster_name``. Empty: the embedded local cluster.
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
        """The ``tether`` cluster this block points at (connected, not yet brought up); None: the default."""
        return tether.runs.cluster_from_config(
            self.cluster_spec,
            name=self.cluster_name,
            endpoint=self.endpoint,
            token=self.token.get_secret_value() if self.token is not None else None,
            default_name="prefect",
        )
