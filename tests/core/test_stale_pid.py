"""A local cluster's state file names its daemon by pid. After a reboot (or a daemon still exiting after a
SIGKILL: its sockets closed, its pid not yet a zombie) that pid is not the daemon: tether must neither call the
cluster up nor signal whatever process holds the pid now."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import tether
from tests.core import services as svc
from tests.processes import wait_gone


def _crash_and_reuse_pid(tether_home, c: tether.Cluster) -> subprocess.Popen:
    """SIGKILL the cluster's daemon, then point its state file at an unrelated live process (what a reboot that
    reused the pid leaves)."""
    pid = c.handle.pid
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid]) == []
    return _reuse_pid(tether_home, c.name)


def _reuse_pid(tether_home, name: str) -> subprocess.Popen:
    stranger = subprocess.Popen(["sleep", "300"], start_new_session=True)
    state_file = tether_home / "clusters" / f"{name}.json"
    state = json.loads(state_file.read_text())
    state["pid"] = stranger.pid
    state_file.write_text(json.dumps(state))
    return stranger


def test_a_reused_pid_is_not_the_daemon(tether_home):
    c = tether.cluster(name="reused").up_if_not()
    add = tether.function(svc.add).to(c)
    stranger = _crash_and_reuse_pid(tether_home, c)
    try:
        assert c.status() != "up"
        c.up_if_not()  # starts a fresh daemon instead of trusting the stranger's pid
        assert c.handle.pid != stranger.pid
        assert add(2, 3) == 5
        assert stranger.poll() is None, "tether signalled a process that is not its daemon"
    finally:
        c.teardown()
        assert stranger.poll() is None, "teardown signalled a process that is not its daemon"
        stranger.kill()
        stranger.wait()


def test_stop_and_down_leave_a_stranger_holding_the_pid_alone(tether_home):
    c = tether.cluster(name="stranger").up_if_not()
    strangers = [_crash_and_reuse_pid(tether_home, c)]
    try:
        c.stop()
        assert strangers[0].poll() is None, "stop() signalled a process that is not its daemon"
        strangers.append(_reuse_pid(tether_home, c.name))
        c.teardown()
        assert strangers[1].poll() is None, "teardown() signalled a process that is not its daemon"
    finally:
        for stranger in strangers:
            stranger.kill()
            stranger.wait()
