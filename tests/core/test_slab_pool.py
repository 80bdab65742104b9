"""The client's slab pool and leases, on real files in /dev/shm (no daemon)."""

from __future__ import annotations

import os
import pickle

import pytest

from tether.client import slabs as shm

pytestmark = pytest.mark.skipif(shm.SHM_DIR is None, reason="needs a writable /dev/shm")


@pytest.fixture
def pool(monkeypatch):
    pool = shm.SlabPool(max_idle_bytes=8 * 1024 * 1024, idle_seconds=60)
    monkeypatch.setattr(shm, "_pool", pool)
    yield pool
    pool.close()


def test_a_finished_lease_goes_back_to_the_pool_and_is_reused(pool):
    lease = shm.Lease()
    lease.write_args(((b"x" * 3_000_000,), {}), lambda obj, f: pickle.dump(obj, f, protocol=5))
    lease.lend_result()
    paths = {lease.args.path, lease.result.path}
    assert os.path.getsize(lease.args.path) >= lease.nbytes > 3_000_000
    with open(lease.args.path, "rb") as f:
        assert pickle.loads(f.read(lease.nbytes)) == ((b"x" * 3_000_000,), {})
    lease.end(True)
    assert set(pool.idle()) == paths
    again = shm.Lease()
    again.lend_result()
    assert again.result.path in paths
    again.end(True)


def test_an_unfinished_lease_removes_its_files(pool):
    lease = shm.Lease()
    lease.write_args(((b"y" * 2_000_000,), {}), lambda obj, f: pickle.dump(obj, f, protocol=5))
    lease.lend_result()
    paths = [lease.args.path, lease.result.path]
    lease.end(False)  # a worker may still write them: never reused
    assert not any(os.path.exists(p) for p in paths)
    assert pool.idle() == []


def test_the_pool_keeps_at_most_its_idle_bytes(pool):
    leases = []
    for _ in range(3):
        lease = shm.Lease()
        lease.write_args(((b"z" * 3_500_000,), {}), lambda obj, f: pickle.dump(obj, f, protocol=5))
        leases.append(lease)
    paths = [lease.args.path for lease in leases]
    for lease in leases:
        lease.end(True)
    kept = pool.idle()
    assert len(kept) == 2  # 4 MiB each: a third would pass 8 MiB
    assert [p for p in paths if os.path.exists(p)] == kept


def test_a_result_is_read_only_from_the_slab_the_call_lent(pool):
    lease = shm.Lease()
    lease.lend_result()
    slab = lease.result
    data = pickle.dumps(b"r" * 2_000_000, protocol=5)
    slab.reserve(len(data))
    slab.map[: len(data)] = data
    assert lease.load_result(slab.path, len(data)) == b"r" * 2_000_000
    with pytest.raises(EOFError):
        lease.load_result(slab.path + "-other", len(data))
    with pytest.raises(EOFError):
        lease.load_result(slab.path, slab.size + 1)
    lease.end(True)


def test_close_removes_every_slab_of_the_process(pool):
    held = shm.Lease()
    held.lend_result()
    idle = shm.Lease()
    idle.lend_result()
    idle.end(True)
    paths = [held.result.path, *pool.idle()]
    pool.close()
    assert not any(os.path.exists(p) for p in paths)


def test_a_forked_child_forgets_the_parents_slabs_without_removing_them(pool):
    lease = shm.Lease()
    lease.lend_result()
    lease.end(True)
    path, = pool.idle()
    pid = os.fork()
    if pid == 0:  # the child: it must not see (or remove) the parent's slabs
        os._exit(0 if pool.idle() == [] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.path.exists(path) and pool.idle() == [path]
