"""Faults: a worker SIGKILLed mid-call, the daemon SIGKILLed and restarted, a connection reset mid-call.

(A host cut off by a network-namespace link going down is covered by the compute work's tests.)
"""

from __future__ import annotations

import base64
import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import cloudpickle
import pytest
import requests

import tether
from tests.core import services as svc
from tests.netproxy import CuttableProxy
from tests.processes import assert_sigkill_is_worker_died, host_oom_kills
from tests.reliability.daemons import ROOT, DaemonProc, kill_quietly, start_daemon, wait_for_text, worker_pid
from tether.client import AsyncClient
from tether.client.loop import run_sync

pool = ThreadPoolExecutor(4)


def test_worker_sigkilled_mid_call(daemon: DaemonProc, tmp_path):
    oom_kills = host_oom_kills()  # before the victim's worker starts
    daemon.deploy("slow", "sleep_then", env="victim")
    daemon.deploy("add_victim", "add", env="victim")
    daemon.deploy("add_bystander", "add", env="bystander")
    client = AsyncClient(daemon.endpoint, daemon.token)
    marker = tmp_path / "marker"
    victim = worker_pid(daemon, "victim")
    bystander = worker_pid(daemon, "bystander")

    future = pool.submit(run_sync, client.call("slow", None, (30, str(marker)), {}, call_id="victim-1"))
    wait_for_text(marker, "start")
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(tether.TetherError) as info:
        future.result(60)
    assert_sigkill_is_worker_died(info.value, oom_kills)

    assert daemon.call("add_bystander", 2, 2).json()["result"] == 4  # other envs keep serving, same process
    assert worker_pid(daemon, "bystander") == bystander
    # the env restarted and its services were restored
    assert daemon.call("add_victim", 1, 1).json()["result"] == 2
    assert worker_pid(daemon, "victim") != victim
    # the dead call is reported, not lost: re-attaching gives the same typed error
    state = daemon.get("/calls/victim-1?wait=0").json()["state"]
    assert state == "failed"
    assert "end" not in marker.read_text()


def test_daemon_sigkilled_and_restarted_restores_services(tmp_path):
    state = tmp_path / "state"
    d = start_daemon(state)
    marker = tmp_path / "marker"
    orphans: list[int] = []
    try:
        d.deploy("add", "add")
        d.deploy("slow", "sleep_then")
        d.deploy("ctr_cls", "Counter", env="counters")
        init = base64.b64encode(cloudpickle.dumps(((5,), {}))).decode()
        r = d.post(
            "/deploy",
            json={
                "name": "ctr",
                "kind": "instance",
                "of": "ctr_cls",
                "env": {"name": "counters"},
                "init_pickled_b64": init,
                "code": {"root": str(ROOT), "import_path": "tests.core.services", "qualname": "Counter"},
            },
        )
        assert r.status_code == 200, r.text
        assert d.post("/ctr/incr/call", json={}).json()["result"] == 6
        h = {**d.headers, "Content-Type": "application/x-tether-pickle"}
        assert (
            requests.put(
                d.endpoint + "/objects/cfg", data=cloudpickle.dumps({"lr": 0.1}), headers=h, timeout=10
            ).status_code
            == 200
        )
        orphans += [worker_pid(d, "default"), worker_pid(d, "counters")]
        client = AsyncClient(d.endpoint, d.token)
        future = pool.submit(run_sync, client.call("slow", None, (20, str(marker)), {}, call_id="inflight-1"))
        wait_for_text(marker, "start")
        d.kill(signal.SIGKILL)
        with pytest.raises((tether.ClusterUnavailable, tether.WorkerDied)) as info:
            future.result(60)
        assert info.value.retryable and info.value.details.get("call_id") == "inflight-1"

        d = start_daemon(state)  # same state dir, new process and port; nothing redeployed by any client
        assert d.call("add", 2, 3).json()["result"] == 5
        assert sorted(d.get("/objects").json()["keys"]) == ["add", "cfg", "ctr", "ctr_cls", "slow"]
        assert cloudpickle.loads(d.get("/objects/cfg").content) == {"lr": 0.1}
        assert "deployed" not in d.log.read_text().split("tether daemon serving")[-1]
        # instances come back rebuilt from their init arguments (their in-memory state since is not persisted)
        assert d.post("/ctr/incr/call", json={}).json()["result"] == 6
    finally:
        d.kill()
        for pid in orphans:
            kill_quietly(pid)


