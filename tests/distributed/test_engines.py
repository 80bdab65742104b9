"""``.distribute("dask")`` and ``.distribute("ray")`` on two real hosts: tether starts the engine over the nodes,
the function runs on the head against it, stopping it leaves no engine process on any host."""

from __future__ import annotations

import pytest

import tether
from tests.distributed import fns
from tests.distributed.helpers import processes
from tether.errors import CapacityError


def _engine_processes(hosts, word: str) -> list[str]:
    return [c for i in range(2) for c in processes(hosts, i) if word in c and "tether.daemon" not in c]


def test_dask_scheduler_on_the_head_one_worker_per_node_and_a_connected_client(lab, hosts, dist_env):
    job = tether.function(fns.dask_sum).to(lab, env=dist_env).distribute("dask")
    try:
        out = job(10)
        assert out["total"] == sum(i * i for i in range(10))
        assert sorted({w.split("//")[1].split(":")[0] for w in out["workers"]}) == sorted(hosts.addresses)
        assert len(out["workers"]) == 2
    finally:
        job.stop()
    assert _engine_processes(hosts, "dask") == []


def test_ray_cluster_over_the_nodes_runs_the_tune_example_on_the_head(lab, hosts, dist_env):
    tune = tether.function(fns.find_minimum).to(lab, env=dist_env).distribute("ray")
    try:
        best = tune(num_samples=4)
        assert best["best_x"] == 3
        assert best["nodes"] == sorted(hosts.addresses)  # both hosts joined the Ray cluster
    finally:
        tune.stop()
    assert _engine_processes(hosts, "ray") == []


def test_an_env_that_asks_for_resources_is_what_each_node_offers_the_engine(lab, hosts, dist_env, monkeypatch):
    """``compute=`` on the env of a Ray or Dask service: every node's engine offers that much (Ray's
    ``--num-cpus/--num-gpus``, a Dask worker's threads, memory limit and GPU resource), a node lacking it is a
    CapacityError at ``.distribute()`` (before: engines ignored ``compute`` and offered the whole node)."""
    monkeypatch.setenv("TETHER_NODE_GPUS", "2")  # each node "has" 2 GPUs (read by the node-facts code)
    ask = {"CPU": 1, "GPU": 1, "memory": "512MB"}
    env = tether.env(name="res", python=dist_env.spec.python, compute=ask)
    ray_job = tether.function(fns.ray_resources).to(lab, env=env).distribute("ray")
    try:
        seen = ray_job()
        assert sorted(seen) == sorted(hosts.addresses)
        assert all(r == {"CPU": 1.0, "GPU": 1.0} for r in seen.values()), seen
    finally:
        ray_job.stop()
    dask_job = tether.function(fns.dask_resources).to(lab, env=env).distribute("dask")
    try:
        seen = dask_job()
        assert sorted(seen) == sorted(hosts.addresses)
        assert all(w["nthreads"] == 1 and w["memory_limit"] == 512 * 2**20 and w["resources"] == {"GPU": 1}
                   for w in seen.values()), seen
    finally:
        dask_job.stop()
    lab.delete("res")  # the service's own env: its GPU on the head is free again
    monkeypatch.setenv("TETHER_NODE_GPUS", "2,1")  # now node 1 "has" one GPU
    two = tether.function(fns.ray_resources).to(lab, env=tether.env(name="res2", python=dist_env.spec.python,
                                                                     compute={"GPU": 2}))  # the head has 2
    try:
        with pytest.raises(CapacityError, match="GPU") as err:
            two.distribute("ray")
        assert list(err.value.details["missing"]) == [lab.nodes()[1]["host"]]
    finally:
        lab.delete("res2")
