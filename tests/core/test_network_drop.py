"""A dropped network link between a client and its daemon: the client recovers once the link is back."""

from __future__ import annotations

from typing import Any

import pytest

import tether
from tests.core import services as svc
from tests.netproxy import CuttableProxy


@pytest.fixture
def proxied(local_cluster: Any) -> Any:
    proxy = CuttableProxy("127.0.0.1", int(local_cluster.endpoint.rsplit(":", 1)[1]))
    yield proxy, tether.cluster(name="through-proxy", endpoint=proxy.url, token=local_cluster.token)
    proxy.close()


def test_pooled_connections_cut_while_idle_are_replaced(proxied: Any) -> None:
    proxy, c = proxied
    radd = tether.function(svc.add).to(c)  # deploy (JSON routes) and a call: both leave pooled connections
    assert radd(1, 2) == 3

    proxy.cut()  # every pooled connection dies while the client is idle
    with pytest.raises(tether.ClusterUnavailable):
        radd(2, 3)
    proxy.restore()

    assert tether.function(svc.add).to(c)(3, 4) == 7  # JSON route on a fresh connection, then a call
    assert c.keys() is not None


def test_a_link_cut_while_idle_is_invisible_once_it_is_back(proxied: Any) -> None:
    proxy, c = proxied
    radd = tether.function(svc.add).to(c)
    assert radd(1, 2) == 3

    proxy.cut()
    proxy.restore()  # the pooled connections are dead, the network is fine again

    assert tether.function(svc.add).to(c)(5, 6) == 11
    assert radd(7, 8) == 15