def test_local_cluster_recovers_from_daemon_kill_without_redeploy(tether_home):
    c = tether.cluster(name="faults-kill").up_if_not()
    try:
        add = tether.function(svc.add).to(c)
        assert add(1, 2) == 3
        log = tether_home / "clusters" / "faults-kill" / "daemon.log"
        deploys = log.read_text().count('"deployed"')
        pid = c.handle.pid
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while c.is_up():  # a dead daemon reads as stopped (its manifest is kept)
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert c.status() == "stopped"
        assert add(3, 4) == 7  # the next call brings the daemon back; the manifest restores the service
        assert log.read_text().count('"deployed"') == deploys
    finally:
        c.teardown()


def test_connection_reset_mid_call_retries_and_runs_once(daemon: DaemonProc, tmp_path):
    daemon.deploy("slow_once", "sleep_then")
    port = int(daemon.endpoint.rsplit(":", 1)[1])
    proxy = CuttableProxy("127.0.0.1", port)
    marker = tmp_path / "once"
    try:
        client = AsyncClient(proxy.url, daemon.token)
        future = pool.submit(
            run_sync, client.call("slow_once", None, (1.5, str(marker)), {}, call_id="reset-1")
        )
        wait_for_text(marker, "start")
        assert proxy.reset() >= 1
        assert future.result(60) == 1.5
        assert marker.read_text().count("start") == 1  # the retry re-attached instead of running it again
        assert proxy.accepted >= 2

        # cut again while the result is already there: the retry replays the finished call, still once
        marker2 = tmp_path / "once2"
        future = pool.submit(
            run_sync, client.call("slow_once", None, (0.5, str(marker2)), {}, call_id="reset-2")
        )
        wait_for_text(marker2, "end")
        proxy.reset()
        assert future.result(60) == 0.5
        assert marker2.read_text().count("start") == 1
    finally:
        proxy.close()


def test_a_call_during_an_envs_restore_waits_for_its_services(tmp_path):
    """A restarted daemon restores each env's services into a fresh worker, one deploy after another; a call
    arriving meanwhile must wait for the restore, not reach a worker that does not hold its service yet."""
    state = tmp_path / "state"
    d = start_daemon(state)
    orphans: list[int] = []
    try:
        d.deploy("slow_first", "ready", env="restoring", module="tests.reliability.slow_import")  # restored first
        d.deploy("quick", "add", env="restoring")
        orphans.append(worker_pid(d, "restoring"))
        d.kill(signal.SIGKILL)
        d = start_daemon(state)  # starts restoring the env at once (a 1.5 s import first)
        deadline = time.monotonic() + 30
        while not any(w["env"] == "restoring" for w in d.get("/status").json()["workers"]):
            assert time.monotonic() < deadline, "the env's worker never started"
            time.sleep(0.02)
        r = d.call("quick", 2, 3)  # the worker is up: is its restore done?
        assert r.status_code == 200 and r.json().get("result") == 5, r.text
        assert d.call("slow_first").json()["result"] == "ready"
    finally:
        d.kill()
        for pid in orphans:
            kill_quietly(pid)


def test_an_object_that_no_longer_loads_does_not_take_its_env_down(tmp_path):
    from tests.reliability.fussy import Fussy

    state, marker = tmp_path / "state", tmp_path / "refuse"
    d = start_daemon(state)
    orphans: list[int] = []
    try:
        d.deploy("add", "add")
        h = {**d.headers, "Content-Type": "application/x-tether-pickle"}
        r = requests.put(d.endpoint + "/objects/fussy", data=cloudpickle.dumps(Fussy(str(marker))), headers=h,
                         timeout=10)
        assert r.status_code == 200, r.text
        orphans.append(worker_pid(d, "default"))
        d.kill(signal.SIGKILL)
        marker.write_text("")  # from now on the stored object fails to unpickle
        d = start_daemon(state)
        for _ in range(2):  # the env serves (and keeps serving) without it
            r = d.call("add", 2, 3)
            assert r.status_code == 200 and r.json().get("result") == 5, r.text
        assert "fussy" in d.get("/objects").json()["keys"]  # still saved, not lost
        assert "restore_failed" in d.log.read_text()
    finally:
        d.kill()
        for pid in orphans:
            kill_quietly(pid)
