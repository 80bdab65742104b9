"""A host's bring-up on real sshd hosts in network namespaces: the wheel is rebuilt only when the sources change
(and the host then runs the new code), every phase is timed and reported, and the ssh backend's shared
connection lives in a private folder and is closed at teardown."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

import tether
from tether.compute import bootstrap
from tether.compute.bootstrap import PHASES, REMOTE_DIR, SSHTarget, bootstrap_hosts, stop_daemon
from tether.compute.sshtarget import control_dir

pytestmark = pytest.mark.netns

ROOT = Path(__file__).resolve().parents[2]


def _copy_tree(dst: Path) -> Path:
    """The package sources and pyproject of this checkout, as a tree a test may edit."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("core", "daemon", "providers"):
        shutil.copytree(ROOT / sub, dst / sub, ignore=ignore)
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, dst / f)
    return dst


def _mark(src: Path, value: str) -> None:
    version = src / "core" / "_version.py"
    lines = [ln for ln in version.read_text().splitlines() if not ln.startswith("MARK = ")]
    version.write_text("\n".join([*lines, f"MARK = {value!r}", ""]))


def _host_mark(t: SSHTarget) -> str:
    py = f"$HOME/{REMOTE_DIR}/venv/bin/python"
    return t.run(f"{py} -c 'from tether import _version; print(_version.MARK)'", step="test").strip()


def test_an_unchanged_tree_builds_no_wheel_and_a_changed_file_reaches_the_host(
    netns_hosts, tether_home, tmp_path, monkeypatch, capfd
):
    src = _copy_tree(tmp_path / "src")
    monkeypatch.delenv("TETHER_WHEEL", raising=False)
    monkeypatch.setenv("TETHER_CACHE_DIR", str(tmp_path / "cache"))  # no wheel of this tree is cached yet
    monkeypatch.setattr(bootstrap, "project_root", lambda: src)
    wheelhouse = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tether" / "wheelhouse"
    if wheelhouse.exists():  # the dependency wheels downloaded before: this test is about the tether wheel
        shutil.copytree(wheelhouse, tmp_path / "cache" / "wheelhouse", symlinks=True)
    t = SSHTarget.from_creds(netns_hosts.addresses[0], netns_hosts.ssh_creds, tmp_path / "known_hosts")
    _mark(src, "one")

    first = bootstrap_hosts([t], port=32321, show_progress=True)[0]
    assert first.phase("build wheel").detail == "built"
    assert [p.name for p in first.phases] == [p for p in PHASES if p != "image"]
    assert all(p.seconds >= 0 for p in first.phases)
    assert first.phase("install").detail.endswith("--no-index")
    shown = capfd.readouterr().err
    assert first.report() in shown.splitlines()  # one line per host, every phase
    for name in ("build wheel", "wheelhouse", "copy", "venv", "install", "daemon start"):
        assert name in first.report()
    assert _host_mark(t) == "one"

    (src / "core" / "_version.py").touch()  # a touched but unchanged file is no change
    again = bootstrap_hosts([t], port=32321, show_progress=False)[0]
    assert again.phase("build wheel").detail == "cached"
    assert again.steps == [] and again.pid == first.pid
    assert again.phase("install").detail.startswith("skipped")

    _mark(src, "two")
    changed = bootstrap_hosts([t], port=32321, show_progress=False)[0]
    assert changed.phase("build wheel").detail == "built"
    assert changed.steps == ["install", "start daemon"] and changed.pid != first.pid
    assert _host_mark(t) == "two"  # the host runs the new code
    stop_daemon(t, changed.remote_dir)


def _master_alive(path: str, host: str) -> bool:
    r = subprocess.run(["ssh", "-o", f"ControlPath={path}", "-O", "check", host], capture_output=True)
    return r.returncode == 0


def test_the_shared_connection_is_private_and_closed_at_teardown(netns_hosts, tether_home):
    hosts = netns_hosts
    c = tether.cluster(name="mux", host=hosts.addresses[1:], ssh_creds=hosts.ssh_creds).up_if_not()
    d = control_dir(tether_home)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.geteuid()
    sockets = [p for p in d.iterdir() if stat.S_ISSOCK(p.stat().st_mode)]
    assert len(sockets) == 1
    assert _master_alive(str(sockets[0]), hosts.addresses[1])
    c.teardown()
    assert not sockets[0].exists()
    assert not _master_alive(str(sockets[0]), hosts.addresses[1])


def test_a_wheelhouse_without_uv_installs_with_pip_from_it_alone(netns_hosts, tether_home, tmp_path, monkeypatch):
    t = SSHTarget.from_creds(netns_hosts.addresses[1], netns_hosts.ssh_creds, tmp_path / "known_hosts")
    probe = json.loads(t.run("python3 -", step="test", stdin=bootstrap._PROBE.format(rdir=REMOTE_DIR)))
    no_uv = tmp_path / "wheelhouse"
    shutil.copytree(bootstrap.build_wheelhouse(probe), no_uv, ignore=shutil.ignore_patterns("uv-*.whl"))
    monkeypatch.setenv("TETHER_WHEELHOUSE", str(no_uv))
    t.run(f"rm -rf $HOME/{REMOTE_DIR}/venv $HOME/{REMOTE_DIR}/installed", step="test")  # a host never installed
    info = bootstrap_hosts([t], port=32322, show_progress=False)[0]
    assert info.phase("wheelhouse").detail == "pinned"
    assert info.phase("venv").detail == "venv --without-pip"
    assert info.phase("install").detail == "pip, --no-index"
    assert json.loads(t.run(f"cat {info.remote_dir}/ready.json", step="test"))["port"] == 32322
    stop_daemon(t, info.remote_dir)
