"""``TetherHook``: the ``tether`` connection type — registry address, token and the cluster calls go to."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import tether
from airflow.sdk import BaseHook
from tether.errors import ConfigError

__all__ = ["TetherConnection", "TetherHook"]


@dataclass(frozen=True)
class TetherConnection:
    """What a ``tether`` connection holds, as plain data (JSON-safe, so a trigger can carry it)."""

    registry_url: str | None = None
    token: str | None = field(default=None, repr=False)
    cluster: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"registry_url": self.registry_url, "token": self.token, "cluster": self.cluster}


class TetherHook(BaseHook):
    """Reads a ``tether`` connection: host = registry address, password = token (masked), extra ``cluster``.

    ``extra`` may hold ``{"cluster": "<name>"}`` (a saved cluster) or a ClusterSpec ``{"cluster": {"name": ...,
    "instance_type": ...}}``. The default connection ``tether_default`` may be absent: calls then use the local registry and the
    embedded local cluster.
    """

    conn_name_attr = "tether_conn_id"
    default_conn_name = "tether_default"
    conn_type = "tether"
    hook_name = "Tether"

    def __init__(self, tether_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.tether_conn_id = tether_conn_id
        self._settings: TetherConnection | None = None

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """How the connection form labels the standard fields (the provider info says the same)."""
        return {
            "hidden_fields": ["schema", "login"],
            "relabeling": {"host": "Registry address", "password": "Token"},
            "placeholders": {"extra": '{"cluster": {"name": "a10", "instance_type": "A10G:1"}}'},
        }

    def get_conn(self) -> TetherConnection:
        """The connection's settings; the token is registered with Airflow's secrets masker."""
        if self._settings is None:
            self._settings = self._load()
        return self._settings

    def _load(self) -> TetherConnection:
        from airflow.sdk.exceptions import AirflowNotFoundException
        from airflow.sdk.log import mask_secret

        try:
            conn = self.get_connection(self.tether_conn_id)
        except AirflowNotFoundException:
            if self.tether_conn_id == self.default_conn_name:
                return TetherConnection()
            raise
        extra = conn.extra_dejson or {}
        token = conn.password or extra.get("token") or None
        if token:
            mask_secret(token)
        return TetherConnection(
            registry_url=_registry_url(conn.host, conn.port, extra.get("scheme")),
            token=token,
            cluster=cluster_config(extra.get("cluster")),
        )

    def get_cluster(self, override: Any = None) -> Any:
        """The ``tether.Cluster`` calls go to: ``override`` (operator argument) first, then the connection.

        None means "no cluster given": a saved service then runs where it was saved, a function on the
        embedded local cluster.
        """
        return make_cluster(cluster_config(override) if override is not None else None, self.get_conn())

    @contextmanager
    def environment(self) -> Iterator[TetherConnection]:
        """Expose the registry address and token to tether (``TETHER_REGISTRY_URL``/``TETHER_TOKEN``)."""
        settings = self.get_conn()
        with registry_environment(settings):
            yield settings

    def test_connection(self) -> tuple[bool, str]:
        """The UI's "Test" button: reach the cluster's daemon (bringing nothing up)."""
        try:
            cluster = self.get_cluster()
            if cluster is None:
                return True, "no cluster configured; calls use the embedded local cluster"
            return True, f"cluster {cluster.name!r} is {cluster.status()}"
        except Exception as exc:  # noqa: BLE001 - reported to the UI, not raised
            return False, str(exc)


def _registry_url(host: str | None, port: int | None, scheme: str | None) -> str | None:
    if not host:
        return None
    if "://" in host:
        return host.rstrip("/")
    return f"{scheme or 'http'}://{host}{f':{port}' if port else ''}"


def cluster_config(value: Any) -> dict[str, Any] | None:
    """Normalise a cluster given as a name, a JSON string, a dict or a ``tether.Cluster`` into a config dict."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("{"):
            try:
                parsed = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"cluster is not valid JSON: {exc}") from None
            return dict(parsed)
        return {"name": text}
    config = getattr(value, "config", None)
    if callable(config):
        return {k: v for k, v in dict(config()).items() if k != "kind"}
    raise ConfigError(
        f"cannot use {type(value).__name__} as a cluster", hint="pass a name, a dict or tether.cluster(...)"
    )


def make_cluster(config: dict[str, Any] | None, conn: TetherConnection) -> Any:
    """The ``tether.Cluster`` for ``config`` (falling back to the connection's cluster), or None."""
    config = config if config is not None else conn.cluster
    if config is None:
        return None
    if set(config) == {"name"}:
        return tether.cluster(name=config["name"])  # a saved cluster of that name, else a local one
    return tether.Cluster.from_config(config)


@contextmanager
def registry_environment(conn: TetherConnection) -> Iterator[None]:
    """Set ``TETHER_REGISTRY_URL``/``TETHER_TOKEN`` for the duration (the worker process runs one task)."""
    wanted = {"TETHER_REGISTRY_URL": conn.registry_url, "TETHER_TOKEN": conn.token}
    saved = {k: os.environ.get(k) for k in wanted}
    try:
        for k, v in wanted.items():
            if v:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
