"""The exact setup and run commands tether hands to SkyPilot, run for real on a host laid out like a SkyPilot node:
sshd on a non-22 port reached through the ssh config tether writes from SkyPilot's credentials, ``uv`` in
``~/.local/bin``, no tether installed. The daemon comes up, the health wait and the tunnel work, a broken wheel
fails the setup and keeps the installed one, and a relaunch with new code of the same file name installs it and
replaces the running daemon.

No internet on the host: uv installs tether's dependencies from this machine's uv cache (``UV_OFFLINE``).
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import tether.compute.sky as sky_mod
from tests.compute.hosts import SSHD, NetnsHosts, available
from tether.client.health import probe_health
from tether.compute.bootstrap import SSHTarget, build_wheel
from tether.compute.sky import SkyBackend, daemon_command, remote_wheel, setup_command
from tether.compute.tunnel import close_tunnel
from tether.errors import ClusterUnavailable
from tether.specs import ClusterSpec

pytestmark = [pytest.mark.sky, pytest.mark.netns]

NODE_PORT = 2222


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = available()
    if reason:
        pytest.skip(f"netns hosts unavailable: {reason}")
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip("uv not installed")
    if "pyenv" in uv:  # a shim: link the real binary, as SkyPilot installs one
        uv = subprocess.run(["pyenv", "which", "uv"], capture_output=True, text=True, check=True).stdout.strip()
    with NetnsHosts(1, tmp_path_factory.mktemp("skynode")) as hosts:
        h = hosts.hosts[0]
        d = h.home / "sshd"
        cfg = (d / "sshd_config").read_text().replace(f"{h.address}:22", f"{h.address}:{NODE_PORT}")
        (d / "sshd_node_config").write_text(cfg.replace("sshd.pid", "sshd_node.pid"))
        sshd = subprocess.Popen(["ip", "netns", "exec", h.namespace, SSHD, "-D", "-e", "-f", str(d / "sshd_node_config")],
                                stdout=(d / "sshd_node.log").open("w"), stderr=subprocess.STDOUT)  # fmt: skip
        try:
            NetnsHosts._wait_port(h.address, NODE_PORT)
            home = h.home / "home"
            (home / ".local" / "bin").mkdir(parents=True, exist_ok=True)
            (home / ".local" / "bin" / "uv").symlink_to(uv)
            _seed_dependencies(home / ".tether" / "venv", tmp_path_factory.mktemp("lock") / "pylock.toml")
            yield SimpleNamespace(hosts=hosts, host=h, home=home)
        finally:
            sshd.kill()
            sshd.wait()


def _raw(node: Any) -> SSHTarget:
    return SSHTarget(host=node.host.address, user="root", key=str(node.hosts.key), port=NODE_PORT,
                     known_hosts="/dev/null", connect_timeout=10)  # fmt: skip


def _uv_cache() -> str:
    """This machine's uv cache (HOME points elsewhere in the sky tests: the user's real home holds it)."""
    real_home = pwd.getpwuid(os.getuid()).pw_dir
    env = {**os.environ, "HOME": real_home}
    return subprocess.run(["uv", "cache", "dir"], capture_output=True, text=True, check=True, env=env).stdout.strip()


def _seed_dependencies(venv: Path, lock: Path) -> None:
    """The node has no internet, so tether's dependencies (never tether) go into its venv from this machine's uv
    cache, by the lock file's URLs; the setup keeps a venv of the right Python and installs tether into it."""
    env = {**os.environ, "HOME": pwd.getpwuid(os.getuid()).pw_dir, "UV_OFFLINE": "1"}
    root = Path(__file__).resolve().parents[3]
    steps = [["uv", "export", "--frozen", "--format", "pylock.toml", "--no-dev", "--no-emit-project", "-q", "-o", str(lock)],
             ["uv", "venv", "-q", "--python", f"{sys.version_info.major}.{sys.version_info.minor}", str(venv)],
             ["uv", "pip", "install", "-q", "--python", str(venv / "bin" / "python"), "-r", str(lock)]]  # fmt: skip
    for argv in steps:
        r = subprocess.run(argv, cwd=root, env=env, capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.skip(f"cannot seed the node's dependencies offline: {r.stderr.strip()[-500:]}")


def _ship_and_setup(node: Any, wheel: Path) -> str:
    """What SkyPilot does for a launch: the file mount, then the setup under bash."""
    t = _raw(node)
    dest = remote_wheel(wheel).replace("~", str(node.home), 1)
    t.rsync([wheel], f"{Path(dest).parent}/", step="file mounts")
    env = f"export UV_OFFLINE=1 UV_CACHE_DIR={shlex.quote(_uv_cache())} UV_PYTHON_DOWNLOADS=never; "
    return t.run(env + "bash -c " + shlex.quote(setup_command(wheel)), step="setup", timeout=600)


def _run_job(node: Any, run: str, token: str, log: str) -> None:
    """What SkyPilot does with the task's run: a job under bash, the secret in its environment."""
    _raw(node).run(f"cd ~ || exit 1; TETHER_TOKEN={token} setsid nohup bash -c {shlex.quote(run)} > {log} 2>&1 < /dev/null &",
                   step="run", timeout=60)  # fmt: skip


def _with_marker(wheel: Path, out: Path, text: str) -> Path:
    """The same wheel file name with new content (a changed tree)."""
    out.mkdir(parents=True, exist_ok=True)
    new = out / wheel.name
    shutil.copy(wheel, new)
    with zipfile.ZipFile(new, "a") as z:
        z.writestr("tether/_relaunch_marker.py", text)
    return new


@pytest.mark.timeout(400)
def test_setup_and_run_bring_the_daemon_up_and_a_relaunch_ships_new_code(node, tether_home, tmp_path,
                                                                         monkeypatch):
    monkeypatch.delenv("TETHER_WHEEL", raising=False)
    monkeypatch.setenv("TETHER_SKY_HEALTH_TIMEOUT", "90")
    wheel = _with_marker(build_wheel(), tmp_path / "v1", "V = 1\n")
    _ship_and_setup(node, wheel)
    t = _raw(node)
    py = f"{node.home}/.tether/venv/bin/python"
    marker = f"{py} -c 'import sys, tether._relaunch_marker as m; print(tuple(sys.version_info[:2]), m.V)'"
    assert t.run(marker, step="check").strip() == f"{tuple(sys.version_info[:2])} 1"

    spec = ClusterSpec(name="node", instance_type="CPU:2", server_port=32411, autostop_mins=30)
    token = "node-token"
    run = daemon_command(spec, token=True)
    _run_job(node, run, token, "job1.log")

    backend = SkyBackend()
    handle = SimpleNamespace(cached_external_ips=[node.host.address], cached_external_ssh_ports=[NODE_PORT],
                             docker_user=None, ssh_user="root")  # fmt: skip
    record = {"name": "node", "status": "UP", "handle": handle,
              "credentials": {"ssh_user": "root", "ssh_private_key_content": node.hosts.key.read_text(),
                              "ssh_proxy_command": None}}  # fmt: skip
    monkeypatch.setattr(backend, "_record", lambda name, **kw: record)
    st: dict[str, Any] = {"backend": "sky", "token": token}
    try:
        cluster = backend._connect(spec, st, rerun=False)  # the daemon is still importing: the wait retries
        assert probe_health(cluster.endpoint, token=token) is not None
        assert "-p" not in backend.ssh_target(spec).ssh_argv("true")  # the port comes from the written config

        # a broken wheel fails the setup and leaves the installed one alone
        broken = tmp_path / "broken" / wheel.name
        broken.parent.mkdir()
        broken.write_bytes(b"not a zip")
        with monkeypatch.context() as m:
            m.setattr(sky_mod, "wheel_fingerprint", lambda w: "broken0000000000")
            with pytest.raises(ClusterUnavailable):
                _ship_and_setup(node, broken)
        assert t.run(marker, step="check").strip().endswith(" 1")
        old_pid = t.run("cat ~/.tether/daemon/daemon.pid", step="pid").strip()

        # a relaunch: new content under the same file name is installed, and its job replaces the daemon
        _ship_and_setup(node, _with_marker(build_wheel(), tmp_path / "v2", "V = 2\n"))
        assert t.run(marker, step="check").strip().endswith(" 2")
        _run_job(node, run, token, "job2.log")
        close_tunnel(st.get("tunnel_pid"))
        st.update(tunnel_pid=None, local_port=None)
        time.sleep(1.5)  # the new job stops the old daemon first
        cluster = backend._connect(spec, st, rerun=False)
        assert probe_health(cluster.endpoint, token=token) is not None
        new_pid = t.run("cat ~/.tether/daemon/daemon.pid", step="pid").strip()
        assert new_pid != old_pid
        assert t.run(f"kill -0 {old_pid} 2>/dev/null && echo alive || echo gone", step="pid").strip() == "gone"
    finally:
        close_tunnel(st.get("tunnel_pid"))
        t.run("p=$(cat ~/.tether/daemon/daemon.pid 2>/dev/null) && kill $p; true", step="cleanup")
