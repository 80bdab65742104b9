"""The `tether` command line against a real local daemon."""

from __future__ import annotations

import os
import subprocess
import sys

import tether
from tests.core import services as svc
from tests.processes import assert_local_cluster_removed


def run_cli(*args: str, home) -> subprocess.CompletedProcess:
    env = {**os.environ, "TETHER_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tether.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_server_start_status_ls_logs_stop(tether_home):
    out = run_cli("server", "start", "--cluster", "clitest", home=tether_home)
    assert out.returncode == 0 and "up" in out.stdout, out.stderr
    c = tether.cluster(name="clitest").up_if_not()
    shout = tether.function(svc.shout).to(c)
    h = shout.spawn_with(("cli", 2), on_log=None)
    h.result(30)
    status = run_cli("server", "status", "--cluster", "clitest", home=tether_home)
    assert "up at" in status.stdout
    ls = run_cli("ls", "--cluster", "clitest", home=tether_home)
    assert "shout" in ls.stdout and "function" in ls.stdout
    logs = run_cli("logs", h.call_id, "--cluster", "clitest", home=tether_home)
    assert "cli 0" in logs.stdout and "cli 1" in logs.stdout
    missing = run_cli("logs", "no-such-call", "--cluster", "clitest", home=tether_home)
    assert missing.returncode == 1 and "no call" in missing.stdout
    pid, workers = c.handle.pid, [w["pid"] for w in c.daemon_status()["workers"]]
    assert workers
    stop = run_cli("server", "stop", "--cluster", "clitest", "--teardown", home=tether_home)
    assert stop.returncode == 0 and c.status() == "down", stop.stderr
    assert_local_cluster_removed(tether_home, "clitest", pid, workers)  # no process left, nothing on disk
