"""Hands on the box of a sky cluster, offline at SkyPilot's boundary: SkyPilot's status record (credentials, the
head's address) is all that is faked; ``cluster.run``, ``cluster.rsync`` and ``cluster.ssh`` reach a real sshd in
a network namespace through the ssh config tether writes from that record, as they would a cloud VM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.compute.hosts import hosts_or_skip
from tether.api.clusters import new_cluster
from tether.compute.sky import SkyBackend

pytestmark = [pytest.mark.sky, pytest.mark.netns]


@pytest.fixture(scope="module")
def vm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with hosts_or_skip(1, tmp_path_factory.mktemp("skybox")) as hosts:
        yield hosts


def test_run_rsync_and_ssh_on_a_sky_cluster_reach_its_head(vm, tether_home, tmp_path: Path, monkeypatch):
    h = vm.hosts[0]
    handle = SimpleNamespace(cached_external_ips=[h.address], cached_external_ssh_ports=[22], docker_user=None,
                             ssh_user="root")
    record = {"name": "gpu", "status": "UP", "handle": handle,
              "credentials": {"ssh_user": "root", "ssh_private_key_content": vm.key.read_text(),
                              "ssh_proxy_command": None}}
    monkeypatch.setattr(SkyBackend, "_record", lambda self, name, **kw: record)
    c = new_cluster("gpu", instance_type="A10G:1")
    assert c.spec.backend == "sky"
    [r] = c.run("echo on-the-vm $V; echo $HOME", env={"V": "1"}, stream=False)
    assert r.returncode == 0 and r.stdout == f"on-the-vm 1\n{h.home / 'home'}\n" and r.host == "gpu"
    assert c.run("exit 6", stream=False)[0].returncode == 6
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "w.bin").write_bytes(b"weights")
    c.rsync(str(tmp_path / "ckpt"), "models")
    assert (h.home / "home" / "models" / "ckpt" / "w.bin").read_bytes() == b"weights"
    c.rsync("models/ckpt/w.bin", str(tmp_path / "back.bin"), up=False)
    assert (tmp_path / "back.bin").read_bytes() == b"weights"
    assert c.ssh(command="test -d models/ckpt") == 0
