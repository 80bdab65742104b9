"""Big results of private calls from clients not on this host go into files the daemon reuses
(``tether.daemon.result_pool``): a call whose id only its caller knows (``X-Tether-Private``) gets one of the
daemon's files, its worker keeps it mapped, and the file comes back once the caller says it has the result
(``X-Tether-Received``) or the call leaves the table. Real daemons and workers over TCP, plain and TLS: results
arrive intact, files are reused rather than piling up, a result stays attachable until its caller has it, and
such a result is never adopted from the journal after a restart (a reused file is never an old call's result)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.tcp_clusters import KINDS, echo_cluster, tcp_client
from tether.client import DaemonClient
from tether.client.loop import run_sync
from tether.daemon import protocol as p
from tether.daemon import result_pool
from tether.daemon.calls import Call, CallTable
from tether.errors import NotFound
from tether.protocol.shm import SHM_DIR

pytestmark = pytest.mark.skipif(SHM_DIR is None, reason="needs a writable /dev/shm")

MB = 1024 * 1024


@pytest.fixture(scope="module", params=KINDS)
def cluster(request: pytest.FixtureRequest, module_home: Any) -> Iterator[Any]:
    with echo_cluster(f"pool-{request.param}", request.param) as c:
        yield c


def _daemon_files(pid: int) -> set[str]:
    return {f for f in os.listdir("/dev/shm") if f.startswith(f"tether-{pid}-")}


def _private(client: DaemonClient, payload: Any) -> Any:
    return client.call_sync("echo", None, (payload,), {}, call_id=os.urandom(8).hex(), lend=True)


def test_private_big_results_come_back_intact_through_files_the_daemon_reuses(cluster: Any) -> None:
    client = tcp_client(cluster)
    pid = client.sync.daemon_status()["pid"]
    payloads = [os.urandom(3 * MB + i) for i in range(8)]
    assert _private(client, payloads[0]) == payloads[0]  # the target returns big results: noted
    assert _private(client, payloads[1]) == payloads[1]
    before = _daemon_files(pid)
    for payload in payloads[2:]:
        assert _private(client, payload) == payload

    async def more() -> list[Any]:
        return [await client.call("echo", None, (q,), {}, call_id=os.urandom(8).hex(), lend=True) for q in payloads]

    assert run_sync(more()) == payloads
    grown = _daemon_files(pid) - before
    assert len(grown) <= 2  # reused: not one kept file per call (14 calls here)


def test_a_private_result_stays_attachable_until_its_caller_says_it_has_it(cluster: Any) -> None:
    client, other = tcp_client(cluster), tcp_client(cluster)
    warm = os.urandom(2 * MB)
    assert _private(client, warm) == warm
    payload = os.urandom(4 * MB)
    call_id = os.urandom(8).hex()
    assert client.call_sync("echo", None, (payload,), {}, call_id=call_id, lend=True) == payload
    assert other.sync.attach(call_id) == payload  # a link that dropped could still re-attach
    assert _private(client, b"next") == b"next"  # this request says the caller has that result
    with pytest.raises(NotFound, match="not kept"):
        other.sync.attach(call_id)


def test_a_call_with_an_id_of_its_own_keeps_its_result_for_anyone_holding_the_id(cluster: Any) -> None:
    client, other = tcp_client(cluster), tcp_client(cluster)
    payload = os.urandom(3 * MB)
    call_id = os.urandom(8).hex()
    for _ in range(2):
        _private(client, os.urandom(2 * MB))
    assert client.call_sync("echo", None, (payload,), {}, call_id=call_id) == payload  # not private: lend=False
    for _ in range(3):
        _private(client, os.urandom(2 * MB))
    assert other.sync.attach(call_id) == payload


def test_a_private_result_is_never_adopted_from_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After a restart the file may have been reused for another call's result: the call answers not kept."""
    monkeypatch.setattr(result_pool, "POOL", result_pool.ResultPool())
    table = CallTable.recover(tmp_path)
    path = result_pool.POOL.take()
    assert path is not None
    with open(path, "r+b") as f:
        f.write(b"\x80" + os.urandom(2 * MB) + b".")
    call = Call("c1", "echo", None, False, pooled=path)
    table.add(call)
    call.add(p.RESULT, {"_slab": path, "_size": 2 * MB + 2}, b"")
    assert call.done and call.frames[-1][1].get("_pooled") and call.pooled == path
    table.close()
    again = CallTable.recover(tmp_path)
    recovered = again.get("c1")
    assert recovered is not None and recovered.pooled is None
    meta = recovered.frames[-1][1]
    assert "_shm" not in meta and meta["_slab"] == path  # answered as not kept
    assert os.path.exists(path)  # not renamed away into the new daemon's files
    again.close()
    result_pool.POOL.close()


def test_the_pool_keeps_a_few_files_and_removes_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = result_pool.ResultPool(keep=2)
    taken = [pool.take() for _ in range(3)]
    assert all(t is not None and os.path.exists(t) for t in taken)
    for t in taken:
        assert t is not None
        pool.give_back(t)
    assert pool.free == taken[:2] and not os.path.exists(str(taken[2]))
    assert pool.take() == taken[1]  # the most recently returned first
    pool.close()
    assert not any(os.path.exists(str(t)) for t in taken)


def test_a_call_that_ends_without_a_big_result_gives_its_file_back_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    pool = result_pool.ResultPool()
    monkeypatch.setattr(result_pool, "POOL", pool)
    path = pool.take()
    call = Call("c2", "echo", None, False, pooled=path)
    call.add(p.RESULT, {}, b"\x80\x05K\x01.")  # a small result, in the frame itself
    assert call.pooled is None and pool.free == [path]
    pool.close()


def test_the_pool_maps_each_file_once_and_follows_it_when_the_worker_grows_it() -> None:
    pool = result_pool.ResultPool(keep=1)
    path = pool.take()
    assert path is not None
    assert pool.view(path, 10) is None  # still empty: nothing to map (the result is sent another way)
    with open(path, "r+b") as f:
        f.write(b"a" * 4096)
    first = pool.view(path, 4096)
    assert first is not None and bytes(first) == b"a" * 4096
    assert pool.view(path, 100) is not None and pool.maps[path] is pool.maps[path]  # the same mapping again
    mapping = pool.maps[path]
    with open(path, "r+b") as f:  # the next result is bigger: the worker grew the file
        f.seek(0)
        f.write(b"b" * 8192)
    second = pool.view(path, 8192)
    assert second is not None and bytes(second) == b"b" * 8192 and pool.maps[path] is not mapping
    assert pool.view("/dev/shm/not-the-pools", 10) is None  # only the pool's own files
    other = pool.take()
    assert other is not None
    pool.give_back(other)
    pool.give_back(path)  # the pool is full (keep=1): removed, its mapping dropped
    assert not os.path.exists(path) and path not in pool.maps
    assert bytes(second[:3]) == b"bbb"  # a send still under way reads on from its own view
    pool.close()
    assert not pool.maps
