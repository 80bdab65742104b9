"""Nodes and the replica pool on two real ssh hosts (network namespaces): services on every node, the
cluster's status per node, calls balanced by outstanding work, ordered map, a dying replica, delete."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import tether
from tests.distributed import fns
from tests.distributed.helpers import worker_envs
from tether.api.distribute import Pool, cluster_nodes, cluster_status
from tether.compute.state import load_state
from tether.errors import CallTimeout, WorkerDied


@pytest.fixture(scope="module")
def pool(lab, dist_env) -> Pool:
    p = tether.function(fns.where).to(lab, env=dist_env).distribute("pool", num_replicas=4, replicas_per_node=2)
    yield p
    p.delete()


def test_nodes_of_an_ssh_cluster_are_every_host_and_status_lists_each_with_its_workers(lab, hosts, pool):
    nodes = cluster_nodes(lab)
    assert [n.host for n in nodes] == hosts.addresses and nodes[0].is_head
    assert nodes[0].endpoint == lab.endpoint  # the head is the cluster's own tunnel; the others go through it
    status = cluster_status(lab)
    assert [s["host"] for s in status] == hosts.addresses and all(s["status"] == "up" for s in status)
    envs = [sorted(w["env"] for w in s["workers"] if ".replica" in w["env"]) for s in status]
    assert envs == [["dist.where.replica0", "dist.where.replica1"], ["dist.where.replica2", "dist.where.replica3"]]
    for i in range(2):  # real processes there
        assert [e for e in worker_envs(hosts, i) if ".replica" in e] == envs[i]


def test_pool_runs_on_every_node_and_map_keeps_input_order(pool, hosts):
    out = pool.map(range(40))
    assert [o["square"] for o in out] == [x * x for x in range(40)]
    assert {o["home"] for o in out} == {str(h.home / "home") for h in hosts.hosts}  # both hosts served
    assert len({o["pid"] for o in out}) == 4  # four replicas, four processes
    assert [o["square"] for o in pool.starmap([(3,), (4,)])] == [9, 16]


def test_ordered_results_as_they_finish_and_balancing_by_outstanding_work(lab, dist_env):
    p = tether.function(fns.pid_after).to(lab, env=dist_env).distribute("pool", num_replicas=2)
    try:
        # later inputs finish first: results still come back in input order
        pids = p.map(range(6), [0.6, 0.5, 0.4, 0.3, 0.2, 0.0])
        assert len(pids) == 6 and len(set(pids)) == 2
        assert set(p.map(range(4), seconds=0.0)) == set(pids)  # keyword arguments go to every call
        busy: list[int] = []
        t = threading.Thread(target=lambda: busy.append(p(0, 4.0)))
        t.start()
        time.sleep(1.0)  # the long call is on one replica now
        quick = [p(i, 0.0) for i in range(6)]  # each goes to the replica with nothing outstanding
        t.join()
        assert busy[0] not in quick and len(set(quick)) == 1
    finally:
        p.delete()


def test_a_dying_replica_fails_only_its_call_and_is_replaced(lab, dist_env, tmp_path):
    p = tether.function(fns.die_once).to(lab, env=dist_env).distribute("pool", num_replicas=4, replicas_per_node=2)
    try:
        marker = str(tmp_path / "died")
        results: dict[int, object] = {}

        def run(x: int) -> None:
            try:
                results[x] = p(x, marker)
            except Exception as exc:  # noqa: BLE001
                results[x] = exc

        threads = [threading.Thread(target=run, args=(x,)) for x in (-1, 1, 2, 3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert isinstance(results[-1], WorkerDied)  # typed, from the daemon that saw its worker die
        assert [results[x] for x in (1, 2, 3)] == [1, 2, 3]
        assert p.map(range(8), [marker] * 8) == list(range(8))  # every replica serves again (the dead one restarted)
    finally:
        p.delete()


def test_a_timed_out_map_cancels_its_calls_and_delete_frees_every_replica(lab, hosts, dist_env, tmp_path):
    p = tether.function(fns.sleep_then_mark).to(lab, env=dist_env).distribute("pool", num_replicas=2)
    with pytest.raises(CallTimeout):
        p.map(range(4), [str(tmp_path)] * 4, [3.0] * 4, timeout=1.0)
    starts = list(tmp_path.glob("start-*"))
    assert starts  # the calls ran
    time.sleep(4.0)  # longer than any call would have slept
    assert list(tmp_path.glob("end-*")) == []  # every call was cancelled: none finished
    p.delete()
    for i in range(2):
        assert not [e for e in worker_envs(hosts, i) if ".sleep_then_mark.replica" in e]
    assert all(not [w for w in s["workers"] if ".sleep_then_mark." in w["env"]] for s in cluster_status(lab))


def test_a_replica_its_node_lost_is_deployed_again(pool, hosts):
    gone = pool.replicas[3]
    gone.node.client().sync.delete_env(gone.env)  # e.g. a node's daemon that came back without it
    assert "dist.where.replica3" not in worker_envs(hosts, 1)
    out = pool.map(range(8))
    assert [o["square"] for o in out] == [x * x for x in range(8)] and len({o["pid"] for o in out}) == 4
    assert "dist.where.replica3" in worker_envs(hosts, 1)


def test_gpus_are_partitioned_among_a_nodes_replicas(lab, hosts, dist_env):
    p = tether.function(fns.visible_gpus).to(lab, env=dist_env).distribute(
        "pool", num_replicas=4, replicas_per_node=2, gpus_per_replica=2)
    try:
        seen = {(home, gpus) for home, gpus, _ in p.map(range(16))}
        homes = [str(h.home / "home") for h in hosts.hosts]
        assert seen == {(homes[0], "0,1"), (homes[0], "2,3"), (homes[1], "0,1"), (homes[1], "2,3")}
    finally:
        p.delete()


def test_cluster_nodes_is_every_node_with_its_workers_and_status_has_every_node(lab, hosts, pool):
    rows = lab.nodes()  # the public form of cluster_status
    assert [r["host"] for r in rows] == hosts.addresses and rows[0]["head"] and not rows[1]["head"]
    assert all(r["status"] == "up" for r in rows)
    envs = [sorted(w["env"] for w in r["workers"] if ".replica" in w["env"]) for r in rows]
    assert envs == [["dist.where.replica0", "dist.where.replica1"], ["dist.where.replica2", "dist.where.replica3"]]
    report = lab.status()
    assert report == "up" and [n["index"] for n in report.nodes] == [0, 1]
    assert all(n["cpus"] >= 1 for n in report.nodes)
    seen = [sorted(w["env"] for w in n["workers"] if ".replica" in w["env"]) for n in report.nodes]
    assert seen == envs  # every node's workers, not only the head's
    assert all(w["rss_bytes"] > 0 for n in report.nodes for w in n["workers"] if w["alive"])


def test_a_pool_survives_the_client_losing_its_tunnel_to_a_node(lab, hosts, pool):
    """The client's tunnel to node 1 dies (its ssh connection dropped: a laptop slept): the pool's next calls
    reopen it and run on both nodes again (before: every call to node 1's replicas failed ClusterUnavailable)."""
    assert len({o["home"] for o in pool.map(range(8))}) == 2
    tunnels = list((load_state(lab.name) or {}).get("node_tunnels", {}).values())
    assert len(tunnels) == 1
    os.kill(tunnels[0]["pid"], signal.SIGKILL)
    out = pool.map(range(8))
    assert [o["square"] for o in out] == [x * x for x in range(8)]
    assert {o["home"] for o in out} == {str(h.home / "home") for h in hosts.hosts}
