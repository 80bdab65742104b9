"""Big payloads of a same-host client through reused shared-memory slabs, end to end on a real local cluster."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

import tether
from tests.core import services as svc
from tether.client import slabs as shm
from tether.errors import WorkerDied

MiB = 1024 * 1024


@pytest.fixture
def cluster(local_cluster):
    if not local_cluster.client.unix_socket or shm.SHM_DIR is None:
        pytest.skip("needs the local cluster's unix socket and /dev/shm")
    return local_cluster


def mine() -> set[str]:
    """This process's files in /dev/shm."""
    return {n for n in os.listdir(shm.SHM_DIR or "") if n.startswith(f"tether-{os.getpid()}-")}


def test_repeated_big_calls_reuse_the_same_files(cluster):
    echo = tether.function(svc.echo).to(cluster)
    payload = os.urandom(4 * MiB)
    assert echo(payload) == payload
    files = mine()
    assert len(files) == 2  # one slab for the arguments, one for the result
    for i in range(5):
        small_change = payload[:-1] + bytes([i])
        assert echo(small_change) == small_change
    assert mine() == files  # no new file per call


def test_a_target_that_returned_a_big_result_gets_a_result_slab_next_time(cluster):
    make = tether.function(svc.make_bytes).to(cluster)
    assert make(3 * MiB, 1) == b"\x01" * (3 * MiB)  # small arguments: the daemon's own file this first time
    before = mine()
    assert make(3 * MiB, 2) == b"\x02" * (3 * MiB)
    assert len(mine() - before) <= 1  # from now on a result slab of ours (reused, or made once)
    after = mine()
    assert make(2 * MiB, 3) == b"\x03" * (2 * MiB)
    assert mine() == after


def test_spawned_calls_and_explicit_call_ids_keep_their_result_for_re_attach(cluster):
    echo = tether.function(svc.echo).to(cluster)
    payload = os.urandom(2 * MiB)
    handle = echo.spawn(payload)
    assert handle.result(timeout=60) == payload
    assert tether.call(handle.call_id, cluster=cluster).result(timeout=60) == payload  # kept by the daemon, not in a slab
    call_id = f"explicit-{os.getpid()}"
    assert echo.call((payload,), call_id=call_id) == payload
    assert tether.call(call_id, cluster=cluster).result(timeout=60) == payload


def test_threads_with_big_payloads_each_get_their_own_slabs(cluster):
    echo = tether.function(svc.echo).to(cluster)
    errors: list[BaseException] = []

    def run(k: int) -> None:
        try:
            for i in range(4):
                data = bytes([k, i]) * MiB
                assert echo(data) == data
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(mine()) <= 16  # at most two per concurrent call, reused afterwards


def test_async_big_calls_interleave_without_mixing_results(cluster):
    echo = tether.function(svc.echo).to(cluster)

    async def main() -> list[bytes]:
        return await asyncio.gather(*(echo.remote_async(bytes([k]) * (2 * MiB)) for k in range(6)))

    assert asyncio.run(main()) == [bytes([k]) * (2 * MiB) for k in range(6)]


def test_a_worker_dying_mid_call_leaves_the_slabs_usable(cluster):
    crash = tether.function(svc.crash_with).to(cluster, env=tether.env(name="slab-crash"))
    with pytest.raises(WorkerDied):
        crash(os.urandom(2 * MiB))
    echo = tether.function(svc.echo).to(cluster, env=tether.env(name="slab-crash"))
    payload = os.urandom(2 * MiB)
    assert echo(payload) == payload  # the env restarted; the slabs (or fresh ones) work
    cluster.delete("slab-crash")


def test_idle_slabs_are_removed_after_their_idle_time(cluster, monkeypatch):
    pool = shm.SlabPool(idle_seconds=0.2)
    monkeypatch.setattr(shm, "_pool", pool)
    echo = tether.function(svc.echo).to(cluster)
    payload = os.urandom(2 * MiB)
    assert echo(payload) == payload
    paths = pool.idle()
    assert len(paths) == 2 and all(os.path.exists(p) for p in paths)
    deadline = asyncio.run(_wait_gone(paths))
    assert deadline, "idle slabs were not removed"
    assert pool.idle() == []


async def _wait_gone(paths: list[str], seconds: float = 10.0) -> bool:
    for _ in range(int(seconds / 0.05)):
        if not any(os.path.exists(p) for p in paths):
            return True
        await asyncio.sleep(0.05)
    return False


def test_a_generator_streams_from_big_arguments_sent_in_a_slab(cluster, monkeypatch):
    lent: list[tuple[str, bool]] = []
    real_end = shm.Lease.end

    def end(lease, finished):
        lent.append((lease.args.path if lease.args else "", finished))
        real_end(lease, finished)

    monkeypatch.setattr(shm.Lease, "end", end)
    split = tether.function(svc.chunks).to(cluster)
    data = os.urandom(3 * MiB)
    assert b"".join(split(data, MiB)) == data
    assert len(lent) == 1 and lent[0][0] and lent[0][1]  # lent, and back to the pool after the stream's end
    assert lent[0][0] in shm.pool().idle()
