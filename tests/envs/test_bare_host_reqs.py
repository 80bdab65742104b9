"""``env(reqs=...)`` on a bare SSH host: no uv on the host's PATH, only the daemon's venv to install with."""

from __future__ import annotations

import pytest

import tether
from tests.envs import fns
from tests.envs.conftest import make_wheel
from tether.compute.bootstrap import SSHTarget

pytestmark = pytest.mark.netns


def test_env_reqs_install_on_a_bare_ssh_host(netns_hosts, pinned_wheel, tether_home, tmp_path):
    hosts = netns_hosts
    t = SSHTarget.from_creds(hosts.addresses[0], hosts.ssh_creds, tmp_path / "known_hosts")
    assert t.run("command -v uv || echo none", step="test").strip() == "none"  # a bare host: no uv
    wheel = make_wheel(tmp_path / "dist", "tetherprobe", "1.0", "VALUE = 42\n")
    c = tether.cluster(name="bare", host=hosts.addresses[:1], ssh_creds=hosts.ssh_creds).up_if_not()
    try:
        remote = tether.function(fns.probe_value).to(c, env=tether.env(name="withreqs", reqs=[str(wheel)]))
        out = remote()
        assert out["value"] == 42
        assert "/state/envs/withreqs/" in out["python"]  # the env's own venv, made on the host
    finally:
        c.teardown()
