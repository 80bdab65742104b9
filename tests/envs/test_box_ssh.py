"""Hands on the box on real SSH hosts in network namespaces: ``run`` on one node and on all, ``rsync`` both ways,
``ssh``, ``status`` with per-worker CPU and memory, ``restart_server``, and the ``tether cluster`` / ``tether ssh``
commands, run as the real CLI. One two-host cluster for the module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import tether
from tests.envs import fns

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def box(netns_hosts: Any, pinned_wheel: Any, module_home: Any) -> Iterator[Any]:
    mp = pytest.MonkeyPatch()
    mp.setenv("TETHER_PROGRESS", "0")
    c = tether.cluster(name="box", host=netns_hosts.addresses, ssh_creds=netns_hosts.ssh_creds).up_if_not()
    try:
        yield c
    finally:
        c.teardown()
        mp.undo()


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, "COLUMNS": "200"}, timeout=120)


def test_run_on_one_node_and_on_all_streams_and_returns_exit_codes(box, netns_hosts, capfd):
    hosts = netns_hosts
    res = box.run(["echo hello $WHO", "exit 4", "echo never"], env={"WHO": "tether"})
    assert [r.returncode for r in res] == [0, 4]  # stops at the failing command
    assert res[0].stdout == "hello tether\n" and res[0].host == hosts.addresses[0]
    assert "hello tether" in capfd.readouterr().out  # streamed as it came
    everywhere = box.run("echo $HOME", node="all", stream=False)
    assert [r.stdout.strip() for r in everywhere] == [str(h.home / "home") for h in hosts.hosts]
    assert box.run("hostname -I", node=1, stream=False)[0].stdout.split()[0] == hosts.addresses[1]
    with pytest.raises(tether.ConfigError):
        box.run("true", node=7)


def test_rsync_both_ways_and_ssh(box, netns_hosts, tmp_path):
    src = tmp_path / "up"
    src.mkdir()
    (src / "a.txt").write_text("to every node\n")
    box.rsync(str(src), "synced")
    for h in netns_hosts.hosts:
        assert (h.home / "home" / "synced" / "up" / "a.txt").read_text() == "to every node\n"
    box.run("mkdir -p out && echo result > out/r.txt", stream=False)
    box.rsync("out/r.txt", str(tmp_path / "down" / "r.txt"), up=False)
    assert (tmp_path / "down" / "r.txt").read_text() == "result\n"
    assert box.ssh(command="test -f synced/up/a.txt") == 0 and box.ssh(node=1, command="exit 9") == 9


def test_status_per_worker_and_restart_keeps_services(box, netns_hosts):
    remote = tether.function(fns.environ).to(box, env=tether.env(name="busy"))
    remote(["HOME"])
    report = box.status()
    assert report == "up"
    details = report.details()
    [worker] = [w for w in details["workers"] if w["env"] == "busy"]
    assert worker["rss_bytes"] > 1_000_000 and worker["cpu_percent"] >= 0
    assert [n["host"] for n in details["nodes"]] == netns_hosts.addresses
    assert all(n["memory_total"] > 0 and n["cpus"] >= 1 for n in details["nodes"])
    pid = box.daemon_status()["pid"]
    box.restart_server()
    assert box.daemon_status()["pid"] != pid
    assert remote(["HOME"]) == {"HOME": str(netns_hosts.hosts[0].home / "home")}  # its service came back


@pytest.mark.timeout(400)  # two hosts bootstrapped and brought up more than once
def test_the_cluster_and_ssh_commands(box, netns_hosts):
    tether.function(fns.environ).to(box, env=tether.env(name="busy"))(["HOME"])
    listed = _cli("cluster", "list")
    assert listed.returncode == 0, listed.stderr
    assert "box" in listed.stdout and "ssh" in listed.stdout and "up" in listed.stdout
    status = _cli("cluster", "status", "box")
    assert status.returncode == 0 and "busy" in status.stdout and netns_hosts.addresses[1] in status.stdout
    as_json = json.loads(_cli("cluster", "status", "box", "--json").stdout)
    assert as_json["state"] == "up" and len(as_json["nodes"]) == 2
    shell = _cli("ssh", "box", stdin="echo from-the-shell $((6*7))\nexit 3\n")
    assert "from-the-shell 42" in shell.stdout and shell.returncode == 3
    assert _cli("ssh", "--node", "1", "box", "hostname", "-I").stdout.split()[0] == netns_hosts.addresses[1]
    restarted = _cli("cluster", "restart", "box")
    assert restarted.returncode == 0 and "restarted" in restarted.stdout
    box.refresh()
    down = _cli("cluster", "down", "box")
    assert down.returncode == 0 and box.status() == "down"
