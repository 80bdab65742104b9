"""A dropped network link between a client and its daemon: the client recovers once the link is back."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
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


def _wait_for(path: Path) -> None:
    for _ in range(3000):
        if path.exists():
            return
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


@pytest.mark.parametrize("api", ["sync", "async"])
def test_a_call_whose_link_drops_mid_call_resumes_under_its_call_id(proxied: Any, tmp_path: Path, api: str) -> None:
    proxy, c = proxied
    fn = tether.function(svc.log_wait_count).to(c)
    lines: list[str] = []

    def on_log(event: dict[str, Any]) -> None:
        lines.append(event.get("text", "").strip())

    outcome: dict[str, Any] = {}

    def run() -> None:
        if api == "sync":
            outcome["value"] = fn.call((str(tmp_path),), on_log=on_log)
        else:
            outcome["value"] = asyncio.run(fn.with_options(on_log=on_log).remote_async(str(tmp_path)))

    caller = threading.Thread(target=run)
    caller.start()
    _wait_for(tmp_path / "started")
    time.sleep(0.1)  # the first log line is with the caller
    proxy.cut()  # the connection carrying the call dies mid-call...
    proxy.restore()  # ...and the network is back before the client's retries give up
    (tmp_path / "release").touch()
    caller.join(timeout=60)

    assert outcome["value"] == 1  # the retry re-attached: the function ran once
    assert lines == ["before the wait", "after the wait"]  # no log line lost or repeated
