"""``.distribute()`` on the embedded local cluster (one node, no ssh): the same pool and ranks, all on this host."""

from __future__ import annotations

import concurrent.futures
import os

import tether
from tests.distributed import fns
from tether.api.distribute import cluster_status


def test_pool_and_ranks_on_the_local_cluster(dist_home, dist_env):
    c = tether.cluster(name="dist-local").up_if_not()
    try:
        pool = tether.function(fns.where).to(c, env=dist_env).distribute("pool", num_replicas=2)
        out = pool.map(range(6))
        assert [o["square"] for o in out] == [x * x for x in range(6)] and len({o["pid"] for o in out}) == 2
        (node,) = cluster_status(c)
        assert node["head"] and {"dist.where.replica0", "dist.where.replica1"} <= {w["env"] for w in node["workers"]}
        pool.delete()
        ranks = tether.function(fns.allreduce_and_ddp_step).to(c, env=dist_env).distribute("pytorch", num_replicas=2)
        res = ranks()
        assert [r["rank"] for r in res] == [0, 1] and {r["sum"] for r in res} == {3.0}
        assert {r["home"] for r in res} == {os.environ.get("HOME")}
        with concurrent.futures.ThreadPoolExecutor(2) as both:  # two callers of one group: one run at a time
            runs = [f.result(300) for f in [both.submit(ranks) for _ in range(2)]]
        assert all([r["rank"] for r in run] == [0, 1] and {r["sum"] for r in run} == {3.0} for run in runs)
    finally:
        c.teardown()
