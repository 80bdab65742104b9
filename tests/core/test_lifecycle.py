"""Cluster lifecycle on the local backend: up_if_not, stop/restore, teardown, autostop."""

from __future__ import annotations

import time

import pytest

import tether
from tests.core import services as svc
from tests.processes import assert_local_cluster_removed, wait_gone


def test_up_if_not_is_idempotent_and_teardown_removes_all(tether_home):
    c = tether.cluster(name="life").up_if_not()
    pid = c.handle.pid
    assert tether.cluster(name="life").up_if_not().handle.pid == pid
    assert c.status() == "up"
    assert tether.function(svc.add).to(c)(1, 2) == 3  # a worker runs too
    workers = [w["pid"] for w in c.daemon_status()["workers"]]
    assert workers and (tether_home / "clusters" / "life" / "manifest.json").exists()
    c.teardown()
    assert c.status() == "down"
    assert_local_cluster_removed(tether_home, "life", pid, workers)  # no process left, nothing on disk
    with pytest.raises(tether.ClusterUnavailable):
        _ = c.endpoint


def test_stopped_daemon_restores_services_on_up(tether_home):
    c = tether.cluster(name="restore").up_if_not()
    f = tether.function(svc.add).to(c)
    c.put("kept", [1, 2, 3])
    c.stop()
    assert c.status() == "stopped"
    c.up_if_not()
    assert f(20, 22) == 42  # restored from the daemon's manifest, not redeployed by the client
    assert c.get("kept") == [1, 2, 3]
    c.teardown()


def test_autostop_stops_an_idle_daemon(tether_home):
    c = tether.cluster(name="sleepy", autostop_mins=0.02).up_if_not()
    deadline = time.time() + 30
    while c.status() == "up" and time.time() < deadline:
        time.sleep(0.2)
    assert c.status() != "up"
    c.teardown()


def test_keep_warm_disables_autostop(tether_home):
    c = tether.cluster(name="warm", autostop_mins=0.02).up_if_not()
    c.keep_warm()
    time.sleep(3)
    assert c.status() == "up"
    assert c.daemon_status()["autostop_mins"] is None
    c.teardown()


def test_a_call_relaunches_a_cluster_that_stopped_behind_our_back(tether_home):
    c = tether.cluster(name="relaunch").up_if_not()
    f = tether.function(svc.add).to(c)
    assert f(1, 1) == 2
    tether.cluster(name="relaunch").stop()  # e.g. autostop, from another process's point of view
    assert f(2, 2) == 4  # unreachable → relaunched from the spec → redeployed → called
    c.teardown()


@pytest.mark.parametrize("loop", ["asyncio", "auto"])
def test_daemon_runs_on_the_stdlib_loop_or_uvloop(tether_home, monkeypatch, loop):
    monkeypatch.setenv("TETHER_LOOP", loop)
    c = tether.cluster(name=f"loop-{loop}").up_if_not()
    try:
        payload = b"x" * (2 * 1024 * 1024)  # a big one too: /dev/shm both ways
        f, echo = tether.function(svc.add).to(c), tether.function(svc.echo).to(c)
        assert f(1, 2) == 3 and echo(payload) == payload
        expected = "asyncio"
        if loop == "auto":
            try:
                import uvloop  # noqa: F401

                expected = "uvloop"
            except ImportError:
                pass
        assert c.daemon_status()["loop"] == expected
    finally:
        c.teardown()


def test_fixtures_clean_up_what_a_failing_test_left_running(tmp_path, monkeypatch):
    """What ``tether_home`` / ``module_home`` do after every test, passed or failed: tear down each cluster started
    under the home; and the session's last sweep kills a daemon whose state no teardown can find any more."""
    from tests.processes import daemons_under, kill_daemons_under, teardown_clusters

    home = tmp_path / "home"
    monkeypatch.setenv("TETHER_HOME", str(home))
    left = tether.cluster(name="left-running").up_if_not()
    assert tether.function(svc.add).to(left)(2, 3) == 5
    pid, workers = left.handle.pid, [w["pid"] for w in left.daemon_status()["workers"]]
    assert teardown_clusters(home) == ["left-running"]
    assert_local_cluster_removed(home, "left-running", pid, workers)

    orphan = tether.cluster(name="orphan").up_if_not()
    orphan_pid = orphan.handle.pid
    (home / "clusters" / "orphan.json").unlink()  # its client-side state is lost: no teardown finds it
    assert teardown_clusters(home) == []
    assert [p for p, _ in daemons_under(tmp_path)] == [orphan_pid]
    assert [p for p, _ in kill_daemons_under(tmp_path)] == [orphan_pid]
    assert not wait_gone([orphan_pid]) and daemons_under(tmp_path) == []
