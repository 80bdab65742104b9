"""A real local daemon serving ``echo``, reached the way a client on another host reaches it: over TCP (plain or
TLS), no unix socket, no ``/dev/shm`` hand-over. Shared by the big-payload tests of the client and the daemon."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import tether
from tests.core import services as svc
from tether.client import DaemonClient

KINDS = ["plain", "tls"]


@contextlib.contextmanager
def echo_cluster(name: str, kind: str) -> Iterator[Any]:
    """Cluster ``name`` (``kind``: plain or tls) with ``echo`` deployed; torn down afterwards."""
    c = tether.cluster(name=name, **({"server_connection_type": "tls"} if kind == "tls" else {})).up_if_not()
    try:
        tether.function(svc.echo).to(c, name="echo")
        yield c
    finally:
        c.teardown()


def tcp_client(c: Any) -> DaemonClient:
    """A client of ``c``'s daemon over TCP (its endpoint, never its unix socket)."""
    h = c.handle
    client = DaemonClient(h.endpoint, h.token, h.tls_fingerprint)
    assert client.unix_socket is None
    return client
