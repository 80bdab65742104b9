"""The ssh backend end to end on real sshd hosts in network namespaces: bootstrap from the local wheel,
calls through the tunnel via the public API, link failures and recovery, teardown."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import tether
from tests.compute import remote_fns
from tests.compute.hosts import pinned_tether_wheel
from tether.compute.bootstrap import REMOTE_DIR, SSHTarget, bootstrap_hosts
from tether.errors import AuthError, ClusterUnavailable

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module", autouse=True)
def pinned_wheel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Build the tether wheel once for the module, so edits to the tree during the run do not reinstall."""
    with pinned_tether_wheel(tmp_path_factory.mktemp("wheel")) as wheel:
        yield wheel


def _target(hosts, i: int, tmp_path) -> SSHTarget:
    return SSHTarget.from_creds(hosts.addresses[i], hosts.ssh_creds, tmp_path / "known_hosts")


def _supervisor_pid(hosts, i: int, tmp_path) -> int:
    return int(_target(hosts, i, tmp_path).run(f"cat $HOME/{REMOTE_DIR}/supervisor.pid", step="test"))


def _daemons_in(hosts, i: int) -> list[str]:
    pids = subprocess.run(
        ["ip", "netns", "pids", hosts.hosts[i].namespace], capture_output=True, text=True
    ).stdout
    cmds = []
    for pid in pids.split():
        with contextlib.suppress(OSError):
            cmds.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode())
    return [c for c in cmds if "tether.daemon" in c or "supervise.sh" in c]


def test_two_node_cluster_bootstraps_serves_calls_and_tears_down(netns_hosts, tether_home, tmp_path):
    hosts = netns_hosts
    t0 = time.monotonic()
    c = tether.cluster(name="lab", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
    first = time.monotonic() - t0
    assert c.handle.hosts == hosts.addresses
    for i in range(2):  # every node runs its own supervised daemon
        ready = json.loads(_target(hosts, i, tmp_path).run(f"cat $HOME/{REMOTE_DIR}/ready.json", step="test"))
        assert ready["port"] == 32300 and ready["host"] == "127.0.0.1"
    remote = tether.function(remote_fns.where).to(c)
    out = remote(7)
    assert out["square"] == 49
    assert out["home"] == str(hosts.hosts[0].home / "home")  # ran on the head host, not here

    pids = [_supervisor_pid(hosts, i, tmp_path) for i in range(2)]
    t0 = time.monotonic()
    again = tether.cluster(name="lab", host=hosts.addresses, ssh_creds=hosts.ssh_creds).up_if_not()
    second = time.monotonic() - t0
    assert again.endpoint == c.endpoint
    assert [_supervisor_pid(hosts, i, tmp_path) for i in range(2)] == pids  # nothing restarted
    assert tether.function(remote_fns.where).to(again)(3)["square"] == 9
    print(f"\nssh cluster: first up_if_not {first:.2f}s, second {second:.3f}s")

    c.teardown()
    assert c.status() == "down"
    assert _daemons_in(hosts, 0) == [] and _daemons_in(hosts, 1) == []


def test_link_down_is_a_clear_error_and_up_if_not_recovers(netns_hosts, tether_home):
    hosts = netns_hosts
    creds = {**hosts.ssh_creds, "connect_timeout": 2}  # the user's own, shorter timeout: the test waits less
    c = tether.cluster(name="flaky", host=hosts.addresses[:1], ssh_creds=creds).up_if_not()
    remote = tether.function(remote_fns.where).to(c)
    assert remote(2)["square"] == 4
    hosts.link_down(0)
    try:
        with pytest.raises(ClusterUnavailable):
            remote(3)
        with pytest.raises(ClusterUnavailable) as info:
            c.up_if_not()
        assert hosts.addresses[0] in str(info.value)
    finally:
        hosts.link_up(0)
    c.up_if_not()
    assert remote(4)["square"] == 16
    c.teardown()


def test_bootstrap_twice_does_nothing_the_second_time(netns_hosts, tether_home, tmp_path):
    targets = [_target(netns_hosts, 1, tmp_path)]
    first = bootstrap_hosts(targets, port=32311, show_progress=False)
    second = bootstrap_hosts(targets, port=32311, show_progress=False)
    assert "start daemon" in first[0].steps
    assert second[0].steps == [] and second[0].pid == first[0].pid
    from tether.compute.bootstrap import stop_daemon

    stop_daemon(targets[0], first[0].remote_dir)
    assert _daemons_in(netns_hosts, 1) == []


def test_failures_name_the_step_the_host_and_the_remote_stderr(netns_hosts, tether_home, tmp_path):
    t = _target(netns_hosts, 0, tmp_path)
    with pytest.raises(ClusterUnavailable) as info:
        bootstrap_hosts([t], python="python-missing", show_progress=False)
    err = info.value
    assert err.details["step"] == "connect" and err.details["host"] == t.host
    assert "python-missing" in err.details["stderr"]

    wrong_key = tmp_path / "wrong_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    bad = SSHTarget.from_creds(t.host, {"user": "root", "key": str(wrong_key)}, tmp_path / "known_hosts")
    with pytest.raises(AuthError) as auth:
        bootstrap_hosts([bad], show_progress=False)
    assert t.host in str(auth.value) and auth.value.details["step"] == "connect"


def test_stop_then_up_if_not_restarts_the_daemon_with_its_services(netns_hosts, tether_home, tmp_path):
    hosts = netns_hosts
    c = tether.cluster(name="pausable", host=hosts.addresses[1:], ssh_creds=hosts.ssh_creds).up_if_not()
    remote = tether.function(remote_fns.where).to(c)
    first_pid = remote(1)["pid"]
    c.stop()
    assert c.status() == "stopped"
    assert _daemons_in(hosts, 1) == []
    c.up_if_not()
    assert c.status() == "up"
    out = remote(6)
    assert out["square"] == 36 and out["pid"] != first_pid  # a new worker behind a restarted daemon
    c.teardown()


def test_an_edit_in_the_same_second_with_the_same_size_is_synced(netns_hosts, tether_home, tmp_path):
    """Code sync must not run old code: rsync's default quick check (size + whole-second mtime) skips a file edited
    within the second of the last sync when its size did not change."""
    t = _target(netns_hosts, 1, tmp_path)
    root = tmp_path / "proj"
    root.mkdir()
    mod = root / "model.py"
    remote = t.run("echo $HOME", step="test").strip() + "/tether-sync-test/proj"
    second = int(time.time()) - 10
    for value, frac in ((1, 100_000_000), (2, 600_000_000)):  # same size, same whole second, 0.5 s apart
        mod.write_text(f"def answer():\n    return {value}\n")
        os.utime(mod, ns=(second * 10**9 + frac, second * 10**9 + frac))
        t.rsync([f"{root}/"], f"{remote}/", step="sync code", extra=["--delete"])
        assert f"return {value}" in t.run(f"cat {remote}/model.py", step="test")
