"""Last in the folder: with replicas, a Dask and a Ray cluster running on both hosts, ``teardown()`` leaves no
process of tether's, Ray's or Dask's on any host (``ps`` in each network namespace), and the client's tunnels to
the nodes are closed."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

import tether
from tests.distributed import fns
from tests.distributed.helpers import processes, worker_envs
from tether.compute.state import load_state
from tether.compute.tunnel import pid_alive


def test_an_interrupted_map_cancels_every_call(lab, hosts, dist_env, tmp_path):
    p = tether.function(fns.sleep_then_mark).to(lab, env=dist_env).distribute("pool", num_replicas=2)
    try:
        def interrupt() -> None:  # Ctrl-C while the map waits
            while len(list(tmp_path.glob("start-*"))) < 2:
                time.sleep(0.05)
            os.kill(os.getpid(), signal.SIGINT)

        threading.Thread(target=interrupt, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            p.map(range(4), [str(tmp_path)] * 4, [3.0] * 4)
        time.sleep(4.0)  # longer than any call would have slept
        assert list(tmp_path.glob("end-*")) == []
    finally:
        p.delete()


def test_teardown_leaves_no_process_on_any_node(lab, hosts, dist_env):
    pool = tether.function(fns.where).to(lab, env=dist_env).distribute("pool", num_replicas=2)
    assert len({r["home"] for r in pool.map(range(4))}) == 2
    dask = tether.function(fns.dask_sum).to(lab, env=dist_env).distribute("dask")
    assert dask(3)["total"] == 5
    ray = tether.function(fns.find_minimum).to(lab, env=dist_env).distribute("ray").start()
    for i in range(2):
        cmds = " ".join(processes(hosts, i))
        assert "dask worker" in cmds and "raylet" in cmds and ".replica" in " ".join(worker_envs(hosts, i))
    tunnels = [t["pid"] for t in (load_state(lab.name) or {}).get("node_tunnels", {}).values()]
    assert tunnels and all(pid_alive(t) for t in tunnels)
    del ray
    lab.teardown()
    assert [processes(hosts, i) for i in range(2)] == [[], []]
    assert not any(pid_alive(t) for t in tunnels)
