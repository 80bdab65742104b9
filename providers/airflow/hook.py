"""``TetherHook``: the ``tether`` connection type — registry address, token and the cluster calls go to."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

import tether
import tether.runs
from tether.errors import AuthError

__all__ = ["TetherConnection", "TetherHook", "connection_settings", "make_cluster", "registry_environment"]


@dataclass(frozen=True)
class TetherConnection:
    """What a ``tether`` connection holds, as plain data; secrets stay out of its repr."""

    registry_url: str | None = None
    token: str | None = field(default=None, repr=False)
    cluster: dict[str, Any] | None = None
    cluster_token: str | None = field(default=None, repr=False)


class TetherHook(BaseHook):
    """Reads a ``tether`` connection: host = team registry address, password = token (masked), extra ``cluster``.

    ``extra.cluster`` is a saved cluster's name, a ClusterSpec (``{"name": "a10", "instance_type": "A10G:1"}``),
    or the address of a daemon someone else runs (``{"name": "lab", "endpoint": "https://lab:32300"}``), whose
    token is ``extra.cluster_token`` (else the password). The default connection ``tether_default`` may be
    absent: calls then use the local registry and the embedded local cluster.
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
        try:
            return connection_settings(self.get_connection(self.tether_conn_id))
        except AirflowNotFoundException:
            if self.tether_conn_id == self.default_conn_name:
                return TetherConnection()
            raise

    async def aget_conn(self) -> TetherConnection:
        """:meth:`get_conn` for async code (the triggerer)."""
        if self._settings is None:
            try:
                self._settings = connection_settings(await self.aget_connection(self.tether_conn_id))
            except AirflowNotFoundException:
                if self.tether_conn_id != self.default_conn_name:
                    raise
                self._settings = TetherConnection()
        return self._settings

    def get_cluster(self, override: Any = None) -> Any:
        """The ``tether.Cluster`` calls go to: ``override`` (operator argument) first, then the connection.

        None means "no cluster given": a saved service then runs where it was saved, a function on the
        embedded local cluster.
        """
        return make_cluster(override, self.get_conn())

    def where(self, override: Any = None, *, allow_local_daemon: bool | None = None) -> tether.runs.Where:
        """Where calls go (:meth:`get_cluster`), and what to set when it is nowhere: a task never starts a
        tether daemon on the Airflow worker unless ``allow_local_daemon`` (or ``TETHER_ALLOW_LOCAL_DAEMON=1``)."""
        conn = self.get_conn()
        config = override if override is not None and override != "" else conn.cluster
        return tether.runs.where(
            config,
            setting=f'the "cluster" of the Airflow connection {self.tether_conn_id!r} (its extra) or '
            "RunhouseOperator(cluster=...)",
            token=conn.cluster_token or conn.token,
            default_name="airflow",
            allow_local_daemon=allow_local_daemon,
            opt_in="RunhouseOperator(allow_local_daemon=True)",
        )

    @contextmanager
    def environment(self) -> Iterator[TetherConnection]:
        """Expose the registry address and token to tether (``TETHER_REGISTRY_URL``/``TETHER_TOKEN``)."""
        settings = self.get_conn()
        with registry_environment(settings):
            yield settings

    def test_connection(self) -> tuple[bool, str]:
        """The UI's "Test" button: an authenticated request to the cluster's daemon (its token checked) and, with
        a registry address, one to the team registry (its token checked). Nothing is brought up: a cluster that
        is not running fails the test."""
        try:
            conn = self.get_conn()
            found = [self._test_cluster()]
            if conn.registry_url:
                with registry_environment(conn):
                    names = tether.registry.get_registry().list()
                found.append(f"registry {conn.registry_url} answered with the token ({len(names)} service(s) visible)")
            return True, "; ".join(found)
        except AuthError as exc:
            return False, f"the token was refused: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported to the UI, not raised
            return False, f"{type(exc).__name__}: {exc}"

    def _test_cluster(self) -> str:
        cluster = self.get_cluster()
        if cluster is None:
            return "no cluster configured: saved services run where they were saved"
        if cluster.spec.backend != "endpoint" and not cluster.is_up():
            raise tether.ClusterUnavailable(f"cluster {cluster.name!r} is {cluster.status()}",
                                            hint="the Test brings nothing up; start the cluster first")
        where = cluster.spec.endpoint or cluster.connected().endpoint
        status = cluster.connected().daemon_status()
        running = len(status.get("running_calls", []))
        return f"daemon of cluster {cluster.name!r} at {where} answered with the token ({running} call(s) running)"


def connection_settings(conn: Any) -> TetherConnection:
    """An Airflow ``Connection`` of type ``tether`` as :class:`TetherConnection`; tokens go to the secrets masker."""
    extra = conn.extra_dejson or {}
    token = conn.password or extra.get("token") or None
    cluster_token = extra.get("cluster_token") or None
    for secret in (token, cluster_token):
        if secret:
            mask_secret(secret)
    return TetherConnection(
        registry_url=_registry_url(conn.host, conn.port, extra.get("scheme")),
        token=token,
        cluster=tether.runs.cluster_config(extra.get("cluster")),
        cluster_token=cluster_token,
    )


def _registry_url(host: str | None, port: int | None, scheme: str | None) -> str | None:
    if not host:
        return None
    if "://" in host:
        return host.rstrip("/")
    return f"{scheme or 'http'}://{host}{f':{port}' if port else ''}"


def make_cluster(config: Any, conn: TetherConnection) -> tether.Cluster | None:
    """The ``tether.Cluster`` for ``config`` (a name, JSON, a dict or a Cluster), else the connection's; or None.

    A daemon given by ``endpoint`` gets its token from the connection (``cluster_token``, else the password):
    cluster configs never carry tokens.
    """
    if config is None or config == "":
        config = conn.cluster
    return tether.runs.cluster_from_config(config, token=conn.cluster_token or conn.token, default_name="airflow")


@contextmanager
def registry_environment(conn: TetherConnection) -> Iterator[None]:
    """Set ``TETHER_REGISTRY_URL``/``TETHER_TOKEN`` for the duration (the worker process runs one task).

    Nothing changes without a registry address: the token then belongs to the cluster endpoint only.
    """
    wanted = {
        "TETHER_REGISTRY_URL": conn.registry_url,
        "TETHER_TOKEN": conn.token if conn.registry_url else None,
    }
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
