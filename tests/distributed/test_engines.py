"""``.distribute("dask")`` and ``.distribute("ray")`` on two real hosts: tether starts the engine over the nodes,
the function runs on the head against it, stopping it leaves no engine process on any host."""

from __future__ import annotations

import tether
from tests.distributed import fns
from tests.distributed.helpers import processes


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
