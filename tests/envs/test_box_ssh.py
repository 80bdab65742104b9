"""Hands on the box on real SSH hosts in network namespaces: ``run`` on one node and on all, ``rsync`` both ways,
``ssh``, ``status`` with per-worker CPU and memory, ``restart_server``, and the ``tether cluster`` / ``tether ssh``
commands, run as the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import tether
from tests.envs import fns

pytestmark = pytest.mark.netns


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, input=stdin,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)


def test_run_rsync_ssh_status_and_restart_on_an_ssh_cluster(netns_hosts, pinned_wheel, tether_home, tmp_path,
                                                            capfd):
    hosts = netns_hosts
    c = tether.cluster(name="box", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
    try:
        res = c.run(["echo hello $WHO", "exit 4", "echo never"], env={"WHO": "tether"})
        assert [r.returncode for r in res] == [0, 4]  # stops at the failing command
        assert res[0].stdout == "hello tether\n" and res[0].host == hosts.addresses[0]
        assert "hello tether" in capfd.readouterr().out  # streamed as it came
        everywhere = c.run("echo $HOME", node="all", stream=False)
        assert [r.stdout.strip() for r in everywhere] == [str(h.home / "home") for h in hosts.hosts]
        assert c.run("hostname -I", node=1, stream=False)[0].stdout.split()[0] == hosts.addresses[1]
        with pytest.raises(tether.ConfigError):
            c.run("true", node=7)

        src = tmp_path / "up"
        src.mkdir()
        (src / "a.txt").write_text("to every node\n")
        c.rsync(str(src), "synced")
        for h in hosts.hosts:
            assert (h.home / "home" / "synced" / "up" / "a.txt").read_text() == "to every node\n"
        c.run("mkdir -p out && echo result > out/r.txt", stream=False)
        c.rsync("out/r.txt", str(tmp_path / "down" / "r.txt"), up=False)
        assert (tmp_path / "down" / "r.txt").read_text() == "result\n"

        assert c.ssh(command="test -f synced/up/a.txt") == 0 and c.ssh(node=1, command="exit 9") == 9

        remote = tether.function(fns.environ).to(c, env=tether.env(name="busy"))
        remote(["HOME"])
        report = c.status()
        assert report == "up"
        details = report.details()
        [worker] = [w for w in details["workers"] if w["env"] == "busy"]
        assert worker["rss_bytes"] > 1_000_000 and worker["cpu_percent"] >= 0
        assert [n["host"] for n in details["nodes"]] == hosts.addresses
        assert all(n["memory_total"] > 0 and n["cpus"] >= 1 for n in details["nodes"])

        pid = c.daemon_status()["pid"]
        c.restart_server()
        assert c.daemon_status()["pid"] != pid
        assert remote(["HOME"]) == {"HOME": str(hosts.hosts[0].home / "home")}  # its service came back

        listed = _cli("cluster", "list")
        assert listed.returncode == 0, listed.stderr
        assert "box" in listed.stdout and "ssh" in listed.stdout and "up" in listed.stdout
        status = _cli("cluster", "status", "box")
        assert status.returncode == 0 and "busy" in status.stdout and hosts.addresses[1] in status.stdout
        as_json = json.loads(_cli("cluster", "status", "box", "--json").stdout)
        assert as_json["state"] == "up" and len(as_json["nodes"]) == 2
        shell = _cli("ssh", "box", stdin="echo from-the-shell $((6*7))\nexit 3\n")
        assert "from-the-shell 42" in shell.stdout and shell.returncode == 3
        assert _cli("ssh", "--node", "1", "box", "hostname", "-I").stdout.split()[0] == hosts.addresses[1]
        restarted = _cli("cluster", "restart", "box")
        assert restarted.returncode == 0 and "restarted" in restarted.stdout
        down = _cli("cluster", "down", "box")
        assert down.returncode == 0 and tether.cluster(name="box", host=hosts.addresses,
                                                       ssh_creds=hosts.ssh_creds).status() == "down"
    finally:
        c.teardown()
